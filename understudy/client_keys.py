"""Client keys: who may spend the proxy's upstream keys.

A client key is a random bearer token a client sends as `Authorization: Bearer <key>` on
`/v1/*`. The keys file (`--client-keys-file`, default `<data-dir>/client-keys.json` when it
exists) holds each key's name and SHA-256 digest, never the key: `understudy keys add NAME`
prints a new key once and stores only its digest. A plain SHA-256 is enough because the keys
are 256 random bits (nothing to guess a dictionary of), and it keeps the check one hash and one
dict lookup per request. The file is written 0600 and re-read when it changes (checked at
most every `RELOAD_CHECK_S`), so a key added or revoked while the proxy runs counts at once.

Keys are optional on a loopback bind (127.0.0.1, ::1, localhost: only this machine reaches
the port) and required on any other: `access_for(settings)` refuses to start a proxy that
would let anyone who reaches the port spend the upstream keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from understudy.settings import Settings

KEY_PREFIX = "us-"  # recognisable in a config file or a leaked log, like OpenAI's "sk-"
RELOAD_CHECK_S = 2.0  # how stale the proxy's view of the keys file may get, seconds
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")


class ClientKeysError(ValueError):
    """The keys file cannot be used, or a bind needs keys it does not have; one line."""


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a reachable interface


def keys_file_of(settings: Settings) -> Path:
    """The file `keys add` writes and the proxy reads: the setting, else the data dir's."""
    return settings.client_keys_file or settings.data_dir / "client-keys.json"


@dataclass(frozen=True)
class KeyEntry:
    name: str
    hash: str
    created_at: str


def read_entries(path: Path) -> list[KeyEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [KeyEntry(str(e["name"]), str(e["hash"]), str(e.get("created_at", ""))) for e in data["keys"]]
    except FileNotFoundError:
        raise ClientKeysError(
            f"client keys file {path} does not exist (`understudy keys add NAME` creates it)"
        ) from None
    except OSError as exc:
        raise ClientKeysError(f"client keys file {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError):
        raise ClientKeysError(
            f'client keys file {path} is not a keys file ({{"keys": [{{"name": ..., "hash": "sha256:..."}}]}})'
        ) from None


def _write_entries(path: Path, entries: list[KeyEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"keys": [e.__dict__ for e in entries]}, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)  # a running proxy never reads half a file


def add_key(path: Path, name: str) -> str:
    """A new key named `name`, stored as its digest; the key itself is returned once."""
    name = name.strip()
    if not name or not set(name) <= _NAME_CHARS:
        raise ClientKeysError(f"a key name is letters, digits and -_.@ only, not {name!r}")
    entries = read_entries(path) if path.exists() else []
    if any(e.name == name for e in entries):
        raise ClientKeysError(f"a key named {name!r} already exists in {path}; revoke it first or pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entries.append(KeyEntry(name, digest(key), datetime.now(UTC).isoformat(timespec="seconds")))
    _write_entries(path, entries)
    return key


def revoke_key(path: Path, name: str) -> None:
    entries = read_entries(path)
    if not any(e.name == name for e in entries):
        raise ClientKeysError(f"no key named {name!r} in {path}")
    _write_entries(path, [e for e in entries if e.name != name])


class ClientKeys:
    """The proxy's view of the keys file: `name_of(token)` is the key's name, or None."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._by_hash: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._load()

    def _load(self) -> None:
        entries = read_entries(self.path)
        stat = self.path.stat()
        self._by_hash = {e.hash: e.name for e in entries}
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            self._next_check = now + RELOAD_CHECK_S
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._load()
            except (OSError, ClientKeysError):
                pass  # a file being replaced or broken: keep the keys last read rather than open up

    def __len__(self) -> int:
        return len(self._by_hash)

    def name_of(self, token: str) -> str | None:
        if not token:
            return None
        self._maybe_reload()
        return self._by_hash.get(digest(token))


def access_for(settings: Settings) -> ClientKeys | None:
    """The client keys a proxy with these settings checks, None when it checks none.

    Raises ClientKeysError when the file is unusable, or when the bind is not loopback and
    there are no keys: such a proxy would spend the upstream keys for anyone reaching it.
    """
    path = settings.client_keys_file
    if path is None and (settings.data_dir / "client-keys.json").exists():
        path = settings.data_dir / "client-keys.json"
    keys = ClientKeys(path) if path is not None else None
    if not is_loopback(settings.host) and not keys:
        where = f"{path} holds no keys" if keys is not None else "no --client-keys-file"
        raise ClientKeysError(
            f"refusing to listen on {settings.host} without client keys ({where}): anyone reaching "
            "the port would spend your upstream keys; create one with `understudy keys add NAME` "
            "or bind 127.0.0.1"
        )
    return keys
