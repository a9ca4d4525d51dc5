"""Blind human review of a site's local answers against the upstream's: the protocol and its numbers.

The people's opinion beside the shadow scores (the machine's). Pieces, all on the store's cursor:

- Rubric per site: 1-5 criteria. A response type's package may register its own
  (`understudy.review_rubrics` entry points: the RPG showcase's `Level` and `Map` get gameplay /
  structure / constraints); other sites correctness / usefulness / format, until
  `understudy review rubric` stores another.
- Plan (`draw_plan`): a stratified random sample of shadow pairs (the same recorded input, the
  upstream answer and a local version's answer), strata by version or by any call argument
  (`difficulty`, ...), allocated in proportion with at least one pair per stratum. Each pair's
  blind order (is the local answer A or B?) is drawn once with the OS's random source and
  stored; the page never receives it. A shared subset is judged by every reviewer, the rest by
  one, so Krippendorff's alpha can be measured without everyone judging everything.
- Sample size: n = ceil((z * sd / 0.25)^2) judgments give a ±0.25 95 % interval on a mean
  score; sd is the criterion's observed standard deviation once there are enough judgments,
  else 1.0 (a typical spread on a 1-5 scale), and 2.0 bounds it whatever the data (half the range).
- Results: per criterion the upstream and local means with t intervals, the paired difference
  (local - upstream, per judgment), the preference shares with Wilson intervals, and alpha on
  the shared subset (ordinal for scores, nominal for preferences), overall and per version.

Judgments store the scores as the reviewer saw them (A/B) together with which side was local,
so nothing about the mapping has to be trusted to the page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import secrets
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from understudy import response_types
from understudy.byllm.prompt import call_arguments, first_user_index, first_user_text, split_prompt
from understudy.db import Cursor, transaction
from understudy.reporting.review_statistics import Z95, standard_deviation, summary
from understudy.routing.review_evidence import SCALE, judgment_rows
from understudy.store import SiteNotFound

HALF_WIDTH = 0.25  # the interval half-width a plan sizes for
ASSUMED_SD = 1.0  # sd of a 1-5 score before judgments say otherwise
WORST_SD = (SCALE[1] - SCALE[0]) / 2  # no 1-5 variable spreads more
MIN_JUDGMENTS_FOR_SD = 10  # below this the observed sd is too rough to plan on
PREFERENCES = ("A", "B", "tie")
MAX_COMMENT_CHARS = 4000
EXPORT_FORMAT = "understudy-review-set"
DEFAULT_RUBRIC = {
    "criteria": [
        {"name": "correctness", "label": "Correctness", "description": "Is the answer right for this input?"},
        {"name": "usefulness", "label": "Usefulness", "description": "Would the caller be well served by it?"},
        {"name": "format", "label": "Format", "description": "Is it in the expected shape, clean and complete?"},
    ]
}


class ReviewError(ValueError):
    """A request the review protocol refuses (bad rubric, unknown pair, incomplete scores)."""


# ---- rubrics -------------------------------------------------------------------------------


def _site(cur: Cursor, site_ref: str) -> tuple[str, str, str | None]:
    """(id, name, schema name) by id, exact name or unique id prefix (Store.resolve_site's rules)."""
    rows = cur.execute(
        "SELECT id, name, schema_name FROM sites WHERE id = ? OR name = ?", [site_ref, site_ref]
    ).fetchall()
    if not rows:
        rows = cur.execute("SELECT id, name, schema_name FROM sites WHERE starts_with(id, ?)", [site_ref]).fetchall()
    if len(rows) != 1:
        raise SiteNotFound(
            f"no site matches {site_ref!r}" if not rows else f"{site_ref!r} matches {len(rows)} sites; use the id"
        )
    return rows[0]


def rubric_for(cur: Cursor, site_ref: str) -> dict[str, Any]:
    site_id, _, schema_name = _site(cur, site_ref)
    row = cur.execute("SELECT rubric FROM review_rubrics WHERE site_id = ?", [site_id]).fetchone()
    if row:
        return json.loads(row[0])
    registered = response_types.registered_for(response_types.REVIEW_RUBRICS, schema_name)  # e.g. the showcase's
    return json.loads(json.dumps(registered or DEFAULT_RUBRIC))


def validate_rubric(data: Any) -> dict[str, Any]:
    """A rubric file's content: {"criteria": [{"name", "label"?, "description"?}, ...]} (1-8 criteria)."""
    criteria = data.get("criteria") if isinstance(data, dict) else None
    if not isinstance(criteria, list) or not 1 <= len(criteria) <= 8:
        raise ReviewError(
            'a rubric is {"criteria": [{"name": ..., "label": ..., "description": ...}]} with 1 to 8 criteria'
        )
    out, seen = [], set()
    for c in criteria:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise ReviewError(f"criterion name {name!r}: use lower-case letters, digits and _ (up to 32)")
        if name in seen:
            raise ReviewError(f"criterion {name!r} appears twice")
        seen.add(name)
        out.append({"name": name, "label": str(c.get("label") or name), "description": str(c.get("description") or "")})
    return {"criteria": out}


def set_rubric(cur: Cursor, site_ref: str, rubric: Any) -> dict[str, Any]:
    site_id = _site(cur, site_ref)[0]
    clean = validate_rubric(rubric)
    cur.execute(
        "INSERT OR REPLACE INTO review_rubrics (site_id, rubric, updated_at) VALUES (?, ?, ?)",
        [site_id, json.dumps(clean), _now()],
    )
    return clean


# ---- reviewers -----------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(cur: Cursor, name: str) -> str:
    """A new token for reviewer `name` (an earlier one stops working); only its hash is stored."""
    name = name.strip()
    if not re.fullmatch(r"[\w.@-]{1,64}", name) or name == "admin":
        raise ReviewError("a reviewer name is 1-64 letters, digits, . _ @ or - (and not 'admin')")
    token = secrets.token_urlsafe(24)
    cur.execute(
        "INSERT OR REPLACE INTO reviewers (name, token_sha256, created_at) VALUES (?, ?, ?)",
        [name, _hash(token), _now()],
    )
    return token


def reviewer_for_token(cur: Cursor, token: str) -> str | None:
    if not token:
        return None
    row = cur.execute("SELECT name FROM reviewers WHERE token_sha256 = ?", [_hash(token)]).fetchone()
    return row[0] if row else None


# ---- plans ---------------------------------------------------------------------------------


def _content(response_json: str | None) -> str | None:
    if response_json is None:
        return None
    try:
        content = json.loads(response_json)["choices"][0]["message"]["content"]
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    return content if isinstance(content, str) and content else None


def stratum_of(by: str, version: int, request: dict[str, Any]) -> str:
    if by == "version":
        return f"v{version}"
    value = _argument(call_arguments(request).plain(), by)
    return f"{by}={value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)}"


def _argument(values: dict[str, Any], name: str) -> Any:
    """An argument by name, a dotted path (`level.difficulty`), or a field of an object argument
    (`difficulty` inside a `Map` request's `level`)."""
    value: Any = values
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            break
        value = value[part]
    else:
        return value
    for arg in values.values():
        if isinstance(arg, dict) and name in arg:
            return arg[name]
    return "?"


def _candidates(cur: Cursor, site_id: str) -> list[dict[str, Any]]:
    """Shadow pairs not drawn before: the recorded upstream answer and a local version's, same input."""
    rows = cur.execute(
        """
        SELECT s.call_id, s.version, s.local_output, c.request, c.response
        FROM shadow_results s JOIN calls c ON c.id = s.call_id
        WHERE s.site_id = ? AND s.local_output IS NOT NULL AND c.status BETWEEN 200 AND 299
          AND NOT EXISTS (SELECT 1 FROM review_items r WHERE r.call_id = s.call_id AND r.version = s.version)
        ORDER BY s.ts, s.call_id
        """,
        [site_id],
    ).fetchall()
    out, seen = [], set()
    for call_id, version, local, request, response in rows:
        upstream = _content(response)
        if upstream is None or (call_id, version) in seen:
            continue
        seen.add((call_id, version))
        out.append(
            {
                "call_id": call_id,
                "version": version,
                "local": local,
                "upstream": upstream,
                "request": json.loads(request),
            }
        )
    return out


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional allocation with at least one per stratum (while n allows), largest remainders."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    strata = sorted(sizes, key=lambda s: -sizes[s])
    alloc = {s: 0 for s in strata}
    for s in strata[:n]:
        alloc[s] = 1
    left = n - sum(alloc.values())
    if left > 0:
        quotas = {s: sizes[s] * n / total for s in strata}
        extra = {s: max(0, min(sizes[s] - alloc[s], math.floor(quotas[s]) - alloc[s])) for s in strata}
        for s in strata:
            take = min(extra[s], left)
            alloc[s] += take
            left -= take
        for s in sorted(strata, key=lambda s: -(quotas[s] - math.floor(quotas[s]))):
            while left > 0 and alloc[s] < sizes[s]:
                alloc[s] += 1
                left -= 1
                break
        for s in strata:  # whatever rounding left over goes where pairs remain
            while left > 0 and alloc[s] < sizes[s]:
                alloc[s] += 1
                left -= 1
    return alloc


def sample_sizes(cur: Cursor, site_ref: str) -> dict[str, dict[str, Any]]:
    """Per criterion: judgments needed for a ±HALF_WIDTH 95 % interval on each mean and on the difference."""
    site_id = _site(cur, site_ref)[0]
    rubric = rubric_for(cur, site_id)
    rows = judgment_rows(cur, site_id)
    out = {}
    for c in rubric["criteria"]:
        name = c["name"]
        pairs = [(r["local"][name], r["upstream"][name]) for r in rows if name in r["local"]]
        if len(pairs) >= MIN_JUDGMENTS_FOR_SD:
            sd = max(
                standard_deviation([p[0] for p in pairs]),
                standard_deviation([p[1] for p in pairs]),
                standard_deviation([p[0] - p[1] for p in pairs]),
            )
            source = f"observed over {len(pairs)} judgments"
        else:
            sd, source = ASSUMED_SD, "assumed (fewer than 10 judgments)"
        out[name] = {"sd": round(sd, 3), "sd_source": source, "judgments": _needed(sd), "worst_case": _needed(WORST_SD)}
    return out


def _needed(sd: float) -> int:
    return max(2, math.ceil((Z95 * sd / HALF_WIDTH) ** 2))


def draw_plan(
    cur: Cursor,
    site_ref: str,
    pairs: int,
    *,
    by: str = "version",
    shared: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Draw `pairs` new pairs for review, stratified by `by` ("version" or a call argument's name)."""
    if pairs < 1:
        raise ReviewError("--pairs must be at least 1")
    site_id, site_name, _ = _site(cur, site_ref)
    candidates = _candidates(cur, site_id)
    if not candidates:
        raise ReviewError(f"site {site_name} has no shadow pairs left to review (a local version must shadow it first)")
    strata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cand in candidates:
        strata[stratum_of(by, cand["version"], cand["request"])].append(cand)
    alloc = _allocate({s: len(v) for s, v in strata.items()}, pairs)
    rng = random.Random(seed)  # which pairs: reproducible with --seed
    chosen = [(s, pick) for s in sorted(strata) for pick in rng.sample(strata[s], alloc[s])]
    n_shared = (
        min(len(chosen), max(min(len(chosen), 10), round(0.2 * len(chosen))))
        if shared is None
        else min(shared, len(chosen))
    )
    shared_ids = {id(pick) for _, pick in rng.sample(chosen, n_shared)}
    sides = random.SystemRandom()  # the blind order: never reproducible, never predictable
    plan_id = uuid.uuid4().hex[:12]
    now = _now()
    rows = []
    for stratum, pick in chosen:
        rows.append(
            [
                uuid.uuid4().hex[:16],
                site_id,
                plan_id,
                pick["call_id"],
                pick["version"],
                stratum,
                sides.choice("AB"),
                id(pick) in shared_ids,
                json.dumps(pick["request"]),
                pick["upstream"],
                pick["local"],
                now,
            ]
        )
    cur.executemany(
        "INSERT INTO review_items (id, site_id, plan_id, call_id, version, stratum, local_side, shared, "
        "request, upstream_output, local_output, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return {
        "plan": plan_id,
        "site": site_id,
        "site_name": site_name,
        "by": by,
        "drawn": len(rows),
        "shared": n_shared,
        "strata": [{"stratum": s, "available": len(strata[s]), "drawn": alloc[s]} for s in sorted(strata)],
        "sample_size": sample_sizes(cur, site_id),
    }


# ---- what a reviewer sees ------------------------------------------------------------------


def next_item(cur: Cursor, reviewer: str, site_ref: str | None = None) -> dict[str, Any] | None:
    """The next pair for this reviewer, blind: shared pairs first, then pairs nobody has judged."""
    where, params = "", [reviewer]
    if site_ref:
        where, params = " AND i.site_id = ?", [reviewer, _site(cur, site_ref)[0]]
    row = cur.execute(
        f"""
        SELECT i.id FROM review_items i
        WHERE NOT EXISTS (SELECT 1 FROM review_judgments j WHERE j.item_id = i.id AND j.reviewer = ?)
          AND (i.shared OR NOT EXISTS (SELECT 1 FROM review_judgments j WHERE j.item_id = i.id)){where}
        ORDER BY i.shared DESC, i.created_at, i.id LIMIT 1
        """,
        params,
    ).fetchone()
    if row is None:
        return None
    view = blind_view(cur, row[0])
    done = cur.execute("SELECT count(*) FROM review_judgments WHERE reviewer = ?", [reviewer]).fetchone()[0]
    view["progress"] = {"judged": done}
    return view


def blind_view(cur: Cursor, item_id: str) -> dict[str, Any]:
    """A pair as a reviewer may see it: input summary, sides A and B rendered, the rubric. Never
    the version, the stratum or which side is local."""
    row = cur.execute(
        "SELECT site_id, request, upstream_output, local_output, local_side FROM review_items WHERE id = ?", [item_id]
    ).fetchone()
    if row is None:
        raise ReviewError(f"no review pair {item_id!r}")
    site_id, request_json, upstream, local, local_side = row
    _, site_name, schema_name = _site(cur, site_id)
    request = json.loads(request_json)
    a, b = (local, upstream) if local_side == "A" else (upstream, local)
    return {
        "item": item_id,
        "site": site_name,
        "returns": schema_name or "str",
        "input": input_summary(request),
        "sides": {"A": render_output(a, schema_name), "B": render_output(b, schema_name)},
        "rubric": rubric_for(cur, site_id),
    }


def input_summary(request: dict[str, Any], limit: int = 400) -> dict[str, Any]:
    """The task (the prompt's header line) and the call's arguments, each shortened for a glance."""
    messages = found if isinstance(found := request.get("messages"), list) else []
    index = first_user_index(messages)
    text = first_user_text(messages[index]) if index is not None else ""
    header, _ = split_prompt(text)
    arguments = call_arguments(request)
    if arguments.source == "byllm":
        args = [
            {"name": k, "value": _short(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False), limit)}
            for k, v in arguments.plain().items()
        ]
        return {"task": _short(header.strip(), limit), "arguments": args}
    return {"task": _short(text.strip(), 4 * limit), "arguments": []}


def render_output(text: str, schema_name: str | None) -> dict[str, Any]:
    """An answer for the page: an image for types with a renderer, pretty JSON, else plain text."""
    try:
        value = json.loads(text)
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
    except ValueError:
        return {"kind": "text", "text": text}
    out: dict[str, Any] = {"kind": "json", "text": pretty}
    renderer = response_types.registered(response_types.REVIEW_RENDERERS).get(schema_name or "")
    if renderer and isinstance(value, dict):
        image = _render_image(renderer, value)
        if image:
            out.update(kind="image", image=image)
    return out


def _render_image(reference: str, value: dict[str, Any]) -> str | None:
    from understudy.validators import load_validator  # the same module:function loader

    render: Callable[..., object] = load_validator(reference)  # a renderer, loaded like a validator
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answer.png"
        try:
            render(value, path)
        except Exception:  # noqa: BLE001 - an unreadable answer is shown as its JSON instead
            return None
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- judgments -----------------------------------------------------------------------------


def record_judgment(cur: Cursor, reviewer: str, payload: Any, *, source: str = "page") -> dict[str, Any]:
    """Validate and store one judgment (a reviewer judging a pair again replaces the earlier one)."""
    if not isinstance(payload, dict):
        raise ReviewError(
            'a judgment is {"item", "scores": {criterion: {"A": 1-5, "B": 1-5}}, "preference", "comment"?}'
        )
    item_id = payload.get("item")
    row = cur.execute("SELECT site_id, local_side FROM review_items WHERE id = ?", [item_id]).fetchone()
    if row is None:
        raise ReviewError(f"no review pair {item_id!r}")
    site_id, local_side = row
    scores = payload.get("scores")
    clean: dict[str, dict[str, int]] = {}
    for c in rubric_for(cur, site_id)["criteria"]:
        found = scores.get(c["name"]) if isinstance(scores, dict) else None
        given = found if isinstance(found, dict) else {}
        for side in "AB":
            value = given.get(side)
            if not (isinstance(value, int) and not isinstance(value, bool) and SCALE[0] <= value <= SCALE[1]):
                raise ReviewError(
                    f"score {c['name']} for side {side} must be a whole number from 1 to 5 (got {value!r})"
                )
        clean[c["name"]] = {"A": given["A"], "B": given["B"]}
    preference = payload.get("preference")
    if preference not in PREFERENCES:
        raise ReviewError(f"preference must be A, B or tie (got {preference!r})")
    comment = payload.get("comment") or None
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise ReviewError(f"comment must be text of at most {MAX_COMMENT_CHARS} characters")
    ts = _now()
    cur.execute(
        "INSERT OR REPLACE INTO review_judgments (item_id, site_id, reviewer, ts, scores, preference, local_side, "
        "comment, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [item_id, site_id, reviewer, ts, json.dumps(clean), preference, local_side, comment, source],
    )
    return {"item": item_id, "reviewer": reviewer, "ts": ts.isoformat(), "site": site_id}


# ---- results -------------------------------------------------------------------------------


def results(cur: Cursor, site_ref: str) -> dict[str, Any]:
    site_id, site_name, _ = _site(cur, site_ref)
    rubric = rubric_for(cur, site_id)
    items = cur.execute(
        "SELECT count(*), count(*) FILTER (WHERE shared) FROM review_items WHERE site_id = ?", [site_id]
    ).fetchone()
    versions = [
        v
        for (v,) in cur.execute(
            "SELECT DISTINCT i.version FROM review_judgments j JOIN review_items i "
            "ON i.id = j.item_id WHERE j.site_id = ? ORDER BY 1",
            [site_id],
        ).fetchall()
    ]
    out = {
        "site": site_id,
        "site_name": site_name,
        "pairs": items[0],
        "shared_pairs": items[1],
        **summary(judgment_rows(cur, site_id), rubric),
    }
    out["by_version"] = {f"v{v}": summary(judgment_rows(cur, site_id, v), rubric) for v in versions}
    return out


# ---- offline review sets -------------------------------------------------------------------


def export_set(cur: Cursor, site_ref: str) -> dict[str, Any]:
    """Every pair of the site, blind, with an empty judgments list for an offline reviewer to fill."""
    site_id, site_name, _ = _site(cur, site_ref)
    ids = [
        i
        for (i,) in cur.execute(
            "SELECT id FROM review_items WHERE site_id = ? ORDER BY shared DESC, created_at, id", [site_id]
        ).fetchall()
    ]
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "site": site_id,
        "site_name": site_name,
        "exported_at": _now().isoformat(),
        "rubric": rubric_for(cur, site_id),
        "scale": list(SCALE),
        "instructions": (
            "Score sides A and B of each pair on every criterion from 1 to 5, give a preference "
            "(A, B or tie) and optionally a comment; add one object per pair to `judgments`: "
            '{"item": ..., "scores": {criterion: {"A": n, "B": n}}, "preference": "A", "comment": ""}. '
            "Then: understudy review import FILE --reviewer NAME"
        ),
        "items": [blind_view(cur, i) for i in ids],
        "judgments": [],
    }


def import_set(cur: Cursor, data: Any, reviewer: str | None = None) -> dict[str, Any]:
    """Store an offline reviewer's judgments; every judgment is checked before any is stored."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ReviewError(f'not an exported review set (expected "format": "{EXPORT_FORMAT}")')
    judgments = data.get("judgments")
    if not isinstance(judgments, list):
        raise ReviewError("the review set has no `judgments` list")
    named = []
    for index, j in enumerate(judgments):
        who = reviewer or (j.get("reviewer") if isinstance(j, dict) else None) or data.get("reviewer")
        if not who:
            raise ReviewError(f"judgment {index + 1}: no reviewer (pass --reviewer NAME)")
        named.append((str(who), j))
    sites = set()
    with transaction(cur):
        for index, (who, j) in enumerate(named):
            try:
                sites.add(record_judgment(cur, who, j, source="import")["site"])
            except ReviewError as exc:
                raise ReviewError(f"judgment {index + 1}: {exc}") from None
    return {"imported": len(named), "reviewers": sorted({who for who, _ in named}), "sites": sorted(sites)}


def _now() -> datetime:
    return datetime.now(UTC)
