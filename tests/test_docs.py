"""The docs say only what is true of the CLI: the command reference (docs/cli.md) is what the CLI
generates now, and every `understudy ...` command and option named in the README or docs/ exists
(a renamed command or a dropped option fails here, not in a reader's shell)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main

from understudy.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")


def test_the_command_reference_is_generated_from_the_cli_as_it_is():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--output", "/dev/stdout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert out.startswith(committed), "docs/cli.md is out of date: run `make docs`"


def mentions(text: str) -> list[str]:
    """Every `understudy <command> ...` in code: fenced blocks (line by line) and inline spans."""
    code = [line for block in FENCE.findall(text) for line in block.splitlines()]
    code += SPAN.findall(FENCE.sub("", text))
    found = []
    for line in code:
        for match in re.finditer(r"(?:^|[\s(])(?:\.venv/bin/)?understudy ([a-z][a-z-]*(?: [^|#;&]*)?)", line):
            found.append("understudy " + match.group(1).strip())
    return found


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The command a mention names and the words after it (typer's click command objects)."""
    command = typer.main.get_command(app)
    rest = list(words)
    while rest and rest[0] in getattr(command, "commands", {}):
        command = command.commands[rest.pop(0)]
    return command, rest


def options_of(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


def test_every_command_and_option_named_in_the_docs_exists():
    root = typer.main.get_command(app)
    checked, problems = 0, []
    for page in PAGES:
        if page.name == "cli.md":
            continue
        for mention in mentions(page.read_text()):
            try:
                words = shlex.split(mention.replace("...", ""))[1:]
            except ValueError:  # an unbalanced quote in prose: check the words before it
                words = mention.split()[1:]
            if words[:1] == ["understudy"]:  # `docker run ... IMAGE understudy keys add`: the image is named so too
                words = words[1:]
            if not words or words[0] not in root.commands:
                problems.append(f"{page.name}: `{mention}`: no command {words[0] if words else ''!r}")
                continue
            command, rest = resolve(words)
            known = options_of(command)
            for word in rest:
                option = word.split("=", 1)[0]
                if option.startswith("--") and re.fullmatch(r"--[a-z][a-z0-9-]*", option) and option not in known:
                    problems.append(f"{page.name}: `{mention}`: {command.name} has no option {option}")
            checked += 1
    assert checked > 50  # the docs do name commands: the parser found them
    assert problems == [], "\n".join(problems)
