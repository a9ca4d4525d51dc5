"""Local answers from a real llama-server (llama.cpp's model server, per-request LoRA selection).

The tiny model is trained and promoted through a proxy answering in-process; then the same data
dir is served by a proxy whose `[local_server]` sends local answers to llama-server, holding the
same base GGUF. The answers must be the in-process ones (same prompt, grammar, greedy decoding).
Control: a llama-server started without the adapter cannot answer for the version, so the
upstream does; restarted with the adapters the proxy published (adapters.txt, as the README
says), it answers.

llama-server is built once from the llama.cpp inside the installed llama-cpp-python's source
release (scripts/build_llama_server.sh, about 5 minutes on 2 cores; cached in ~/.cache/understudy).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, run_cli, start_proxy
from tests.routing.test_decisions_e2e import COLORS, TRAIN_STEPS, ColorTeacher, ask, tiny_env_for_colors
from tests.support.fake_upstream import free_port


@pytest.fixture(scope="session")
def llama_server_binary() -> str:
    explicit = os.environ.get("UNDERSTUDY_LLAMA_SERVER")
    if explicit:
        return explicit
    built = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build_llama_server.sh")], capture_output=True, text=True, timeout=3600
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1]


class LlamaServer:
    def __init__(self, binary: str, base_gguf: str, adapters: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        lora = ["--lora-init-without-apply", "--lora", ",".join(adapters)] if adapters else []
        self.process = subprocess.Popen(
            [
                binary,
                "-m",
                base_gguf,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "-c",
                "2048",
                "-t",
                "2",
                "--parallel",
                "2",
                "--no-webui",
                *lora,
            ],
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llama-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def served_answers(proxy) -> dict[str, tuple[str, dict]]:
    out = {}
    for thing in COLORS:
        response = ask(proxy, thing)
        out[thing] = (
            response.headers["x-understudy-served-by"],
            json.loads(response.json()["choices"][0]["message"]["content"]),
        )
    return out


@pytest.mark.timeout(1800)
def test_local_answers_from_llama_server_match_in_process_and_need_the_adapter(
    fake_upstream, isolated_data_dir, tiny_model_env, tiny_llama, llama_server_binary, tmp_path
):
    fake_upstream.reply = ColorTeacher()
    env = tiny_env_for_colors(tiny_model_env)
    base_gguf = str(tiny_llama[1])
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        for thing in list(COLORS) * 2:
            ask(proxy, thing)
        run_cli("train", site, "--now", "--max-steps", TRAIN_STEPS, "--data-dir", str(isolated_data_dir), env=env)
        run_cli("pin", site, "local", "--data-dir", str(isolated_data_dir))
        in_process = served_answers(proxy)
    finally:
        proxy.stop()
    assert {served for served, _ in in_process.values()} == {f"local:{site}@v1"}

    published = tmp_path / "published"
    config = tmp_path / "upstreams.toml"
    server = LlamaServer(llama_server_binary, base_gguf, [], tmp_path / "llama-server.log")  # no adapters yet
    config.write_text(f'[local_server]\nurl = "{server.url}"\npublish_dir = "{published}"\nslots = 2\n')
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--config", str(config), env=env)
    try:
        listed = (published / "adapters.txt").read_text().split()
        assert len(listed) == 1 and Path(listed[0]).exists()  # published at start, before any request
        # Control: the server lacks the version's adapter, so the upstream answers, with its colors.
        without = served_answers(proxy)
        assert {served for served, _ in without.values()} == {"upstream"}
        assert "understudy_local_fallbacks_total 6.0" in httpx.get(proxy.url + "/metrics").text
        server.stop()
        # Restarted as the README says, with every published adapter: it answers for the version.
        server = LlamaServer(llama_server_binary, base_gguf, listed, tmp_path / "llama-server.log")
        config.write_text(f'[local_server]\nurl = "{server.url}"\npublish_dir = "{published}"\nslots = 2\n')
    finally:
        proxy.stop()
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--config", str(config), env=env)
    try:
        remote = served_answers(proxy)
    finally:
        proxy.stop()
        server.stop()
    assert remote == in_process  # served locally, the same answers as in-process
    assert {thing: answer for thing, (_, answer) in remote.items()} == {t: {"color": c} for t, c in COLORS.items()}
