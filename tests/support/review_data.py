"""Shadow pairs in a real DuckDB store, for the review tests: recorded `Map` calls (byLLM-shaped
requests from tests.support.showcase) with the upstream's map and a local version's map."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.support.rows import call_row
from tests.support.showcase import map_request
from understudy.store import Store

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MAP_SITE = "fe11ab1e0001"
TEXT_SITE = "fe11ab1e0002"


def level(difficulty: int, width: int = 8, height: int = 6) -> dict:
    return {
        "name": f"Level {difficulty}",
        "difficulty": difficulty,
        "width": width,
        "height": height,
        "num_wall": 1,
        "num_enemies": 1,
        "time_countdown": 60,
        "n_retries_allowed": 2,
    }


def a_map(lv: dict, enemy_x: int) -> str:
    return json.dumps(
        {
            "level": lv,
            "walls": [{"start_pos": {"x": 2, "y": 0}, "end_pos": {"x": 2, "y": 3}}],
            "small_obstacles": [{"x": 5, "y": 4}],
            "enemies": [{"x": enemy_x, "y": 2}],
            "player_pos": {"x": 0, "y": 0},
        }
    )


def completion(content: str) -> str:
    return json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    )


def populate(store: Store, *, pairs_per_version: dict[int, int] | None = None, text_pairs: int = 0) -> None:
    """A `Map` site with shadow pairs per version (difficulty cycling 1-3) and, optionally, a plain-text site."""
    pairs_per_version = pairs_per_version or {1: 4, 2: 8}
    cur = store.cursor()
    cur.execute(
        "INSERT INTO sites (id, name, name_source, kind, schema_name, state, active_version, created_at) "
        "VALUES (?, 'create_next_map', 'function', 'byllm', 'Map', 'shadow', ?, ?)",
        [MAP_SITE, max(pairs_per_version), T0],
    )
    calls, shadows, i = [], [], 0
    for version, n in pairs_per_version.items():
        for _ in range(n):
            lv = level(1 + i % 3)
            call_id = f"call-{i:03d}"
            ts = T0 + timedelta(minutes=i)
            calls.append(
                call_row(
                    call_id,
                    MAP_SITE,
                    ts=ts,
                    model="gpt-4o-mini",
                    request=json.dumps(map_request(lv)),
                    response=completion(a_map(lv, 6)),
                    latency_ms=900.0,
                    prompt_tokens=100,
                    completion_tokens=80,
                    cost_usd=0.001,
                    provider="openai",
                    upstream_model="gpt-4o-mini",
                )
            )
            shadows.append((call_id, MAP_SITE, version, ts, 0.8, "{}", True, True, 300.0, 900.0, a_map(lv, 4)))
            i += 1
    if text_pairs:
        cur.execute(
            "INSERT INTO sites (id, name, name_source, kind, state, active_version, created_at) "
            "VALUES (?, 'summarise', 'explicit', 'explicit', 'shadow', 1, ?)",
            [TEXT_SITE, T0],
        )
        for k in range(text_pairs):
            call_id = f"text-{k:03d}"
            request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Summarise ticket {k}"}]}
            calls.append(
                call_row(
                    call_id,
                    TEXT_SITE,
                    ts=T0 + timedelta(minutes=k),
                    model="gpt-4o-mini",
                    request=json.dumps(request),
                    response=completion(f"Ticket {k} is about billing."),
                    latency_ms=500.0,
                    prompt_tokens=10,
                    completion_tokens=10,
                    cost_usd=0.0001,
                    valid=None,
                    provider="openai",
                    upstream_model="gpt-4o-mini",
                )
            )
            shadows.append(
                (
                    call_id,
                    TEXT_SITE,
                    1,
                    T0 + timedelta(minutes=k),
                    0.7,
                    "{}",
                    True,
                    True,
                    100.0,
                    500.0,
                    f"Billing question, ticket {k}.",
                )
            )
    store.write_batch([], calls)
    cur.executemany(
        "INSERT INTO shadow_results (call_id, site_id, version, ts, score, components, comparable, local_valid, "
        "local_latency_ms, upstream_latency_ms, local_output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        shadows,
    )
