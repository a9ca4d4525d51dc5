"""Run the proxy under uvicorn and announce it in the data directory.

uvicorn runs `proxy.chat_lane.ChatLane` around the Litestar application: chat completions are
served in the lane, everything else by Litestar.

Once the socket is bound, the address it really got is printed (`--port 0` picks one) and
`proxy.json` (mode 0600) tells the CLI that a proxy owns the DuckDB file and how to reach
it: `url` is the OpenAI base URL (ends in /v1, what a client is given), `root` the server
(admin API, /healthz), plus pid and admin token; it is removed on shutdown. uvicorn turns SIGTERM/SIGINT into a graceful stop: in-flight requests finish,
then the app's shutdown hook drains the recorder.

Several processes (`--workers N`, PostgreSQL store only): the parent binds the socket, writes
proxy.json and supervises N children (uvicorn's `Multiprocess`: a dead child is replaced, SIGTERM
drains every child). Each child is a whole proxy, built from the parent's settings (passed in
UNDERSTUDY_WORKER_SETTINGS, the admin token included, so one token reaches all of them): its own
store connections and single writer, its own local model loaded once.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence

import uvicorn
from uvicorn.supervisors import Multiprocess

from understudy.proxy.app import create_app
from understudy.proxy.chat_lane import ChatLane
from understudy.proxy.latency_tuning import tune_for_latency
from understudy.settings import Settings

WORKER_SETTINGS_ENV = "UNDERSTUDY_WORKER_SETTINGS"


class _AnnouncingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, settings: Settings, admin_token: str, on_stop: Sequence[Callable[[], object]] = ()
    ):
        super().__init__(config)
        self.settings = settings
        self.admin_token = admin_token
        self.on_stop = on_stop

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        root = f"http://{_url_host(host)}:{port}"
        write_discovery(self.settings, root, self.admin_token)
        print(f"understudy: proxy on {root}/v1 (data in {self.settings.data_dir})", file=sys.stderr, flush=True)

    async def shutdown(self, sockets=None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            remove_discovery(self.settings)
            # Here and not after run(): uvicorn re-raises the captured SIGTERM/SIGINT once
            # run() returns, which kills the process before a caller's `finally` could run.
            for stop in self.on_stop:
                stop()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def write_discovery(settings: Settings, root: str, admin_token: str) -> None:
    path = settings.discovery_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": root + "/v1", "root": root, "pid": os.getpid(), "admin_token": admin_token}, handle)


def remove_discovery(settings: Settings) -> None:
    try:
        data = json.loads(settings.discovery_path.read_text())
        if data.get("pid") == os.getpid():
            settings.discovery_path.unlink()
    except (OSError, ValueError):
        pass


def _uvicorn_config(app, settings: Settings, **extra) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,  # seconds an in-flight generation may take to finish on stop
        access_log=False,  # every call is recorded in the store; a per-request log line costs latency
        **extra,
    )


def serve(settings: Settings, on_stop: Sequence[Callable[[], object]] = (), workers: int = 1) -> None:
    """Serve until SIGTERM/SIGINT; `on_stop` callables run once the proxy has drained
    (`understudy up` stops its worker and teacher there)."""
    # Everything the proxy writes (the DuckDB file and the WAL DuckDB re-creates, snapshots,
    # exports, spilled rows) holds recorded prompts: owner-only, whatever the shell's umask.
    os.umask(0o077)
    if workers > 1:
        serve_processes(settings, workers, on_stop)
        return
    app = create_app(settings)  # StoreBusy (an OSError) when another process holds the store
    tune_for_latency()
    _AnnouncingServer(_uvicorn_config(ChatLane(app), settings), settings, app.state.proxy.admin_token, on_stop).run()


def serve_processes(settings: Settings, workers: int, on_stop: Sequence[Callable[[], object]] = ()) -> None:
    """N proxy processes on one socket, over a shared (PostgreSQL) store."""
    if not settings.shared_store:
        raise ValueError(
            f"--workers {workers} needs a shared store (--store postgresql://...): the DuckDB file "
            "admits one writing process"
        )
    settings.ensure_data_dir()  # the store was opened (reachable, migrated) by the CLI before this
    admin_token = settings.admin_token or secrets.token_urlsafe(24)
    settings = settings.model_copy(update={"admin_token": admin_token})
    os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
    config = _uvicorn_config("understudy.proxy.server:worker_app", settings, factory=True, workers=workers)
    socket = config.bind_socket()
    host, port = socket.getsockname()[:2]
    root = f"http://{_url_host(host)}:{port}"
    write_discovery(settings, root, admin_token)
    print(
        f"understudy: proxy on {root}/v1 ({workers} processes; data in {settings.data_dir})",
        file=sys.stderr,
        flush=True,
    )
    try:
        Multiprocess(config, sockets=[socket]).run()
    finally:
        socket.close()
        remove_discovery(settings)
        for stop in on_stop:
            stop()


def worker_app() -> ChatLane:
    """One child of `serve_processes`: the proxy built from the parent's settings."""
    app = create_app(Settings(**json.loads(os.environ[WORKER_SETTINGS_ENV])))
    tune_for_latency()
    return ChatLane(app)
