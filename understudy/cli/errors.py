"""How a command ends on a mistake: one `error: MESSAGE` line on stderr and a non-zero exit,
never a traceback. An operation's refusal (`OperationError`, the same message the admin API
answers with) ends the command here."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import typer

from understudy.operations.base import OperationError


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def or_fail[T](action: Callable[[], T]) -> T:
    """`action()`, or the command's end with its refusal's message and exit 1."""
    try:
        return action()
    except OperationError as exc:
        fail(exc.message)
