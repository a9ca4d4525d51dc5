"""`understudy review ...` and `understudy eval`: parse, call reporting.reviews / routing.evaluation
(operations of the table, `understudy.operations.reviews`, run through the running proxy or on
the store file by `understudy.cli.store_access.StoreAccess`), print.

Kept out of cli.py so the main command file stays a list of commands; registered there in two
lines. Subsystems load inside the commands only (tests/test_import_graph.py checks the CLI's
import costs nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from understudy.cli.errors import fail as _fail
from understudy.cli.errors import or_fail as _run
from understudy.cli.setting_options import setting_option
from understudy.cli.store_access import StoreAccess
from understudy.settings import load_settings

review_app = typer.Typer(help="Blind human review of local answers against the upstream's.", no_args_is_help=True)
console = Console()
DataDir = Annotated[Path | None, setting_option("data_dir")]
Site = Annotated[str, typer.Argument(help="Site id, name or id prefix.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _access(data_dir: Path | None) -> StoreAccess:
    return StoreAccess(load_settings(data_dir=data_dir))


def _read_json_or_toml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{what} {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as exc:
        _fail(f"{what} {path}: not {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})")


@review_app.command("invite")
def invite(
    name: Annotated[str, typer.Argument(help="The reviewer's name (stored with every judgment).")],
    data_dir: DataDir = None,
) -> None:
    """Issue a review token for NAME and print the review page's URL (a new invite replaces the old token)."""
    result = _run(lambda: _access(data_dir).run("review_invite", name=name))
    typer.echo(result["url"])
    if result.get("note"):
        typer.echo(result["note"], err=True)


@review_app.command("plan")
def plan(
    site: Site,
    pairs: Annotated[int, typer.Option("--pairs", help="Pairs to draw for review.")] = 30,
    by: Annotated[
        str, typer.Option("--by", help="Stratify by 'version' or by a call argument's name (e.g. difficulty).")
    ] = "version",
    shared: Annotated[
        int | None,
        typer.Option(help="Pairs every reviewer judges (inter-rater agreement); default 20 % (at least 10)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for which pairs are drawn (the blind order is always random).")
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Draw a stratified sample of shadow pairs to review, and say how many judgments a ±0.25 interval needs."""
    if pairs < 1:
        _fail("--pairs must be at least 1")
    result = _run(lambda: _access(data_dir).run("review_plan", site=site, pairs=pairs, by=by, shared=shared, seed=seed))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"plan {result['plan']} for {result['site_name']}: {result['drawn']} pairs drawn "
        f"({result['shared']} shared by every reviewer), stratified by {result['by']}"
    )
    table = Table(
        Column("stratum", overflow="fold"), Column("available", justify="right"), Column("drawn", justify="right")
    )
    for s in result["strata"]:
        table.add_row(s["stratum"], str(s["available"]), str(s["drawn"]))
    console.print(table)
    sizes = Table(
        Column("criterion"),
        Column("judgments for ±0.25", justify="right"),
        Column("sd", overflow="fold"),
        Column("worst case", justify="right"),
    )
    for name, s in result["sample_size"].items():
        sizes.add_row(name, str(s["judgments"]), f"{s['sd']:.2f} ({s['sd_source']})", str(s["worst_case"]))
    console.print(sizes)
    typer.echo(
        "Invite reviewers with `understudy review invite NAME`; two or more on the shared pairs give "
        "Krippendorff's alpha."
    )


@review_app.command("rubric")
def rubric(
    site: Site,
    file: Annotated[Path, typer.Argument(help='JSON or TOML: {"criteria": [{"name", "label", "description"}]}.')],
    data_dir: DataDir = None,
) -> None:
    """Replace SITE's rubric (criteria scored 1-5) with the one in FILE."""
    data = _read_json_or_toml(file, "rubric")
    result = _run(lambda: _access(data_dir).run("review_set_rubric", site=site, rubric=data))
    typer.echo("rubric: " + ", ".join(c["name"] for c in result["criteria"]))


@review_app.command("results")
def results(site: Site, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Per criterion: upstream and local means with 95 % intervals, the paired difference, preferences, agreement."""
    result = _run(lambda: _access(data_dir).run("review_results", site=site))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for line in results_lines(result):
        console.print(line, markup=False, highlight=False)


def results_lines(result: dict[str, Any]) -> list[Any]:
    from understudy.reporting.review_statistics import format_alpha, format_interval, format_share

    out: list[Any] = [
        f"{result['site_name']}: {result['judgments']} judgments of {result['pairs']} pairs by "
        f"{len(result['reviewers'])} reviewer(s) ({', '.join(result['reviewers']) or 'none yet'})"
    ]
    table = Table(
        Column("criterion", overflow="fold"),
        Column("upstream", overflow="fold"),
        Column("local", overflow="fold"),
        Column("local − upstream", overflow="fold"),
        Column("alpha", overflow="fold"),
    )
    for name, c in result["criteria"].items():
        table.add_row(
            name,
            format_interval(c["upstream"]),
            format_interval(c["local"]),
            format_interval(c["difference"], signed=True),
            format_alpha(c["alpha"]),
        )
    out.append(table)
    p = result["preference"]
    out.append(
        "preference: "
        + ", ".join(f"{k} {format_share(p[k])}" for k in ("local", "upstream", "tie"))
        + f"; agreement {format_alpha(p['alpha'])}"
    )
    return out


@review_app.command("export")
def export(
    site: Site,
    file: Annotated[Path, typer.Argument(help="Write the review set here (JSON).")],
    data_dir: DataDir = None,
) -> None:
    """Write SITE's review pairs, blind, to FILE for a reviewer who works offline."""
    result = _run(lambda: _access(data_dir).run("review_export", site=site))
    try:
        file.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {file}: {exc.strerror or exc}")
    typer.echo(f"wrote {len(result['items'])} pairs to {file}")


@review_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A review set written by `review export`, judgments filled in.")],
    reviewer: Annotated[
        str | None, typer.Option(help="Whose judgments these are (else each judgment's `reviewer`).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Store the judgments of an offline review set (all of them, or none if any is incomplete)."""
    data = _read_json_or_toml(file, "review set")
    result = _run(lambda: _access(data_dir).run("review_import", set=data, reviewer=reviewer))
    typer.echo(f"imported {result['imported']} judgments ({', '.join(result['reviewers']) or 'none'})")


def eval_command(
    site: Site,
    versions: Annotated[
        str | None, typer.Option("--versions", help="Versions to compare, e.g. 1,2 or v1,v2 (default: all usable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N held-out examples.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Token cap per local answer.")] = 512,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Held-out comparison: recorded upstream answers vs the bare base vs each version (validity, checks,
    agreement, latency, cost per call); stored for the HTML report."""
    from rich.progress import Progress

    from understudy.routing.evaluation import run_eval

    wanted = None
    if versions:
        try:
            wanted = [int(v.strip().lower().removeprefix("v")) for v in versions.split(",") if v.strip()]
        except ValueError:
            _fail(f"--versions must be like 1,2 or v1,v2 (got {versions!r})")
    settings = load_settings(data_dir=data_dir)
    access = StoreAccess(settings)
    inputs = _run(lambda: access.run("eval_inputs", site=site, versions=wanted, limit=limit))
    bases = [v["base_gguf"] for v in inputs["versions"] if v.get("base_gguf")]
    base_gguf = bases[-1] if bases else settings.resolved_base_gguf()
    total = len(inputs["examples"]) * (1 + len(inputs["versions"]))
    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as progress:
        task = progress.add_task(f"eval {inputs['site_name']}", total=total)
        result = run_eval(
            inputs,
            base_gguf=base_gguf,
            n_threads=settings.local_threads,
            max_tokens=max_tokens,
            on_answer=lambda label: progress.update(task, advance=1, description=f"eval {label}"),
        )
    _run(lambda: access.run("eval_store", result=result))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{result['site_name']}: {result['heldout']} held-out requests from {result['snapshot']}")
    console.print(eval_table(result))


def eval_table(result: dict[str, Any]) -> Table:
    def pct(x):
        return "—" if x is None else f"{x:.0%}"

    table = Table(
        Column("answers", no_wrap=True),
        Column("parse-valid", justify="right"),
        Column("validator", justify="right"),
        Column("checks", overflow="fold"),
        Column("agreement", justify="right"),
        Column("p50 ms", justify="right"),
        Column("$/call", justify="right"),
    )
    for row in result["rows"]:
        checks = ", ".join(f"{k} {pct(v)}" for k, v in row["checks"].items()) or "—"
        agreement = "—" if row["agreement"] is None else f"{row['agreement']:.2f} (n={row['agreement_n']})"
        p50 = "—" if row["latency_p50_ms"] is None else f"{row['latency_p50_ms']:.0f}"
        cost = "—" if row["cost_per_call_usd"] is None else f"{row['cost_per_call_usd']:.5f}"
        table.add_row(
            row["row"], pct(row["parse_valid_rate"]), pct(row["validator_pass_rate"]), checks, agreement, p50, cost
        )
    return table
