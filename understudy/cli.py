"""The `understudy` command: parse, call a function in proxy/, training/, routing/ or jac_examples/, print.

Errors a user can fix are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from jac_examples.cli import levels_app, teacher
from understudy.proxy_client import CommandError, StoreAccess
from understudy.settings import load_settings

app = typer.Typer(help="Understudy: an OpenAI-compatible proxy that learns to replace a large model, one call site at a time.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
sites_app = typer.Typer(help="Call sites seen by the proxy.", invoke_without_command=True)
app.add_typer(sites_app, name="sites")
app.add_typer(levels_app, name="levels")
app.command("teacher", help="Run the offline teacher: an OpenAI-compatible server answering the RPG call sites.")(teacher)

console = Console()
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", envvar="UNDERSTUDY_DATA_DIR",
                                                 help="Data directory (default: ./understudy-data).")]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(envvar="UNDERSTUDY_HOST", help="Interface to listen on (default: 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(envvar="UNDERSTUDY_PORT", help="Port (default: 8000); 0 picks a free one.")] = None,
    upstream_url: Annotated[Optional[str], typer.Option(envvar="UNDERSTUDY_UPSTREAM_URL",
                                                        help="Upstream base URL (default: https://api.openai.com/v1).")] = None,
    upstream_key: Annotated[Optional[str], typer.Option(envvar="UNDERSTUDY_UPSTREAM_KEY",
                                                        help="Upstream API key (default: $OPENAI_API_KEY).")] = None,
    data_dir: DataDir = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(envvar="UNDERSTUDY_MAX_BODY_BYTES",
                                                          help="Largest request body accepted (default: 8 MiB).")] = None,
) -> None:
    """Run the proxy: POST /v1/chat/completions, GET /v1/models, /healthz, /metrics, /schema."""
    from proxy.server import serve as run_server

    settings = load_settings(host=host, port=port, upstream_url=upstream_url, upstream_key=upstream_key,
                             data_dir=data_dir, max_body_bytes=max_body_bytes)
    key_note = "set" if settings.resolved_upstream_key() else "not set (clients' own keys are forwarded)"
    typer.echo(f"understudy: upstream {settings.upstream_url} (key {key_note}); data in {settings.data_dir}", err=True)
    try:
        run_server(settings)
    except OSError as exc:
        fail(str(exc))


@app.command()
def up(
    host: Annotated[Optional[str], typer.Option(envvar="UNDERSTUDY_HOST", help="Interface to listen on (default: 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(envvar="UNDERSTUDY_PORT", help="Port (default: 8000).")] = None,
    data_dir: DataDir = None,
    teacher_seed: Annotated[int, typer.Option(help="Offline teacher's seed.")] = 0,
    teacher_flaw_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Offline teacher's flawed share.")] = 0.1,
) -> None:
    """The main job with embedded defaults: the proxy over DuckDB in the data dir, and the offline
    teacher as its upstream when no upstream key is set (UNDERSTUDY_UPSTREAM_KEY / OPENAI_API_KEY)."""
    from proxy.server import serve as run_server
    from understudy.processes import start_teacher

    settings = load_settings(host=host, port=port, data_dir=data_dir)
    settings.ensure_data_dir()
    teacher = None
    if settings.resolved_upstream_key() is None and "UNDERSTUDY_UPSTREAM_URL" not in os.environ:
        teacher = start_teacher(seed=teacher_seed, flaw_share=teacher_flaw_share)
        settings = settings.model_copy(update={"upstream_url": teacher.url})
        typer.echo(f"understudy: no upstream key set; the offline teacher answers at {teacher.url}", err=True)
    typer.echo(f"understudy: proxy on http://{settings.host}:{settings.port}/v1 -> {settings.upstream_url}; "
               f"data in {settings.data_dir}", err=True)
    try:
        run_server(settings)
    except OSError as exc:
        fail(str(exc))
    finally:
        if teacher is not None:
            teacher.stop()


@sites_app.callback()
def sites(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List call sites: id, name, calls, parse-valid rate, state, served-by."""
    ctx.obj = load_settings(data_dir=data_dir)
    if ctx.invoked_subcommand is not None:
        return
    rows = _run(lambda: StoreAccess(ctx.obj).sites())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "name", "returns", "calls", "parse-valid", "state", "served-by")
    for row in rows:
        rate = "-" if row["valid_rate"] is None else f"{row['valid_rate']:.0%}"
        table.add_row(row["id"], row["name"], row["returns"], str(row["calls"]), rate, row["state"], row["served_by"])
    console.print(table)


@sites_app.command("rename")
def sites_rename(ctx: typer.Context, site: str, name: str, data_dir: DataDir = None) -> None:
    """Give SITE (id, name or id prefix) a new readable NAME."""
    settings = load_settings(data_dir=data_dir) if data_dir else ctx.obj
    result = _run(lambda: StoreAccess(settings).rename(site, name))
    typer.echo(f"{result['id']} is now {result['name']!r}")


@app.command()
def calls(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    limit: Annotated[int, typer.Option(help="How many recent calls.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print full records as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Recent calls of one site."""
    rows = _run(lambda: StoreAccess(load_settings(data_dir=data_dir)).calls(site, limit))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("time", "turn", "served-by", "status", "ms", "tokens in/out", "valid", "answer")
    for row in rows:
        answer = _answer_preview(row.get("response"))
        valid = "-" if row["valid"] is None else ("yes" if row["valid"] else "no")
        tokens = f"{row['prompt_tokens'] or '-'}/{row['completion_tokens'] or '-'}"
        table.add_row(row["ts"][:19], row["turn"], row["served_by"], str(row["status"]), f"{row['latency_ms']:.0f}",
                      tokens, valid, answer)
    console.print(table)


@app.command()
def corpus(
    runs: Annotated[int, typer.Option(help="How many times to run the Jac level generator.")] = 20,
    levels: Annotated[int, typer.Option(help="Levels played per run (each level calls every RPG site).")] = 5,
    parallel: Annotated[int, typer.Option(help="Runs at a time.")] = 2,
    seed: Annotated[int, typer.Option(help="Offline teacher's seed.")] = 0,
    flaw_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Offline teacher's share of flawed answers.")] = 0.1,
    data_dir: DataDir = None,
) -> None:
    """Fill the store: run the Jac RPG generator through the proxy (offline teacher unless an upstream key is set)."""
    from jac_examples.corpus import generate_corpus

    if runs < 1 or levels < 1 or parallel < 1:
        fail("--runs, --levels and --parallel must be at least 1")
    try:
        result = generate_corpus(load_settings(data_dir=data_dir), runs=runs, levels=levels, parallel=parallel,
                                 seed=seed, flaw_share=flaw_share)
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result.to_dict(), indent=2))
    if result.succeeded < result.runs:
        raise typer.Exit(1)


@app.command()
def export(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    jsonl: Annotated[Optional[Path], typer.Option(help="Write OpenAI fine-tuning chat JSONL here.")] = None,
    parquet: Annotated[Optional[Path], typer.Option(help="Write Parquet here.")] = None,
    filtered: Annotated[bool, typer.Option("--filtered/--unfiltered",
                                           help="Keep only parse-valid, validator-passing answers.")] = True,
    teacher: Annotated[Optional[str], typer.Option(help="Only answers from this upstream model.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Export one site's recorded calls as a training dataset."""
    if jsonl is None and parquet is None:
        fail("give --jsonl FILE and/or --parquet FILE")
    result = _run(lambda: StoreAccess(load_settings(data_dir=data_dir)).export(
        site, filtered=filtered, jsonl=jsonl and str(jsonl.resolve()), parquet=parquet and str(parquet.resolve()),
        teacher_model=teacher))
    typer.echo(json.dumps(result, indent=2))


def _answer_preview(response_json: str | None, width: int = 60) -> str:
    try:
        message = json.loads(response_json)["choices"][0]["message"]
        text = message.get("content") or json.dumps(message.get("tool_calls"))
    except (TypeError, ValueError, KeyError, IndexError):
        text = response_json or ""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _run(action):
    try:
        return action()
    except CommandError as exc:
        fail(str(exc))


def main() -> None:  # pragma: no cover - console entry point convenience
    app(prog_name="understudy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
