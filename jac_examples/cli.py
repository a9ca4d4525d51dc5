"""Command-line pieces of the RPG showcase, mounted into the main `understudy` CLI.

- `levels_app`: `validate FILE` and `render FILE`, mounted as `understudy levels ...`;
- `teacher`: a plain function with typer defaults, registered by the main CLI with
  `app.command("teacher")(teacher)`.

Exit codes of `validate`: 0 the map passes, 1 it fails (the JSON report says why), 2 the
input could not be read at all (missing file, not UTF-8, not JSON); in that last case a
one-line message goes to stderr and nothing to stdout, so scripts can tell "bad map" from
"bad invocation".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

levels_app = typer.Typer(help="Validate and render RPG level maps.", no_args_is_help=True, add_completion=False)

FileArg = Annotated[str, typer.Argument(help="A file holding one Map JSON object, or - for stdin.")]
EXIT_UNREADABLE = 2


def _fail_unreadable(message: str) -> typer.Exit:
    typer.echo(message.replace("\n", " "), err=True)
    return typer.Exit(EXIT_UNREADABLE)


def _read_json(file: str) -> Any:
    """The decoded JSON of FILE (or stdin); exits 2 with a one-line message otherwise."""
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise _fail_unreadable(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail_unreadable(f"{file} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _fail_unreadable(f"{file} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


@levels_app.command("validate")
def validate(
    file: FileArg,
    width: Annotated[int | None, typer.Option(help="Require this grid width.")] = None,
    height: Annotated[int | None, typer.Option(help="Require this grid height.")] = None,
    level: Annotated[bool, typer.Option("--level", help="FILE holds a bare Level, not a Map.")] = False,
) -> None:
    """Check a Map (or, with --level, a Level) and print the per-check report as JSON."""
    from understudy.jac_examples.rpg.validator import validate_level, validate_map

    data = _read_json(file)
    check = validate_level if level else validate_map
    report = check(data, expected_width=width, expected_height=height)
    typer.echo(json.dumps(report.to_dict(), indent=2))
    raise typer.Exit(0 if report.passed else 1)


@levels_app.command("render")
def render(
    file: FileArg,
    png: Annotated[Path | None, typer.Option("--png", help="Also write a PNG image here.")] = None,
    cell: Annotated[int, typer.Option(min=2, help="PNG pixels per grid cell.")] = 16,
) -> None:
    """Print a Map as an ASCII grid (# wall, o obstacle, E enemy, P player, . open)."""
    from understudy.jac_examples.rpg.render import ascii_grid, render_png  # Pillow: only when drawing

    data = _read_json(file)
    try:
        typer.echo(ascii_grid(data))
        if png is not None:
            render_png(data, png, cell=cell)
            typer.echo(f"wrote {png}", err=True)
    except ValueError as exc:
        raise _fail_unreadable(f"cannot draw {file}: {exc}") from None


def teacher(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    seed: Annotated[int, typer.Option(help="Seed for the procedural answers.")] = 0,
    flaw_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of deliberately flawed answers.")] = 0.1,
) -> None:
    """Serve the offline teacher: an OpenAI-compatible stand-in for the upstream model."""
    from understudy.jac_examples.teacher.server import serve_teacher  # keeps litestar/uvicorn off `levels` start-up

    typer.echo(f"teacher on http://{host}:{port}/v1 (seed={seed}, flaw_share={flaw_share})", err=True)
    serve_teacher(host=host, port=port, seed=seed, flaw_share=flaw_share)
