"""CLI options derived from the settings: one declaration of a setting's name, environment
variable, description and default (`understudy.settings.Settings`), read by the CLI's options
and by the settings loader alike, so `--help`, the environment and the docs cannot disagree."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import typer
from pydantic_core import PydanticUndefined

from understudy.settings import Settings

ENV_PREFIX = "UNDERSTUDY_"


def setting_option(name: str, *param_decls: str, envvar: str | None = None, **extra: Any) -> Any:
    """A typer option for `Settings` field `name`: `--name-with-dashes` (or `param_decls`), the
    environment variable UNDERSTUDY_NAME (or `envvar`), help from the field's description, with
    its default when the description does not give one."""
    field = Settings.model_fields[name]
    help_text = (field.description or "").rstrip(".")
    default = field.default
    if default not in (None, PydanticUndefined, False) and "default" not in help_text:
        shown = default.as_posix() if isinstance(default, PurePath) else default
        help_text += f" (default: {shown})"
    return typer.Option(
        *(param_decls or (f"--{name.replace('_', '-')}",)),
        envvar=envvar or f"{ENV_PREFIX}{name.upper()}",
        help=help_text + ".",
        **extra,
    )
