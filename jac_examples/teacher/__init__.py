"""Offline teacher: an OpenAI-compatible server that answers the RPG call sites procedurally.

Modules, in request order: `server` (HTTP) -> `teacher` (orchestration) -> `prompt` +
`pyrepr` (read byLLM's prompt) -> `sites` (which call site) -> `procgen` / `flavour` /
`schema_fill` (the answer) -> `flaws` (deliberate mistakes) -> `wire` (OpenAI format).
"""

from understudy.jac_examples.teacher.server import create_teacher_app, serve_teacher
from understudy.jac_examples.teacher.teacher import Teacher

__all__ = ["Teacher", "create_teacher_app", "serve_teacher"]
