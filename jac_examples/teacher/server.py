"""HTTP face of the offline teacher: a small OpenAI-compatible Litestar app.

Routes: `POST /v1/chat/completions` (also `/chat/completions`, for clients configured with a
base URL without `/v1`), `GET /v1/models`, `GET /healthz`. Responses are plain JSON or an SSE
stream exactly as OpenAI sends them (`wire`); an `X-Teacher-Flaw` header names the injected
flaw, if any, so corpus tooling can check its filters without parsing the content.

Answering is CPU-light (well under a millisecond for most sites, a few for maps), so the
async handler calls the `Teacher` inline rather than hopping to a thread.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

from understudy.jac_examples.teacher.teacher import Teacher
from understudy.jac_examples.teacher.wire import completion, stream_chunks

TEACHER_MODEL_ID = "understudy-teacher"


def _error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return Response(content=body, status_code=status)


def create_teacher_app(seed: int = 0, flaw_share: float = 0.1) -> Litestar:
    teacher = Teacher(seed=seed, flaw_share=flaw_share)

    # Litestar's POST default is 201; OpenAI clients expect 200.
    @post(["/v1/chat/completions", "/chat/completions"], status_code=200)
    async def chat_completions(request: Request) -> Response | Stream:
        try:
            payload: Any = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not JSON: {exc}")
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error(400, "request needs a `messages` list")
        reply = teacher.respond(payload)
        model = str(payload.get("model") or TEACHER_MODEL_ID)
        # It charges nothing: the proxy records its answers at $0 (pricing.COST_HEADER).
        headers = {"X-Understudy-Cost": "0", **({"X-Teacher-Flaw": reply.flaw} if reply.flaw else {})}
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return Stream(
                stream_chunks(payload, model, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **headers},
            )
        return Response(content=completion(payload, model, reply), headers=headers, status_code=200)

    @get("/v1/models", sync_to_thread=False)
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": TEACHER_MODEL_ID, "object": "model", "created": 0, "owned_by": "understudy"}],
        }

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "seed": seed, "flaw_share": flaw_share}

    app = Litestar(route_handlers=[chat_completions, models, healthz])
    app.state.teacher = teacher
    return app


def serve_teacher(host: str = "127.0.0.1", port: int = 8900, seed: int = 0, flaw_share: float = 0.1) -> None:
    """Run the teacher with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_teacher_app(seed=seed, flaw_share=flaw_share), host=host, port=port, log_level="warning")
