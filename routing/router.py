"""Per-request routing: who answers, whether the other side runs too, and what that teaches.

`Router.plan(site)` decides from the site's state and pin (no I/O):

- pinned `upstream`, or state `learning`: the upstream answers;
- state `shadow`: the upstream answers; on a `shadow_sample_rate` share of calls the active
  local version answers too, off the request path, and the pair is scored;
- state `local` (or pinned `local[@vN]`): the local version answers; on a `drift_sample_rate`
  share the upstream is called too, off the request path, and the pair is scored.

Sites whose requests carry tools are never answered locally (the local models learn typed
and text answers, not tool loops).

`Router.observe_pair` scores one (upstream, local) pair (`routing.scoring`), hands the
`shadow_results` row to the recorder, adds the score to the version's window and asks
`routing.policy.decide` whether the site should move; a move is written through the
registry (with its reason in the audit table) and pushed to the proxy's in-memory view.
Scoring and store writes run in worker threads; the event loop only awaits them.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import anyio

from routing.local_model import LocalAnswer, LocalModels
from routing.policy import PromotionPolicy, SiteState, decide
from routing.registry import apply_decision
from routing.scoring import ScoringPolicy, score_pair, unusable_reason
from routing.validators import ValidatorRegistry, default_registry
from understudy.store import SiteRecord, Store

log = logging.getLogger("understudy.router")

# Per-site scoring defaults by response schema: a map's layout and a level's title are
# creative (many right answers), so they are judged by the validator and their shape, not
# by equality with upstream. Measured on the RPG corpus: two teacher answers to one Level
# request agree 0.75 with `name` compared, 0.87 without; a student cannot beat that.
DEFAULT_SCORING_BY_SCHEMA: dict[str, dict[str, Any]] = {
    "Map": {"creative_paths": ["walls", "small_obstacles", "enemies", "player_pos", "level.name"]},
    "Level": {"creative_paths": ["name"]},
}


def site_scoring(schema_name: str | None, overrides: Mapping[str, Any]) -> ScoringPolicy:
    """A site's scoring: the defaults for its response schema, then the site's own overrides."""
    return ScoringPolicy.from_dict(DEFAULT_SCORING_BY_SCHEMA.get(schema_name or ""), overrides.get("scoring"))


@dataclass(frozen=True)
class Plan:
    answer: str  # upstream | local
    version: int | None = None
    adapter_path: str | None = None
    also_other: bool = False  # run the other side too and score the pair


UPSTREAM_ONLY = Plan("upstream")


@dataclass
class SiteRouting:
    """What the router caches per site: its schema and configuration."""

    schema_name: str | None
    promotion: PromotionPolicy
    scoring: ScoringPolicy


class Router:
    def __init__(self, store: Store, local: LocalModels | None, *, policy_defaults: dict[str, Any] | None = None,
                 current_site: Callable[[str], SiteRecord | None], on_site_change: Callable[[SiteRecord], None],
                 record_shadow: Callable[[tuple], None], validators: ValidatorRegistry | None = None,
                 similarity: Callable[[str, str], float] | None = None, rng: random.Random | None = None,
                 max_background: int = 8):
        self.store = store
        self.local = local
        self.policy_defaults = policy_defaults or {}
        self.current_site = current_site
        self.on_site_change = on_site_change
        self.record_shadow = record_shadow
        self.validators = validators or default_registry()
        self.similarity = similarity
        self.rng = rng or random.Random()
        self.max_background = max_background  # shadow work in flight; beyond it, samples are skipped
        self.background = 0
        self._sites: dict[str, SiteRouting] = {}
        self._adapters: dict[tuple[str, int], str] = {}
        self._scores: dict[tuple[str, int], deque[float]] = {}
        self.fallbacks = 0

    # ---- configuration, loaded at start and refreshed after every registry change ----

    def load(self) -> None:
        for record in self.store.site_records():
            self.refresh(record.id)

    def refresh(self, site_id: str) -> None:
        cur = self.store.cursor()
        row = cur.execute("SELECT schema_name, policy FROM sites WHERE id = ?", [site_id]).fetchone()
        if row is None:
            return
        schema_name, policy_json = row
        overrides = json.loads(policy_json) if policy_json else {}
        promotion = PromotionPolicy.from_dict(self.policy_defaults, overrides.get("promotion"))
        self._sites[site_id] = SiteRouting(schema_name, promotion, site_scoring(schema_name, overrides))
        for version, adapter in cur.execute(
            "SELECT version, adapter_path FROM model_versions WHERE site_id = ? AND adapter_path IS NOT NULL "
            "AND status IN ('ready', 'active', 'retired')", [site_id]
        ).fetchall():
            self._adapters[(site_id, version)] = adapter
        record = self.current_site(site_id)
        if record is not None and record.active_version is not None:
            key = (site_id, record.active_version)
            if key not in self._scores:
                window = self._sites[site_id].promotion.window
                rows = cur.execute(
                    "SELECT score FROM shadow_results WHERE site_id = ? AND version = ? AND comparable "
                    "ORDER BY ts DESC LIMIT ?", [site_id, record.active_version, window]).fetchall()
                self._scores[key] = deque((r[0] for r in reversed(rows)), maxlen=window)

    def scores(self, site_id: str, version: int) -> list[float]:
        return list(self._scores.get((site_id, version), ()))

    # ---- the per-request decision ----

    def plan(self, site: SiteRecord, has_tools: bool) -> Plan:
        if self.local is None or has_tools or site.pinned == "upstream":
            return UPSTREAM_ONLY
        config = self._sites.get(site.id)
        if config is None:
            return UPSTREAM_ONLY
        if site.pinned and site.pinned.startswith("local"):
            version = _pinned_version(site.pinned) or site.active_version
            adapter = self._adapters.get((site.id, version)) if version else None
            if adapter is None:
                return UPSTREAM_ONLY
            return Plan("local", version, adapter, self._sample(config.promotion.drift_sample_rate))
        if site.active_version is None or site.state == SiteState.LEARNING.value:
            return UPSTREAM_ONLY
        adapter = self._adapters.get((site.id, site.active_version))
        if adapter is None:
            return UPSTREAM_ONLY
        rate = config.promotion.sample_rate(SiteState(site.state))
        answer = "local" if site.state == SiteState.LOCAL.value else "upstream"
        return Plan(answer, site.active_version, adapter, self._sample(rate))

    def fallback_plan(self, site: SiteRecord) -> Plan | None:
        """The local version to answer with when the upstream is down, if the site has one."""
        version = _pinned_version(site.pinned or "") or site.active_version
        adapter = self._adapters.get((site.id, version)) if version else None
        return Plan("local", version, adapter) if adapter and self.local is not None else None

    def _sample(self, rate: float) -> bool:
        if self.background >= self.max_background:
            return False  # the local model is behind; skip rather than queue without bound
        return rate > 0 and self.rng.random() < rate

    # ---- answering locally ----

    async def answer(self, request: dict[str, Any], plan: Plan) -> LocalAnswer:
        assert self.local is not None and plan.adapter_path is not None
        return await self.local.complete(request, plan.adapter_path)

    def usable(self, request: dict[str, Any], text: str) -> tuple[bool, str]:
        """May this local answer be returned? (parses, fits its schema, passes its validator)"""
        reason = unusable_reason(text, request.get("response_format"))
        if reason is not None:
            return False, f"local answer unusable: {reason}"
        validator = self.validators.for_response_format(request.get("response_format"))
        if validator is not None:
            passed, detail = validator(text)
            if not passed:
                failed = [c["name"] for c in detail.get("checks", []) if not c.get("passed")]
                return False, f"local answer fails its validator ({', '.join(failed) or 'invalid'})"
        return True, "ok"

    # ---- scoring a pair and what follows from it ----

    async def observe_pair(self, site_id: str, version: int, call_id: str, request: dict[str, Any],
                           upstream_text: str | None, upstream_latency_ms: float | None,
                           local: LocalAnswer | None = None) -> None:
        """Score one pair (running the local side first if it has not run) and act on the result."""
        self.background += 1
        try:
            adapter = self._adapters.get((site_id, version))
            if local is None and adapter is not None and self.local is not None:
                local = await self.local.complete(request, adapter)
            if local is None or upstream_text is None:
                return
            await anyio.to_thread.run_sync(self._score_and_decide, site_id, version, call_id, request,
                                           upstream_text, upstream_latency_ms, local)
        except Exception:  # shadow work must never disturb serving
            log.exception("shadow scoring failed for site %s v%s", site_id, version)
        finally:
            self.background -= 1

    def _score_and_decide(self, site_id: str, version: int, call_id: str, request: dict[str, Any],
                          upstream_text: str, upstream_latency_ms: float | None, local: LocalAnswer) -> None:
        config = self._sites[site_id]
        result = score_pair(upstream_text, local.text, response_format=request.get("response_format"),
                            policy=config.scoring,
                            validator=self.validators.for_response_format(request.get("response_format")),
                            similarity=self.similarity)
        self.record_shadow((call_id, site_id, version, datetime.now(timezone.utc), result.score,
                            json.dumps(result.components, default=str), result.comparable, result.local_valid,
                            local.latency_ms, upstream_latency_ms, local.text))
        if not result.comparable:
            return
        window = self._scores.setdefault((site_id, version), deque(maxlen=config.promotion.window))
        window.append(result.score)
        site = self.current_site(site_id)
        if site is None or site.active_version != version:
            return
        decision = decide(site.state, list(window), config.promotion, site.pinned)
        if decision.new_state.value != site.state:
            updated = apply_decision(self.store, site, decision, actor="policy")
            self.on_site_change(updated)
            log.warning("site %s: %s", site.name, decision.reason)


def _pinned_version(pinned: str) -> int | None:
    if "@v" in pinned:
        try:
            return int(pinned.rsplit("@v", 1)[1])
        except ValueError:
            return None
    return None

