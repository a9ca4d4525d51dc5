"""CLI options that are settings are declared once, in understudy.settings: the option's
environment variable names a settings field and its help is that field's description, so
`--help`, the environment and docs/cli.md cannot drift from what the settings loader reads."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.main

from understudy.cli.main import app
from understudy.cli.setting_options import ENV_PREFIX, setting_option
from understudy.settings import Settings


def _field_for(envvar: str) -> str | None:
    """The settings field an UNDERSTUDY_ variable sets (by name, or by a validation alias)."""
    name = envvar.removeprefix(ENV_PREFIX).lower()
    if name in Settings.model_fields:
        return name
    for field_name, field in Settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", ())
        if envvar in choices:
            return field_name
    return None


def drifted_options(command, path: str = "understudy") -> list[str]:
    """Options read from an UNDERSTUDY_ variable whose variable or help is not the setting's."""
    found = []
    if hasattr(command, "commands"):  # a group (typer's own click, not the click package)
        for name, sub in command.commands.items():
            found += drifted_options(sub, f"{path} {name}")
        return found
    for param in command.params:
        envvar = param.envvar if isinstance(param.envvar, str) else None
        if param.param_type_name != "option" or not envvar or not envvar.startswith(ENV_PREFIX):
            continue
        field = _field_for(envvar)
        description = (Settings.model_fields[field].description or "").rstrip(".") if field else None
        if description is None or not (param.help or "").startswith(description):
            found.append(f"{path} {param.opts[0]} ({envvar})")
    return found


def test_every_option_read_from_the_environment_is_declared_by_its_setting():
    assert drifted_options(typer.main.get_command(app)) == []


def test_control_a_hand_written_option_is_caught():
    probe = typer.Typer()

    @probe.command()
    def run(
        port: Annotated[int | None, typer.Option(envvar="UNDERSTUDY_PORT", help="The port.")] = None,
        host: Annotated[str | None, setting_option("host")] = None,
    ) -> None:
        pass

    assert drifted_options(typer.main.get_command(probe)) == ["understudy --port (UNDERSTUDY_PORT)"]
