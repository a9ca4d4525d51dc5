"""A version's shadowing replayed through the policy, its pairs chance-corrected as recorded and with shared decoys.

The router scores a shadowed call twice: the local answer against the upstream's, and, where the
upstream answered twice, its second answer against its first (the teacher's self-agreement).
Each score is corrected for chance against decoys, recent upstream answers to other requests.
Before 2026-12-07 each score took the decoys current when it ran, seconds apart; now they are
fixed as the call's upstream answer comes back, for both (`Router.fix_decoys`). This replays a version's
recorded shadow samples, in order, through `routing.policy.decide` at the shipped defaults, twice:

- `recorded`: the agreements as the store holds them (each score with its own decoys);
- `shared`: each pair rescored with the decoys the router now gives both: the five most recent
  upstream answers to other requests before the call's own upstream answer, as the store dates
  them (a call's arrival plus its latency).

Only the version's last `--samples` shadow samples are replayed, each mode up to its first
decision (`pairs`: those seen until then), with the reference window (the teacher's
self-agreement) as stored before them and sliding as they come.
It reads the data directory's DuckDB file (stop the proxy first, or copy the file).

    .venv/bin/python benchmarks/pair_decoys.py --data-dir /tmp/curve-ls --site Level --version 3 --samples 200 [--json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import duckdb

from understudy.routing.evidence import agreement_sql
from understudy.routing.policy import PromotionPolicy, SiteState, decide
from understudy.routing.router import recent_decoys, site_scoring
from understudy.routing.scoring import score_pair
from understudy.routing.similarity import cosine_similarity
from understudy.validators import ValidatorRegistry


def answered_at(table: str = "") -> str:
    """SQL for when a call's upstream answer came back, as the store dates it: arrival plus latency."""
    prefix = f"{table}." if table else ""
    return f"{prefix}ts + to_microseconds(CAST(round(coalesce({prefix}latency_ms, 0) * 1000) AS BIGINT))"


def _content(response_json: str | None) -> str | None:
    if response_json is None:
        return None
    return json.loads(response_json)["choices"][0]["message"].get("content")


def _rescored(first: str, answer: str | None, request: dict, scoring, validator, decoys: list[str]) -> float | None:
    """`answer`'s agreement with the upstream's `first` answer, chance-corrected against `decoys`."""
    if answer is None:
        return None
    return score_pair(
        first,
        answer,
        response_format=request.get("response_format"),
        policy=scoring,
        validator=validator,
        similarity=cosine_similarity,  # free text is compared by meaning, as the proxy compares it
        decoys=decoys,
    ).agreement


def replay(con: duckdb.DuckDBPyConnection, site_ref: str, version: int, samples: int) -> dict[str, Any]:
    site = con.execute(
        "SELECT id, name, schema_name, policy FROM sites WHERE id = ? OR name = ? OR name LIKE ? ORDER BY id LIMIT 1",
        [site_ref, site_ref, f"{site_ref}:%"],
    ).fetchone()
    if site is None:
        raise SystemExit(f"no site {site_ref!r} in this store")
    site_id, name, schema_name, policy_json = site
    overrides = json.loads(policy_json) if policy_json else {}
    scoring = site_scoring(schema_name, overrides)
    policy = PromotionPolicy.from_dict(None, overrides.get("promotion"))
    validators = ValidatorRegistry()
    answers = [
        (answered, conversation, text)
        for answered, conversation, response in con.execute(
            f"SELECT {answered_at()}, conversation, response FROM calls WHERE site_id = ? AND served_by = 'upstream' "
            "AND status = 200 ORDER BY 1",
            [site_id],
        ).fetchall()
        if (text := _content(response))
    ]
    times = [ts for ts, _, _ in answers]

    def shared_decoys(answered, conversation: str) -> list[str]:
        pool = ((other, text) for _, other, text in answers[: bisect.bisect_left(times, answered)])
        return recent_decoys(pool, conversation, scoring.decoys)

    first = (
        con.execute(
            "SELECT ts FROM shadow_results WHERE site_id = ? AND version = ? AND coalesce(phase, 'shadow') = 'shadow' "
            "ORDER BY ts DESC LIMIT 1 OFFSET ?",
            [site_id, version, samples - 1],
        ).fetchone()
        or con.execute(
            "SELECT min(ts) FROM shadow_results WHERE site_id = ? AND version = ?", [site_id, version]
        ).fetchone()
    )
    since = first[0]
    rows = con.execute(
        f"""SELECT s.call_id, s.ts, a.ts, s.local_output, s.local_valid, s.upstream_valid, {agreement_sql("local_valid", "s")},
                   c1.conversation, c1.request, c1.response, c2.response, {agreement_sql("second_valid", "a")},
                   {answered_at("c1")}
            FROM shadow_results s JOIN calls c1 ON c1.id = s.call_id
            LEFT JOIN self_agreement a ON a.call_id = s.call_id LEFT JOIN calls c2 ON c2.id = a.second_call_id
            WHERE s.site_id = ? AND s.version = ? AND coalesce(s.phase, 'shadow') = 'shadow' AND s.ts >= ?
            ORDER BY s.ts""",
        [site_id, version, since],
    ).fetchall()
    reference = [
        score
        for (score,) in con.execute(
            f"SELECT {agreement_sql('second_valid', 'a')} FROM self_agreement a WHERE a.site_id = ? AND a.ts < ? ORDER BY a.ts",
            [site_id, since],
        ).fetchall()
        if score is not None
    ][-policy.reference_window :]

    out: dict[str, Any] = {"site": name, "version": version, "samples": len(rows), "reference": len(reference)}
    for mode in ("recorded", "shared"):
        evidence, window, differences, verdict = policy.new_evidence(paired=True), list(reference), [], None
        for i, row in enumerate(rows):
            call_id, _, _, local, local_valid, upstream_valid, local_agreement = row[:7]
            conversation, request_json, first_json, second_json, teacher_agreement, answered = row[7:]
            if mode == "shared":
                request = json.loads(request_json)
                decoys = shared_decoys(answered, conversation)
                validator = validators.for_request(request, overrides.get("validator"))
                first_answer = _content(first_json) or ""
                if local_valid:
                    local_agreement = _rescored(first_answer, local, request, scoring, validator, decoys)
                if teacher_agreement is not None:
                    second = _content(second_json)
                    teacher_agreement = _rescored(first_answer, second, request, scoring, validator, decoys)
            evidence.add(local_agreement, local_valid, upstream_valid)
            if teacher_agreement is not None:
                window = (window + [teacher_agreement])[-policy.reference_window :]
                if local_agreement is not None:
                    evidence.add_pair(call_id, local_agreement, teacher_agreement)
                    differences.append(local_agreement - teacher_agreement)
            decision = decide(SiteState.SHADOW, evidence, policy.new_reference(True).extend(window), policy)
            if decision.verdict is not None:
                verdict = {"at": i + 1, "verdict": decision.verdict.value, "why": decision.reason}
                break
        out[mode] = {
            "pairs": len(differences),
            "mean_difference": statistics.mean(differences) if differences else None,
            "decision": verdict,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="The data directory (its understudy.duckdb).")
    parser.add_argument("--site", required=True, help="Site id, name, or the name's type prefix (Level).")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--samples", type=int, default=200, help="The version's last N shadow samples.")
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
    args = parser.parse_args()
    db = args.data_dir / "understudy.duckdb"
    if not db.exists():
        sys.exit(f"no store at {db}")
    result = replay(duckdb.connect(str(db), read_only=True), args.site, args.version, args.samples)
    if args.json:
        print(json.dumps(result, default=str))
        return
    print(f"{result['site']} v{result['version']}: {result['samples']} samples, reference {result['reference']}")
    for mode in ("recorded", "shared"):
        figures = result[mode]
        mean = figures["mean_difference"]
        decision = figures["decision"]
        print(
            f"  {mode:8} {figures['pairs']} pairs, same-call local - teacher "
            f"{'-' if mean is None else f'{mean:+.3f}'}; "
            + (f"{decision['verdict']} at {decision['at']}: {decision['why']}" if decision else "undecided")
        )


if __name__ == "__main__":
    main()
