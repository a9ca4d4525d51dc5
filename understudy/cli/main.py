"""The `understudy` command: parse, call a function in proxy/, training/, routing/ or jac_examples/, print.

Errors a user can fix are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from understudy.cli.errors import fail
from understudy.cli.errors import or_fail as _run
from understudy.cli.review import eval_command, review_app
from understudy.cli.setting_options import setting_option
from understudy.cli.store_access import StoreAccess, running_proxy
from understudy.jac_examples.cli import levels_app, teacher
from understudy.settings import load_settings

app = typer.Typer(
    help="Understudy: an OpenAI-compatible proxy that learns to replace a large model, one call site at a time.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sites_app = typer.Typer(help="Call sites seen by the proxy.", invoke_without_command=True)
app.add_typer(sites_app, name="sites")
keys_app = typer.Typer(help="Client keys: who may call the proxy's /v1/* (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(levels_app, name="levels")
app.command("teacher", help="Run the offline teacher: an OpenAI-compatible server answering the RPG call sites.")(
    teacher
)
app.add_typer(review_app, name="review")
app.command("eval")(eval_command)

console = Console()


def _table(*headers: str) -> Table:
    """A table whose cells wrap, long words folded, at any terminal width: never cut off."""
    return Table(*(Column(header, overflow="fold") for header in headers))


# Options that are settings: declared once, in understudy.settings (name, variable, help, default).
ConfigFile = Annotated[Path | None, setting_option("config")]
DataDir = Annotated[Path | None, setting_option("data_dir")]
HostOption = Annotated[str | None, setting_option("host")]
PortOption = Annotated[int | None, setting_option("port")]
UpstreamUrl = Annotated[str | None, setting_option("upstream_url")]
UpstreamKey = Annotated[str | None, setting_option("upstream_key")]
MaxBodyBytes = Annotated[int | None, setting_option("max_body_bytes")]
UpstreamFree = Annotated[bool | None, setting_option("upstream_free", "--upstream-free")]
ClientKeysFile = Annotated[Path | None, setting_option("client_keys_file")]
StoreUrl = Annotated[str | None, setting_option("store")]
QueueUrl = Annotated[str | None, setting_option("redis_url", "--queue", envvar="UNDERSTUDY_QUEUE")]
SharedDir = Annotated[Path | None, setting_option("shared_dir")]
ProxyUrl = Annotated[str | None, setting_option("proxy_url")]
Workers = Annotated[int, setting_option("workers", min=1)]
PublicReport = Annotated[bool | None, setting_option("public_report", "--public-report")]


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    upstream_url: UpstreamUrl = None,
    upstream_key: UpstreamKey = None,
    data_dir: DataDir = None,
    max_body_bytes: MaxBodyBytes = None,
    config: ConfigFile = None,
    upstream_free: UpstreamFree = None,
    client_keys_file: ClientKeysFile = None,
    public_report: PublicReport = None,
    store: StoreUrl = None,
    shared_dir: SharedDir = None,
    workers: Workers = 1,
) -> None:
    """Run the proxy: POST /v1/chat/completions, GET /v1/models, /healthz, /metrics, /schema, /report.
    It prints the address it listens on once the port is bound. On any address but loopback it
    needs client keys (`understudy keys add NAME`)."""
    from understudy.proxy.server import serve as run_server
    from understudy.proxy.upstreams import UpstreamConfigError

    settings = load_settings(
        host=host,
        port=port,
        upstream_url=upstream_url,
        upstream_key=upstream_key,
        data_dir=data_dir,
        max_body_bytes=max_body_bytes,
        config=config,
        upstream_free=upstream_free,
        client_keys_file=client_keys_file,
        public_report=public_report,
        store=store,
        shared_dir=shared_dir,
    )
    _refuse_busy_data_dir(settings)
    _check_workers(settings, workers)
    _check_access(settings)
    key_note = "set" if settings.resolved_upstream_key() else "not set (clients' own keys are forwarded)"
    typer.echo(f"understudy: upstream {settings.upstream_url} (key {key_note}); data in {settings.data_dir}", err=True)
    if settings.shared_store:
        from understudy.store_postgres import redacted  # psycopg: only for a shared store

        typer.echo(
            f"understudy: store {redacted(settings.store or '')} (shared; other processes' changes within "
            f"{settings.sync_interval_s:g} s)",
            err=True,
        )
    try:
        run_server(settings, workers=workers)
    except (OSError, UpstreamConfigError, ValueError) as exc:
        fail(str(exc))


def _check_access(settings) -> None:
    """Before anything starts: a non-loopback bind without client keys (or an unusable keys file)
    is one line and exit 1; otherwise say whether clients need keys."""
    from understudy.client_keys import ClientKeysError, access_for

    try:
        keys = access_for(settings)
    except ClientKeysError as exc:
        fail(str(exc))
    os.umask(0o077)  # the data dir's files (store, snapshots, adapters, logs) are the owner's only
    if keys is None:
        typer.echo("understudy: no client keys: /v1/* is open to this machine (loopback only)", err=True)
    else:
        typer.echo(f"understudy: {len(keys)} client key(s) from {keys.path}; /v1/* needs one", err=True)


def _check_workers(settings, workers: int) -> None:
    """More than one proxy process needs a store more than one process can write."""
    if workers > 1 and not settings.shared_store:
        fail(
            f"--workers {workers} needs a shared store (--store postgresql://...): the DuckDB file admits one "
            "writing process"
        )
    if settings.shared_store:
        from understudy.store import Store

        try:  # reachable, and migrated once here before any proxy process starts
            Store.open(settings).close()
        except Exception as exc:  # ConnectionError (no server), a server that refuses the login or the schema
            fail(str(exc).strip().splitlines()[0])


def _refuse_busy_data_dir(settings) -> None:
    """One line and exit 1 when another proxy, or any process, holds the data directory's store."""
    from understudy.store import Store

    running = running_proxy(settings)
    if running is not None:
        fail(
            f"a proxy (pid {running['pid']}) already serves {settings.data_dir} at {running['url']}; "
            f"stop it or use another --data-dir"
        )
    if not settings.shared_store and settings.db_path.exists():  # PostgreSQL takes many writers
        try:
            Store(settings.db_path, read_only=True).close()
        except OSError as exc:  # store.StoreBusy
            fail(str(exc))


@app.command()
def upstreams(
    check: Annotated[
        bool, typer.Option("--check", help="Send a one-token request to each route; report latency or error.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    upstream_url: UpstreamUrl = None,
    upstream_key: UpstreamKey = None,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """The upstream routes and whether each has its key set: the running proxy's own (asked through
    its admin API) when one serves the data dir, else those this configuration would start with."""
    settings = load_settings(upstream_url=upstream_url, upstream_key=upstream_key, config=config, data_dir=data_dir)
    access = StoreAccess(settings)
    described = _run(lambda: access.run("upstreams", check=check))
    routes, aliases, results = described["routes"], described["aliases"], described["checks"]
    if as_json:
        typer.echo(json.dumps(described, indent=2))
    else:
        if access.proxy is not None:  # its own routes; --upstream-url/--config describe a proxy yet to start
            typer.echo(f"routes of the running proxy at {access.proxy['url']} (pid {access.proxy['pid']})")
        listing = _table("route", "pattern", "provider", "base url", "key", "timeout", "$/M in/out")
        for r in routes:
            price = (
                "-"
                if r["price_input"] is None and r["price_output"] is None
                else f"{r['price_input']}/{r['price_output']}"
            )
            listing.add_row(
                r["name"], r["pattern"], r["provider"], r["base_url"], r["auth"], str(r["timeout_s"] or "-"), price
            )
        console.print(listing)
        if aliases:
            console.print("aliases: " + ", ".join(f"{a['alias']} -> {a['model']} ({a['route']})" for a in aliases))
        if check:
            checks = _table("route", "model", "result")
            for r in results:
                outcome = f"ok, {r['latency_ms']:.0f} ms" if r["ok"] else f"{r['error']}"
                checks.add_row(r["route"], r["model"] or "-", outcome)
            console.print(checks)
    if check and any(not r["ok"] and r["contacted"] for r in results):
        raise typer.Exit(1)


@app.command()
def up(
    host: HostOption = None,
    port: PortOption = None,
    upstream_url: UpstreamUrl = None,
    upstream_key: UpstreamKey = None,
    data_dir: DataDir = None,
    max_body_bytes: MaxBodyBytes = None,
    config: ConfigFile = None,
    upstream_free: UpstreamFree = None,
    client_keys_file: ClientKeysFile = None,
    public_report: PublicReport = None,
    store: StoreUrl = None,
    queue: QueueUrl = None,
    shared_dir: SharedDir = None,
    workers: Workers = 1,
    teacher_seed: Annotated[int, typer.Option(help="Offline teacher's seed.")] = 0,
    teacher_flaw_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Offline teacher's flawed share.")] = 0.1,
) -> None:
    """The main job with embedded defaults: the proxy over DuckDB in the data dir, the training
    worker (SqliteHuey) beside it, local models on the bundled Gemma 3 270M GGUF, and the offline
    teacher as the upstream when neither an upstream key (--upstream-key, UNDERSTUDY_UPSTREAM_KEY,
    OPENAI_API_KEY) nor an upstream URL (--upstream-url, UNDERSTUDY_UPSTREAM_URL) is given: with a
    URL and no key the proxy forwards there with the clients' own keys (your own model server).
    It prints the address it listens on once the port is bound."""
    from understudy.processes import start_teacher, start_worker
    from understudy.proxy.server import serve as run_server
    from understudy.proxy.upstreams import UpstreamConfigError

    settings = load_settings(
        host=host,
        port=port,
        upstream_url=upstream_url,
        upstream_key=upstream_key,
        data_dir=data_dir,
        max_body_bytes=max_body_bytes,
        config=config,
        upstream_free=upstream_free,
        client_keys_file=client_keys_file,
        public_report=public_report,
        store=store,
        redis_url=queue,
        shared_dir=shared_dir,
    )
    _refuse_busy_data_dir(settings)  # before any child starts: nothing to undo, nothing printed as if it ran
    _check_workers(settings, workers)
    _check_access(settings)
    settings.ensure_data_dir()
    teacher = None
    if settings.resolved_upstream_key() is None and "upstream_url" not in settings.model_fields_set:
        teacher = start_teacher(seed=teacher_seed, flaw_share=teacher_flaw_share)
        settings = settings.model_copy(update={"upstream_url": teacher.url, "upstream_free": True})
        typer.echo(f"understudy: no upstream key or URL given; the offline teacher answers at {teacher.url}", err=True)
    else:
        key_note = "set" if settings.resolved_upstream_key() else "not set (clients' own keys are forwarded)"
        typer.echo(f"understudy: upstream {settings.upstream_url} (key {key_note})", err=True)
    worker = start_worker(settings)
    typer.echo(f"understudy: training worker beside it, log {settings.data_dir / 'worker.log'}", err=True)
    children = [worker] if teacher is None else [worker, teacher]
    try:
        run_server(settings, on_stop=[child.stop for child in children], workers=workers)
    except (OSError, UpstreamConfigError, ValueError) as exc:
        fail(str(exc))
    finally:
        for child in children:  # when the server never started; stopping twice is harmless
            child.stop()


KeysFile = Annotated[Path | None, setting_option("client_keys_file", "--file")]


def _keys_file(file: Path | None, data_dir: Path | None) -> Path:
    from understudy.client_keys import keys_file_of

    settings = load_settings(data_dir=data_dir, client_keys_file=file)
    if file is None:
        settings.ensure_data_dir()
    return keys_file_of(settings)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="Who the key is for (letters, digits, -_.@).")],
    file: KeysFile = None,
    data_dir: DataDir = None,
) -> None:
    """Make a client key named NAME: printed once here, stored only as its hash."""
    from understudy.client_keys import ClientKeysError, add_key

    path = _keys_file(file, data_dir)
    try:
        key = add_key(path, name)
    except ClientKeysError as exc:
        fail(str(exc))
    typer.echo(
        f"client key {name!r} added to {path} (shown once; clients send it as `Authorization: Bearer`):", err=True
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    file: KeysFile = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The client keys' names and when they were made (the keys themselves are not kept)."""
    from understudy.client_keys import ClientKeysError, read_entries

    path = _keys_file(file, data_dir)
    try:
        entries = read_entries(path)
    except ClientKeysError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([{"name": e.name, "created_at": e.created_at} for e in entries], indent=2))
        return
    table = _table("name", "created")
    for entry in entries:
        table.add_row(entry.name, entry.created_at)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")], file: KeysFile = None, data_dir: DataDir = None
) -> None:
    """Remove the client key NAME; a running proxy refuses it within seconds."""
    from understudy.client_keys import ClientKeysError, revoke_key

    path = _keys_file(file, data_dir)
    try:
        revoke_key(path, name)
    except ClientKeysError as exc:
        fail(str(exc))
    typer.echo(f"client key {name!r} revoked in {path}")


@sites_app.callback()
def sites(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List call sites: id, name, calls, parse-valid rate, state (a partial site's threshold, the local share), served-by."""
    ctx.obj = load_settings(data_dir=data_dir)
    if ctx.invoked_subcommand is not None:
        return
    rows = _run(lambda: StoreAccess(ctx.obj).run("sites"))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    # At 80 columns names wrap (folded, never cut) and ids shrink to a prefix every command accepts.
    narrow = console.width < 110
    table = Table(
        Column("id", no_wrap=True),
        Column("name", overflow="fold", min_width=16, ratio=1),
        Column("returns", overflow="fold"),
        Column("calls", no_wrap=True, justify="right"),
        Column("valid", no_wrap=True),
        Column("state", no_wrap=True),
        Column("served-by", overflow="fold"),
    )
    for row in rows:
        rate = "-" if row["valid_rate"] is None else f"{row['valid_rate']:.0%}"
        state = row["state"]
        if row.get("partial_threshold") is not None:
            state += f" >= {row['partial_threshold']:.2f}"
        if row.get("local_share"):
            state += f" ({row['local_share']:.0%} local)"
        table.add_row(
            row["id"][:8] if narrow else row["id"],
            row["name"],
            row["returns"],
            str(row["calls"]),
            rate,
            state,
            row["served_by"],
        )
    console.print(table)


@sites_app.command("rename")
def sites_rename(ctx: typer.Context, site: str, name: str, data_dir: DataDir = None) -> None:
    """Give SITE (id, name or id prefix) a new readable NAME (one no other site has)."""
    settings = load_settings(data_dir=data_dir) if data_dir else ctx.obj
    result = _run(lambda: StoreAccess(settings).run("rename", site=site, name=name))
    typer.echo(f"{result['id']} is now {result['name']!r}")


@app.command()
def calls(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    limit: Annotated[int, typer.Option(help="How many recent calls.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print full records as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Recent calls of one site."""
    if limit < 1:
        fail(f"--limit must be at least 1, not {limit}", 2)
    rows = _run(lambda: StoreAccess(load_settings(data_dir=data_dir)).run("calls", site=site, limit=limit))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = _table("time", "turn", "served-by", "status", "ms", "tokens in/out", "valid", "answer")
    for row in rows:
        answer = _answer_preview(row.get("response"))
        valid = "-" if row["valid"] is None else ("yes" if row["valid"] else "no")
        tokens = f"{row['prompt_tokens'] or '-'}/{row['completion_tokens'] or '-'}"
        table.add_row(
            row["ts"][:19],
            row["turn"],
            row["served_by"],
            str(row["status"]),
            f"{row['latency_ms']:.0f}",
            tokens,
            valid,
            answer,
        )
    console.print(table)


@app.command()
def corpus(
    runs: Annotated[int, typer.Option(help="How many times to run the Jac level generator.")] = 20,
    levels: Annotated[int, typer.Option(help="Levels played per run (each level calls every RPG site).")] = 5,
    parallel: Annotated[int, typer.Option(help="Runs at a time.")] = 2,
    seed: Annotated[int, typer.Option(help="Offline teacher's seed.")] = 0,
    flaw_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Offline teacher's share of flawed answers.")
    ] = 0.1,
    data_dir: DataDir = None,
) -> None:
    """Fill the store: run the Jac RPG generator through the proxy (offline teacher unless an upstream key is set)."""
    from understudy.cli.corpus import generate_corpus

    if runs < 1 or levels < 1 or parallel < 1:
        fail("--runs, --levels and --parallel must be at least 1")
    try:
        result = generate_corpus(
            load_settings(data_dir=data_dir),
            runs=runs,
            levels=levels,
            parallel=parallel,
            seed=seed,
            flaw_share=flaw_share,
        )
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result.to_dict(), indent=2))
    if result.succeeded < result.runs:
        raise typer.Exit(1)


@app.command()
def export(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    jsonl: Annotated[Path | None, typer.Option(help="Write OpenAI fine-tuning chat JSONL here.")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Write Parquet here.")] = None,
    filtered: Annotated[
        bool, typer.Option("--filtered/--unfiltered", help="Keep only parse-valid, validator-passing answers.")
    ] = True,
    teacher: Annotated[
        str | None, typer.Option(help="Only answers from this model or provider (e.g. anthropic).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export one site's recorded calls as a training dataset."""
    if jsonl is None and parquet is None:
        fail("give --jsonl FILE and/or --parquet FILE")
    result = _run(
        lambda: StoreAccess(load_settings(data_dir=data_dir)).export(
            site,
            filtered=filtered,
            jsonl=str(jsonl.resolve()) if jsonl else None,
            parquet=str(parquet.resolve()) if parquet else None,
            teacher_model=teacher,
        )
    )
    typer.echo(json.dumps(result, indent=2))


@app.command()
def train(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    now: Annotated[
        bool, typer.Option("--now", help="Train here and now instead of enqueueing for the worker.")
    ] = False,
    base_model: Annotated[
        str | None, typer.Option(help="HF dir, hub id or .gguf to train (default: bundled Gemma 3 270M).")
    ] = None,
    base_gguf: Annotated[str | None, typer.Option(help="GGUF the adapter applies to when serving.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training split.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    qlora: Annotated[bool | None, typer.Option("--qlora/--no-qlora", help="4-bit NF4 base (bitsandbytes).")] = None,
    control: Annotated[
        str | None,
        typer.Option(
            help="Register a negative control instead of a candidate: 'base' (the bare base model, no adapter) or "
            "'shuffled' (trained on answers to other requests). The policy should reject either."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Train a new version for SITE from its recorded calls (snapshot -> LoRA -> GGUF adapter -> verify)."""
    overrides = {
        k: v
        for k, v in {
            "base_model": base_model,
            "base_gguf": base_gguf,
            "epochs": epochs,
            "max_steps": max_steps,
            "lr": lr,
            "lora_r": lora_r,
            "qlora": qlora,
        }.items()
        if v is not None
    }
    settings = load_settings(data_dir=data_dir)
    access = StoreAccess(settings)
    job = _run(lambda: access.run("training_job", site=site, config=overrides, control=control))
    if control == "base":
        from understudy.training.jobs import base_control_result

        version = _run(lambda: access.run("register_version", result=base_control_result(job)))
        typer.echo(
            json.dumps(
                {
                    "version": version["version"],
                    "status": version["status"],
                    "note": version["note"],
                    "adapter": None,
                    "metrics": version["metrics"],
                },
                indent=2,
                default=str,
            )
        )
        return
    typer.echo(f"snapshot {job['snapshot']} ({job['examples']['kept']} examples)", err=True)
    if not now:
        # the queue is built from the environment when training.tasks is imported: point it at this data dir
        os.environ["UNDERSTUDY_DATA_DIR"] = str(settings.data_dir)
        from understudy.training.tasks import huey, train_site

        train_site(job)
        where = f"Redis {redacted_queue(settings.redis_url)}" if settings.redis_url else huey.storage.filename
        typer.echo(f"queued training for {job['site_name']} in {where}; `understudy worker` runs it")
        return
    from understudy.training.pipeline import run_training_job

    result = run_training_job(
        job["site_id"],
        job["snapshot"],
        job["out_dir"],
        job["config"],
        validator=job.get("validator"),
        control=job.get("control"),
    )
    version = _run(lambda: StoreAccess(settings).run("register_version", result=result))
    typer.echo(
        json.dumps(
            {
                "version": version["version"],
                "status": version["status"],
                "note": version["note"],
                "adapter": version["adapter_path"],
                "metrics": version["metrics"],
            },
            indent=2,
            default=str,
        )
    )
    if result.get("error"):
        fail(f"training failed: {result['error']}")


@app.command()
def versions(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """A site's trained versions: status, base, dataset, held-out metrics."""
    rows = _run(lambda: StoreAccess(load_settings(data_dir=data_dir)).run("versions", site=site))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = _table(
        "version", "status", "created", "examples", "steps", "s/step", "held-out exact / parse / validator", "note"
    )
    for row in rows:
        metrics = row["metrics"] or {}
        held = metrics.get("heldout") or {}
        trained = metrics.get("train") or {}
        rates = " / ".join(
            "-" if held.get(k) is None else f"{held[k]:.0%}"
            for k in ("exact_match_rate", "parse_valid_rate", "validator_pass_rate")
        )
        table.add_row(
            f"v{row['version']}",
            row["status"],
            row["created_at"][:19],
            str(trained.get("n_train", "-")),
            str(trained.get("steps", "-")),
            f"{trained.get('seconds_per_step', 0):.2f}",
            rates,
            row["note"] or "",
        )
    console.print(table)


@app.command()
def jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many recent jobs to list.")] = 20,
    data_dir: DataDir = None,
) -> None:
    """The training schedule: whether the quiet window is open, each site's next job (due now or
    not, and why), and the recent jobs with their reasons and outcomes."""
    from understudy.training.jobs import scheduling_rules

    settings = load_settings(data_dir=data_dir)
    schedule = _run(
        lambda: StoreAccess(settings).run("training_schedule", rules={**scheduling_rules(settings), "jobs": limit})
    )
    if as_json:
        typer.echo(json.dumps(schedule, indent=2, default=str))
        return
    rules = schedule["rules"]
    typer.echo(
        f"quiet window {'open' if schedule['quiet'] else 'closed'}: {schedule['window']}; a first version at "
        f"{rules['min_examples']} usable examples, a new one at x{rules['growth_factor']:g} growth; the worker "
        f"checks every {settings.train_check_minutes} min"
    )
    table = Table(
        Column("id", no_wrap=True),
        Column("name", overflow="fold", min_width=16),
        Column("state", no_wrap=True),
        Column("next job", overflow="fold", ratio=1),
    )
    for site in schedule["sites"]:
        table.add_row(
            site["id"][:8] if console.width < 110 else site["id"],
            site["name"],
            site["state"],
            ("due: " if site["due"] else "") + site["reason"],
        )
    console.print(table)
    if schedule["jobs"]:
        history = Table(
            Column("started", no_wrap=True),
            Column("site", overflow="fold"),
            Column("reason", overflow="fold", ratio=1),
            Column("outcome", overflow="fold", ratio=1),
        )
        for job in schedule["jobs"]:
            history.add_row(job["ts"][:19], job["name"], job["reason"], job["outcome"])
        console.print(history)
    else:
        typer.echo("no training jobs scheduled yet")


@app.command()
def worker(
    data_dir: DataDir = None,
    queue: QueueUrl = None,
    shared_dir: SharedDir = None,
    proxy_url: ProxyUrl = None,
) -> None:
    """Run the Huey consumer: training jobs, and the periodic scheduler (quiet hours). On a GPU
    host: `--queue redis://...` takes the proxies' jobs, `--shared-dir` is where their snapshots are
    read and adapters written, `--proxy-url` where results are registered."""
    # the queue is built from the environment when training.tasks is imported
    for name, value in (
        ("UNDERSTUDY_DATA_DIR", data_dir),
        ("UNDERSTUDY_QUEUE", queue),
        ("UNDERSTUDY_SHARED_DIR", shared_dir),
        ("UNDERSTUDY_PROXY_URL", proxy_url),
    ):
        if value is not None:
            os.environ[name] = str(value)
    settings = load_settings()
    from understudy.training.tasks import huey

    where = redacted_queue(settings.redis_url) if settings.redis_url else f"in {settings.data_dir}"
    typer.echo(f"understudy worker: queue {huey.storage.__class__.__name__} {where}", err=True)
    huey.create_consumer(workers=1, periodic=True, check_worker_health=True).run()


def redacted_queue(url: str) -> str:
    """A Redis URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


@app.command()
def pin(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    target: Annotated[str, typer.Argument(help="upstream | local | local@vN")],
    data_dir: DataDir = None,
) -> None:
    """Fix who answers SITE, whatever its scores say."""
    _act(site, {"action": "pin", "target": target}, data_dir)


@app.command()
def unpin(site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")], data_dir: DataDir = None) -> None:
    """Return SITE to automatic routing."""
    _act(site, {"action": "unpin"}, data_dir)


@app.command()
def rollback(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Version to make active (vN); the active one again when the policy sent it back to learning "
            "(it shadows anew); default: back to upstream.",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Activate an earlier version, or withdraw the active one (the upstream answers)."""
    _act(site, {"action": "rollback", "to_version": _version_number(to) if to else None}, data_dir)


@app.command()
def promote(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    version: Annotated[str, typer.Argument(help="Version to serve locally now (vN or N).")],
    data_dir: DataDir = None,
) -> None:
    """Promote a version by hand: it becomes active and the site goes local."""
    _act(site, {"action": "promote", "version": _version_number(version)}, data_dir)


@app.command()
def report(
    site: Annotated[str | None, typer.Argument(help="One site (id, name or id prefix); default: all.")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML page with plots here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report data as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Shadow-mode report: state, version, agreement with its interval, local share, latency, cost saved."""
    access = StoreAccess(load_settings(data_dir=data_dir))
    if html is not None:
        html.write_text(_run(lambda: access.run("report", site=site, format="html")).body, encoding="utf-8")
        typer.echo(f"wrote {html}")
        return
    fmt = "json" if as_json else "text"
    text = _run(lambda: access.run("report", site=site, format=fmt, color=sys.stdout.isatty(), width=console.width))
    typer.echo(text.body, nl=False)


@app.command()
def policy(
    site: Annotated[str, typer.Argument(help="Site id, name or id prefix.")],
    overrides: Annotated[
        str | None,
        typer.Argument(
            help='JSON merged into the site\'s overrides, e.g. \'{"promotion": {"min_samples": 50}}\'; null removes a '
            "key. Without it: print the policy."
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the site's overrides instead of merging ('{}' clears).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Per-site routing overrides: promotion thresholds and sampling, scoring (creative paths, tolerances),
    validator, prompt rendering. Prints the overrides and the settings in effect afterwards."""
    access = StoreAccess(load_settings(data_dir=data_dir))
    if overrides is None:
        if replace:
            fail("--replace needs the JSON to replace the overrides with ('{}' clears them)", 2)
        _print_policy(_run(lambda: access.run("policy", site=site)))
        return
    try:
        parsed = json.loads(overrides)
    except ValueError as exc:
        fail(f"overrides must be JSON: {exc}", 2)
    if not isinstance(parsed, dict):
        fail("overrides must be a JSON object", 2)
    _print_policy(_run(lambda: access.run("action", site=site, action="policy", overrides=parsed, replace=replace)))


def _print_policy(record: dict) -> None:
    view = record["policy"]
    own = json.dumps(view["overrides"], sort_keys=True) if view["overrides"] else "none (global settings only)"
    typer.echo(f"{record['name']} ({record['id']}): site overrides {own}")
    if view.get("effective") is None:
        typer.echo(
            f"warning: the stored overrides are not valid ({view.get('problem')}); the global settings apply", err=True
        )
        return
    typer.echo("in effect:")
    typer.echo(json.dumps(view["effective"], indent=2, sort_keys=True))


@app.command()
def score(
    request: Annotated[
        str, typer.Option("--request", help="A chat-completions request body (JSON file, or - for stdin).")
    ],
    upstream: Annotated[
        str, typer.Option("--upstream", help="The upstream's answer: the assistant message text (file or -).")
    ],
    local: Annotated[str, typer.Option("--local", help="The local model's answer (file or -).")],
    as_json: Annotated[bool, typer.Option("--json", help='Print {"score", "local_valid", "components"}.')] = False,
    data_dir: DataDir = None,
) -> None:
    """Score one pair of answers to REQUEST exactly as shadow mode would: why a site is (not) promoted."""
    from understudy.proxy.types import validation_error

    if [request, upstream, local].count("-") > 1:
        fail("only one of --request, --upstream and --local can be - (stdin)", 2)
    body_text = _read_input(request, "--request")
    try:
        body = json.loads(body_text)
    except ValueError as exc:
        fail(f"--request {request}: not JSON ({exc})", 2)
    problem = validation_error(body) if isinstance(body, dict) else "the body is not a JSON object"
    if problem is not None:
        fail(f"--request {request}: not a chat-completions request: {problem}", 2)
    result = _run(
        lambda: StoreAccess(load_settings(data_dir=data_dir)).run(
            "score", request=body, upstream=_read_input(upstream, "--upstream"), local=_read_input(local, "--local")
        )
    )
    site, known = result.pop("_site", None), result.pop("_known_site", False)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    where = f"site {site}" + ("" if known else " (not in the store: default scoring, no decoys)")
    typer.echo(
        f"score {result['score']:.3f}  local answer {'valid' if result['local_valid'] else 'INVALID'}  ({where})"
    )
    for name, value in result["components"].items():
        typer.echo(f"  {name}: {value:.3f}" if isinstance(value, float) else f"  {name}: {value}")


def _read_input(source: str, option: str) -> str:
    """A file's text, or stdin's for '-'; exit 2 with one line when it cannot be read."""
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(
            f"{option} {source}: cannot read it ({exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc})", 2
        )


def _act(site: str, request: dict, data_dir: Path | None) -> None:
    record = _run(lambda: StoreAccess(load_settings(data_dir=data_dir)).run("action", site=site, **request))
    version = f"v{record['active_version']}" if record["active_version"] else "none"
    typer.echo(
        f"{record['name']} ({record['id']}): state {record['state']}, active version {version}, "
        f"pinned {record['pinned'] or 'no'}"
    )


def _version_number(text: str) -> int:
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        fail(f"not a version: {text!r} (expected vN)")


def _answer_preview(response_json: str | None, width: int = 60) -> str:
    try:
        message = json.loads(response_json or "")["choices"][0]["message"]
        text = message.get("content") or json.dumps(message.get("tool_calls"))
    except (TypeError, ValueError, KeyError, IndexError):
        text = response_json or ""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    """The console entry point: the app, with a usage mistake (a missing argument, an unknown
    command or option, a value of the wrong type) as one `error:` line and exit 2 instead of
    Click's boxed usage text. (Typer's Click exceptions all derive from TyperException.)"""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="understudy", standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    except ValidationError as exc:  # a setting from a flag or UNDERSTUDY_* that does not validate
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "setting"
        typer.echo(f"error: {where}: {first.get('msg', exc)}".replace("Value error, ", ""), err=True)
        sys.exit(2)
    except typer.TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
