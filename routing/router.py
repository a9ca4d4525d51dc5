"""Per-request routing: who answers, what else runs beside it, and what that teaches.

`Router.plan(site)` decides from the site's state and pin (no I/O):

- pinned `upstream`, or state `learning`: the upstream answers;
- state `shadow`: the upstream answers; on a `shadow_sample_rate` share of calls the active
  local version answers too, off the request path, and the pair is scored;
- state `local` (or pinned `local[@vN]`): the local version answers; on a `drift_sample_rate`
  share the upstream is called too (a drift check, recorded as a call), and the pair is scored;
- in `shadow`, on a `self_agreement_rate` share of calls the upstream is asked a second time
  (recorded as a call) and its two answers are scored against each other: the teacher's
  self-agreement, the reference a version is judged against (`routing.policy`). It is kept per
  site, across versions. The share is a budget on paid upstreams; a route that charges nothing
  (price 0: the offline teacher, a model server of one's own) is asked on every shadowed call,
  so every shadow sample is paired with the teacher's own agreement on that request (the
  policy's paired test). A paid upstream's rate drops to a tenth once the site's reference
  window is full. 0 disables it.

Extra upstream calls (drift checks, second answers) are bounded: at most
`max_extra_upstream` in flight; beyond that a sample is skipped. The router owns that count: a
plan only says a call was sampled, and the call holds a slot while it runs
(`Router.extra_upstream_slot`, the one place a slot is taken and given back), so no path that
drops a sampled call (a failed answer, a local answer refused) has a slot to release. Sites whose requests carry
tools are never answered locally (the local models learn typed and text answers, not tool loops).

Every judgement uses the site's validator bound to the request's arguments
(`understudy.validators`) and, for the chance correction, decoys: recent upstream answers to
*other* requests of the site (`remember_answer`, fed by the recorder). Scoring, store writes
and decisions run in worker threads; the event loop only awaits them. A decision is written
through the registry (with its reason in the audit table) and pushed to the proxy's view.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from understudy import response_types
from understudy.inference.checked_sampling import AnswerChecks, SamplingPolicy
from understudy.inference.local_model import LocalAnswer, LocalModels, Variant, checks_for
from understudy.inference.local_queue import Skipped
from understudy.inference.site_prompt import SitePrompt
from understudy.routing.cascade import Calibration, calibrate
from understudy.routing.evidence import (
    PAIRED_REFERENCE,
    SERVING_STATES,
    bar,
    calibration_samples,
    evidence_of,
    evidence_pairs,
    evidence_samples,
    paired_reference,
    partial_samples,
    reference_scores,
    teacher_level,
)
from understudy.routing.partial import PartialEvidence, ShadowSample, partial_evidence
from understudy.routing.policy import Evidence, PromotionPolicy, SiteState, decide, new_review_evidence
from understudy.routing.registry import USABLE_SQL, StaleDecision, apply_decision, partial_threshold
from understudy.routing.review_evidence import review_differences
from understudy.routing.scoring import AgreementScore, ScoringPolicy, score_pair
from understudy.routing.sequential import ConfidenceSequence
from understudy.rows import SelfAgreementRow, ShadowRow
from understudy.store import SiteRecord, Store
from understudy.validators import BoundValidator, ValidatorRegistry, local_verdict

log = logging.getLogger("understudy.router")

DECOY_POOL = 64  # recent upstream answers kept per site for the chance correction


def recent_decoys(pool: Iterable[tuple[str, str]], conversation: str, k: int) -> list[str]:
    """The k most recent distinct answers in `pool` ((conversation, text), oldest first) to other
    conversations than `conversation`: the decoys of a pair's chance correction."""
    out: list[str] = []
    for other, text in reversed(list(pool)):
        if other != conversation and text not in out:
            out.append(text)
            if len(out) == k:
                break
    return out


def site_scoring(schema_name: str | None, overrides: Mapping[str, Any]) -> ScoringPolicy:
    """A site's scoring: the defaults for its response schema, then the site's own overrides."""
    # the defaults a package registered for the response type (the showcase's Map and Level)
    defaults = response_types.registered_for(response_types.SCORING_DEFAULTS, schema_name)
    return ScoringPolicy.from_dict(defaults, overrides.get("scoring"))


@dataclass(frozen=True)
class Plan:
    answer: str  # upstream | local
    version: int | None = None
    variant: Variant | None = None  # the version's adapter (None inside: the bare base, a control) and prompt
    also_other: bool = False  # run the other side too and score the pair (shadow, or a drift check)
    second_opinion: bool = False  # ask the upstream again: a self-agreement sample
    phase: str = "shadow"  # shadow | drift: which evidence a scored pair belongs to
    refused_phase: str | None = None  # partial: a local answer not served is scored against the upstream's as this


UPSTREAM_ONLY = Plan("upstream")


@dataclass
class SiteRouting:
    """What the router keeps per site: its configuration, evidence and references."""

    schema_name: str | None
    promotion: PromotionPolicy
    scoring: ScoringPolicy
    validator: str | None  # the site policy's validator reference (None: by response type)
    reference: deque[float]  # the teacher's self-agreement scores, most recent last
    decoys: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=DECOY_POOL))
    evidence: Evidence | None = None  # the active version's, in its current state
    drift: deque | None = None  # local: the last `window` (score, local_valid, upstream_valid)
    calibration: Calibration | None = None  # the active version's cascade
    evidence_key: tuple[int | None, str] | None = None  # (version, state) the evidence belongs to
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)  # checked sampling (tries, temperature, cap)
    shadow_samples: list[ShadowSample] | None = None  # shadow: the active version's, for partial promotion
    paired_reference: dict[str, float] = field(default_factory=dict)  # self-agreement by call id, oldest first
    # The decoys a call's first score used, by call id, oldest first: its other score uses the same (`decoys_for`).
    call_decoys: dict[str, list[str]] = field(default_factory=dict)
    partial_threshold: float | None = None  # partial: serve local answers at or above this confidence
    review: list[float] = field(default_factory=list)  # the active version's human review (reporting.reviews)

    def reference_cs(self, paired: bool = False) -> ConfidenceSequence:
        return self.promotion.new_reference(paired).extend(list(self.reference))

    def review_cs(self) -> ConfidenceSequence:
        return new_review_evidence(self.promotion).extend(self.review)


class Router:
    def __init__(
        self,
        store: Store,
        local: LocalModels | None,
        *,
        validators: ValidatorRegistry,
        policy_defaults: dict[str, Any] | None = None,
        current_site: Callable[[str], SiteRecord | None],
        on_site_change: Callable[[SiteRecord], None],
        record_shadow: Callable[[ShadowRow], None],
        record_self_agreement: Callable[[SelfAgreementRow], None],
        similarity: Callable[[str, str], float] | None = None,
        rng: random.Random | None = None,
        max_extra_upstream: int = 2,
        write: Callable[[Callable[[Store], Any]], Any] | None = None,
        sampling_defaults: dict[str, Any] | None = None,
    ):
        self.store = store
        # How a decision reaches the store: the proxy's single writer (Recorder.run); directly
        # when the router runs alone (tests, offline scoring).
        self.write = write or (lambda job: job(store))
        self.local = local
        self.validators = validators
        self.policy_defaults = policy_defaults or {}
        self.sampling_defaults = sampling_defaults or {}
        self.current_site = current_site
        self.on_site_change = on_site_change
        self.record_shadow = record_shadow
        self.record_self_agreement = record_self_agreement
        self.similarity = similarity
        self.rng = rng or random.Random()
        self.background = 0  # shadow comparisons in flight (waiting for the model or being scored)
        self.max_extra_upstream = max_extra_upstream
        self.extra_upstream = 0  # drift checks and second answers in flight
        self._sites: dict[str, SiteRouting] = {}
        self._adapters: dict[tuple[str, int], Variant] = {}  # verified versions
        self._lock = threading.RLock()  # evidence and decisions are touched from worker threads
        self.fallbacks = 0

    # ---- configuration, loaded at start and refreshed after every registry change ----

    def load(self) -> None:
        for record in self.store.site_records():
            self.refresh(record.id)

    def add_site(self, site_id: str, schema_name: str | None) -> None:
        """A site first seen now: default configuration, in memory only (no store read)."""
        with self._lock:
            if site_id not in self._sites:
                promotion = PromotionPolicy.from_dict(self.policy_defaults)
                self._sites[site_id] = SiteRouting(
                    schema_name,
                    promotion,
                    site_scoring(schema_name, {}),
                    None,
                    deque(maxlen=promotion.reference_window),
                    sampling=SamplingPolicy.from_dict(self.sampling_defaults),
                )

    def refresh(self, site_id: str, reload_evidence: bool = False) -> None:
        """Reload a site's configuration; its evidence too when the version, state or policy
        changed, or when `reload_evidence` (other processes sharing the store added to it)."""
        cur = self.store.cursor()
        row = cur.execute("SELECT schema_name, policy FROM sites WHERE id = ?", [site_id]).fetchone()
        if row is None:
            return
        schema_name, policy_json = row
        overrides = json.loads(policy_json) if policy_json else {}
        promotion = PromotionPolicy.from_dict(self.policy_defaults, overrides.get("promotion"))
        reference = deque(reference_scores(cur, site_id, promotion.reference_window), maxlen=promotion.reference_window)
        decoys = deque(
            reversed(
                cur.execute(
                    """SELECT conversation, text FROM (
                   SELECT conversation, ts, json_extract_string(response, '$.choices[0].message.content') AS text
                   FROM calls WHERE site_id = ? AND served_by = 'upstream' AND status = 200) AS answers
               WHERE text IS NOT NULL AND text <> '' ORDER BY ts DESC LIMIT ?""",
                    [site_id, DECOY_POOL],
                ).fetchall()
            ),
            maxlen=DECOY_POOL,
        )
        config = SiteRouting(
            schema_name,
            promotion,
            site_scoring(schema_name, overrides),
            overrides.get("validator"),
            reference,
            decoys,
            sampling=SamplingPolicy.from_dict(self.sampling_defaults, overrides.get("sampling")),
            paired_reference=paired_reference(cur, site_id, PAIRED_REFERENCE),
            partial_threshold=partial_threshold(self.store, site_id),
        )
        for version, adapter, version_config in cur.execute(
            "SELECT version, adapter_path, config FROM model_versions WHERE site_id = ? "
            "AND (adapter_path IS NOT NULL OR control = 'base') AND status IN " + USABLE_SQL,
            [site_id],
        ).fetchall():
            prompt = SitePrompt.from_dict((json.loads(version_config) if version_config else {}).get("prompt"))
            variant = self._adapters[(site_id, version)] = Variant(
                adapter, prompt if adapter is not None else SitePrompt()
            )
            if self.local is not None:
                try:
                    self.local.prepare(variant)  # a model server's copy (inference.model_server)
                except OSError:
                    log.exception("could not publish the adapter of %s v%s", site_id, version)
        with self._lock:
            previous = self._sites.get(site_id)
            self._sites[site_id] = config
            record = self.current_site(site_id)
            if record is None:
                return
            if (
                previous is not None
                and previous.promotion == promotion
                and not reload_evidence
                and previous.evidence_key == (record.active_version, record.state)
            ):
                # Same version, state and policy: keep what is in memory (it includes samples the
                # recorder has not committed yet).
                config.evidence_key, config.evidence = previous.evidence_key, previous.evidence
                config.drift, config.calibration = previous.drift, previous.calibration
                config.shadow_samples, config.paired_reference = previous.shadow_samples, previous.paired_reference
                config.review = previous.review
            else:
                self._load_evidence(config, record)

    def _load_evidence(self, config: SiteRouting, site: SiteRecord) -> None:
        """The active version's evidence in its current state, from the store (since the state began)."""
        config.evidence_key = (site.active_version, site.state)
        config.evidence, config.drift, config.calibration, config.shadow_samples = None, None, None, None
        if site.active_version is None or site.state == SiteState.LEARNING.value:
            return
        cur = self.store.cursor()
        samples = evidence_samples(cur, site.id, site.active_version, site.state, config.promotion.window)
        if site.state in SERVING_STATES:
            config.drift = deque(samples, maxlen=config.promotion.window)
        else:
            config.evidence = evidence_of(samples, config.promotion, evidence_pairs(cur, site.id, site.active_version))
            config.shadow_samples = partial_samples(cur, site.id, site.active_version)
        config.calibration = calibrate(
            calibration_samples(cur, site.id, site.active_version),
            bar(list(config.reference), config.promotion),
            config.promotion.min_samples,
        )
        config.review = review_differences(cur, site.id, site.active_version)

    def review_changed(self, site_id: str) -> None:
        """Judgments of the site were recorded: reload its active version's review and decide again
        (on a creative site the review is half the decision)."""
        site = self.current_site(site_id)
        with self._lock:
            config = self._sites.get(site_id)
            if config is None or site is None or site.active_version is None or site.state == SiteState.LEARNING.value:
                return
            self._current_evidence(config, site)
            config.review = review_differences(self.store.cursor(), site.id, site.active_version)
            self._decide(config, site)

    def routing_states(self) -> list[tuple[str, str, float | None]]:
        """(site id, state, partial threshold) of every site with a version (for /metrics)."""
        out = []
        for site_id, config in list(self._sites.items()):
            site = self.current_site(site_id)
            if site is not None and site.active_version is not None:
                threshold = config.partial_threshold if site.state == SiteState.PARTIAL.value else None
                out.append((site_id, site.state, threshold))
        return out

    def config(self, site_id: str) -> SiteRouting | None:
        return self._sites.get(site_id)

    # ---- the per-request decision ----

    def plan(self, site: SiteRecord, has_tools: bool, free_upstream: bool = False) -> Plan:
        """Who answers this call and what runs beside it. `free_upstream`: the route charges nothing,
        so the teacher's self-agreement is sampled on every call, not on a budgeted share."""
        config = self._sites.get(site.id)
        if has_tools or config is None:
            return UPSTREAM_ONLY
        if self.local is not None and _pinned_local(site):
            version = _pinned_version(site.pinned or "") or site.active_version
            if version is None or (site.id, version) not in self._adapters:
                return UPSTREAM_ONLY
            return Plan(
                "local",
                version,
                self._adapters[(site.id, version)],
                self._sample_extra(config.promotion.drift_sample_rate),
                phase="drift",
            )
        version = site.active_version
        variant = (
            self._adapters.get((site.id, version))
            if version is not None and self.local is not None and site.pinned != "upstream"
            else None
        )
        if variant is None:
            return UPSTREAM_ONLY
        if site.state == SiteState.LOCAL.value:
            return Plan(
                "local", version, variant, self._sample_extra(config.promotion.drift_sample_rate), phase="drift"
            )
        if site.state == SiteState.PARTIAL.value:
            # Every call is answered locally first (its confidence decides); one below the threshold
            # goes to the upstream and the pair is a shadow sample of the rest of the site.
            return Plan(
                "local",
                version,
                variant,
                self._sample_extra(config.promotion.drift_sample_rate),
                phase="drift",
                refused_phase="shadow",
            )
        if site.state == SiteState.SHADOW.value:
            return Plan(
                "upstream",
                version,
                variant,
                self._sample_shadow(config.promotion.shadow_sample_rate),
                self._sample_second_opinion(config, free_upstream),
                phase="shadow",
            )
        return UPSTREAM_ONLY

    def fallback_plan(self, site: SiteRecord) -> Plan | None:
        """The local version to answer with when the upstream is down, if the site has one."""
        version = _pinned_version(site.pinned or "") or site.active_version
        if version is None or self.local is None or (site.id, version) not in self._adapters:
            return None
        return Plan("local", version, self._adapters[(site.id, version)])

    def _sample_shadow(self, rate: float) -> bool:
        # Not skipped when the model is busy: shadow work waits in a bounded, fair pool
        # (inference.local_queue) behind served answers.
        return rate > 0 and self.rng.random() < rate

    def _sample_extra(self, rate: float) -> bool:
        """Is this call sampled for an extra upstream call? (Its slot is taken when it runs.)"""
        with self._lock:
            return rate > 0 and self.extra_upstream < self.max_extra_upstream and self.rng.random() < rate

    def _sample_second_opinion(self, config: SiteRouting, free_upstream: bool) -> bool:
        rate = config.promotion.self_agreement_rate
        if rate > 0 and free_upstream:
            # A second answer costs nothing (the budget is for paid upstreams), and on every
            # shadowed call it pairs the version's agreement with the teacher's on the same
            # request: the paired test (routing.policy).
            rate = 1.0
        elif len(config.reference) >= config.promotion.reference_window:
            rate /= 10  # a paid upstream's reference is full: refresh it slowly
        return self._sample_extra(rate)

    @contextmanager
    def extra_upstream_slot(self) -> Iterator[bool]:
        """Hold one of the `max_extra_upstream` slots for an upstream call the proxy makes on its
        own (a drift check, a second answer): yields False, holding nothing, when all are taken
        (the sample is skipped). The slot is given back on exit however the call ends."""
        with self._lock:
            granted = self.extra_upstream < self.max_extra_upstream
            if granted:
                self.extra_upstream += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self.extra_upstream -= 1

    # ---- answering locally ----

    async def answer(
        self, site_id: str, request: dict[str, Any], plan: Plan, *, background: bool = False
    ) -> LocalAnswer:
        """The local answer to `request`, served or shadowed alike: decoded under the response schema
        tightened for this request and drawn again while it fails the site's checks
        (inference.checked_sampling); `background` work may be `Skipped`."""
        assert self.local is not None and plan.variant is not None
        return await self.local.complete(
            request, plan.variant, background=background, checks=self.answer_checks(site_id, request)
        )

    def answer_checks(self, site_id: str, request: Mapping[str, Any]) -> AnswerChecks:
        """What a local answer to `request` must satisfy: the response schema tightened by the site's
        validator for this request's arguments, the serving gate, the site's sampling settings and
        its recent upstream answers (the token cap's measure)."""
        config = self._sites.get(site_id)
        return checks_for(
            dict(request),
            self.validator_for(site_id, request),
            config.sampling if config is not None else SamplingPolicy.from_dict(self.sampling_defaults),
            tuple(text for _, text in config.decoys) if config is not None else (),
            site_id,
        )

    def validator_for(self, site_id: str, request: Mapping[str, Any]) -> BoundValidator | None:
        config = self._sites.get(site_id)
        return self.validators.for_request(request, config.validator if config else None)

    def usable(
        self, site: SiteRecord, request: dict[str, Any], answer: LocalAnswer, upstream_down: bool = False
    ) -> tuple[bool, str]:
        """May this local answer be returned? (parses, fits its schema, passes its validator, confident enough)

        `upstream_down`: the upstream failed this call; a partial site then serves any valid answer,
        as a shadow site does, rather than an error."""
        if answer.passed is None:  # not checked where it was drawn
            ok, why = local_verdict(answer.text, request.get("response_format"), self.validator_for(site.id, request))
        else:
            ok, why = answer.passed, answer.why
        if not ok:
            tries = f" after {answer.tries} tries" if answer.tries > 1 else ""
            return False, f"local answer {why}{tries}"
        config = self._sites.get(site.id)
        if site.state == SiteState.PARTIAL.value and not upstream_down and not _pinned_local(site):
            threshold = config.partial_threshold if config is not None else None
            if threshold is None or answer.confidence is None or answer.confidence < threshold:
                shown = "no confidence" if answer.confidence is None else f"{answer.confidence:.3f}"
                return (
                    False,
                    f"local answer below the site's partial threshold ({shown} < "
                    f"{'none' if threshold is None else f'{threshold:.3f}'}, partial)",
                )
            return True, "ok"
        calibration = config.calibration if config is not None and config.promotion.cascade else None
        if (
            site.state == SiteState.LOCAL.value
            and calibration is not None
            and calibration.threshold is not None
            and answer.confidence is not None
            and answer.confidence < calibration.threshold
        ):
            return (
                False,
                f"local answer below the site's confidence threshold ({answer.confidence:.3f} < "
                f"{calibration.threshold:.3f}, cascade)",
            )
        return True, "ok"

    # ---- decoys: upstream answers to other requests, for the chance correction ----

    def remember_answer(self, site_id: str, conversation: str, text: str) -> None:
        config = self._sites.get(site_id)
        if config is not None:
            config.decoys.append((conversation, text))

    def decoys_for(self, site_id: str, conversation: str, k: int, call_id: str | None = None) -> list[str]:
        """The k most recent upstream answers of the site to other requests (distinct texts).

        With `call_id`, the same decoys for both scores of one call: the local answer's and the
        teacher's second answer's, each against the call's upstream answer. They are scored seconds
        apart (a local answer takes seconds, a second upstream answer may be back first), and the
        pool moves in between: in the RPG curve four games run in step, so the later score met its
        sibling games' answers to the same stage, more alike, and `Level`'s same-call difference
        came out -0.056 over 185 pairs where the same decoys give +0.006 (docs/routing.md). Paired,
        the chance correction must cancel, not add noise and a bias of its own. The proxy fixes
        them as the call's upstream answer comes back (`fix_decoys`); otherwise the first score does."""
        config = self._sites.get(site_id)
        if config is not None and call_id is not None:
            with self._lock:
                kept = config.call_decoys.get(call_id)
                if kept is None:
                    kept = config.call_decoys[call_id] = recent_decoys(config.decoys, conversation, k)
                    while len(config.call_decoys) > PAIRED_REFERENCE:
                        del config.call_decoys[next(iter(config.call_decoys))]
                return list(kept)
        return recent_decoys(config.decoys if config else (), conversation, k)

    def fix_decoys(self, site_id: str, conversation: str, call_id: str) -> None:
        """Fix the call's decoys now, as its upstream answer comes back, for every score it will get.

        A call with no second answer (a paid upstream's usual case) has one score, the local
        answer's, taken seconds later; the teacher's self-agreement, the unpaired test's reference,
        is scored on other calls after a round trip. Fixed at each call's own upstream answer, the
        local and the reference scores meet the pool at the same point of their calls, so like
        requests arriving in runs (games in step, a batch job) tilt neither side."""
        config = self._sites.get(site_id)
        if config is not None:
            self.decoys_for(site_id, conversation, config.scoring.decoys, call_id)

    def score(
        self,
        site_id: str,
        request: dict[str, Any],
        conversation: str,
        upstream_text: str,
        local_text: str,
        call_id: str | None = None,
    ) -> AgreementScore:
        """One pair scored exactly as shadow mode scores it (also `understudy score`). `call_id`: the
        call's other score (local answer, or the teacher's second) uses the same decoys."""
        config = self._sites.get(site_id)
        scoring = config.scoring if config else ScoringPolicy()
        return score_pair(
            upstream_text,
            local_text,
            response_format=request.get("response_format"),
            policy=scoring,
            validator=self.validator_for(site_id, request),
            similarity=self.similarity,
            decoys=self.decoys_for(site_id, conversation, scoring.decoys, call_id),
        )

    # ---- scoring a pair and what follows from it ----

    async def observe_pair(
        self,
        site_id: str,
        plan: Plan,
        call_id: str,
        conversation: str,
        request: dict[str, Any],
        upstream_text: str | None,
        upstream_latency_ms: float | None,
        local: LocalAnswer | None = None,
    ) -> None:
        """Score one pair (running the local side first if it has not run) and act on the result."""
        self.background += 1
        try:
            self.fix_decoys(site_id, conversation, call_id)  # before the local answer's seconds
            if local is None and self.local is not None and plan.variant is not None:
                try:
                    local = await self.answer(site_id, request, plan, background=True)
                except Skipped:
                    return  # the pool kept a fair sample without this one
            if local is None or upstream_text is None:
                return
            await anyio.to_thread.run_sync(
                self._score_and_decide,
                site_id,
                plan,
                call_id,
                conversation,
                request,
                upstream_text,
                upstream_latency_ms,
                local,
            )
        except Exception:  # shadow work must never disturb serving
            log.exception("shadow scoring failed for site %s v%s", site_id, plan.version)
        finally:
            self.background -= 1

    def _score_and_decide(
        self,
        site_id: str,
        plan: Plan,
        call_id: str,
        conversation: str,
        request: dict[str, Any],
        upstream_text: str,
        upstream_latency_ms: float | None,
        local: LocalAnswer,
    ) -> None:
        result = self.score(site_id, request, conversation, upstream_text, local.text, call_id)
        sample = ShadowSample(call_id, local.confidence, result.agreement, result.local_valid, result.upstream_valid)
        self.record_shadow(
            ShadowRow(
                call_id=call_id,
                site_id=site_id,
                version=plan.version,
                ts=_now(),
                score=result.score,
                components=json.dumps(result.components, default=str),
                comparable=result.comparable,
                local_valid=result.local_valid,
                local_latency_ms=local.latency_ms,
                upstream_latency_ms=upstream_latency_ms,
                local_output=local.text,
                upstream_valid=result.upstream_valid,
                phase=plan.phase,
                local_confidence=local.confidence,
                local_tries=local.tries,
            )
        )
        with self._lock:
            config, site = self._sites.get(site_id), self.current_site(site_id)
            if config is None or site is None or site.active_version != plan.version:
                return
            if plan.phase == "drift":
                current = _drift_checked(site)
            else:
                current = site.state in (SiteState.SHADOW.value, SiteState.PARTIAL.value)
            if not current:
                return  # the site moved on since this sample was planned
            if site.state == SiteState.PARTIAL.value and plan.phase == "shadow":
                return  # the rest of a partial site: recorded (reports show it), not judged
            self._current_evidence(config, site)
            if plan.phase == "drift":
                assert config.drift is not None  # made by _current_evidence for a served version
                config.drift.append((result.agreement, result.local_valid, result.upstream_valid))
            else:
                assert config.evidence is not None and config.shadow_samples is not None  # likewise in shadow
                config.evidence.add(result.agreement, result.local_valid, result.upstream_valid)
                config.shadow_samples.append(sample)
                teacher = config.paired_reference.get(call_id)
                if result.agreement is not None and teacher is not None:
                    config.evidence.add_pair(call_id, result.agreement, teacher)
            self._decide(config, site)

    async def observe_second_opinion(
        self,
        site_id: str,
        call_id: str,
        second_call_id: str,
        conversation: str,
        request: dict[str, Any],
        first_text: str | None,
        second_text: str | None,
    ) -> None:
        """Score the upstream's second answer against its first: one sample of the teacher's self-agreement."""
        if first_text is None or second_text is None:
            return
        try:
            await anyio.to_thread.run_sync(
                self._reference_sample, site_id, call_id, second_call_id, conversation, request, first_text, second_text
            )
        except Exception:
            log.exception("self-agreement scoring failed for site %s", site_id)

    def _reference_sample(
        self,
        site_id: str,
        call_id: str,
        second_call_id: str,
        conversation: str,
        request: dict[str, Any],
        first_text: str,
        second_text: str,
    ) -> None:
        result = self.score(site_id, request, conversation, first_text, second_text, call_id)
        self.record_self_agreement(
            SelfAgreementRow(
                call_id=call_id,
                second_call_id=second_call_id,
                site_id=site_id,
                ts=_now(),
                score=result.score,
                components=json.dumps(result.components, default=str),
                comparable=result.comparable,
                first_valid=result.upstream_valid,
                second_valid=result.local_valid,
            )
        )
        if result.agreement is None:
            return  # an invalid answer, or nothing to compare: not a sample of agreement
        with self._lock:
            config, site = self._sites.get(site_id), self.current_site(site_id)
            if config is None:
                return
            config.reference.append(result.agreement)
            config.paired_reference[call_id] = result.agreement
            while len(config.paired_reference) > PAIRED_REFERENCE:
                del config.paired_reference[next(iter(config.paired_reference))]
            if site is not None and site.active_version is not None and site.state != SiteState.LEARNING.value:
                self._current_evidence(config, site)
                if site.state == SiteState.SHADOW.value:
                    self._pair_with_shadow_sample(config, call_id, result.agreement)
                self._decide(config, site)

    @staticmethod
    def _pair_with_shadow_sample(config: SiteRouting, call_id: str, teacher: float) -> None:
        """The teacher's second answer to a call the version has already been scored on: a pair."""
        assert config.evidence is not None and config.shadow_samples is not None  # made by _current_evidence
        for sample in reversed(config.shadow_samples):  # the call's shadow sample is a recent one
            if sample.call_id == call_id:
                if sample.agreement is not None:
                    config.evidence.add_pair(call_id, sample.agreement, teacher)
                return

    def _current_evidence(self, config: SiteRouting, site: SiteRecord) -> None:
        if config.evidence_key != (site.active_version, site.state):
            self._load_evidence(config, site)
        if _drift_checked(site) and config.drift is None:
            config.drift = deque(maxlen=config.promotion.window)
        if site.state == SiteState.SHADOW.value and config.evidence is None:
            config.evidence = config.promotion.new_evidence(paired=True)
        if site.state == SiteState.SHADOW.value and config.shadow_samples is None:
            config.shadow_samples = []

    def partial_evidence(self, config: SiteRouting) -> PartialEvidence | None:
        """The confident subset's evidence for the version in shadow (None: partial promotion is off)."""
        if not config.promotion.partial or config.shadow_samples is None:
            return None
        return partial_evidence(
            config.shadow_samples, config.paired_reference, teacher_level(list(config.reference)), config.promotion
        )

    def _decide(self, config: SiteRouting, site: SiteRecord) -> None:
        partial = None
        if site.state in SERVING_STATES:
            evidence = evidence_of(config.drift or (), config.promotion)
        else:
            evidence = config.evidence
            partial = self.partial_evidence(config)
        decision = decide(
            site.state,
            evidence,
            config.reference_cs(paired=evidence is not None and evidence.paired is not None),
            config.promotion,
            site.pinned,
            partial=partial,
            threshold=config.partial_threshold,
            review=config.review_cs(),
        )
        if decision.new_state.value == site.state:
            return
        try:
            # compare-and-set on the record the decision was computed from: an operator's pin,
            # rollback or promotion written meanwhile wins, and this decision is dropped
            updated = self.write(lambda store: apply_decision(store, site, decision, actor="policy", expected=site))
        except StaleDecision as stale:
            log.warning("site %s changed since the decision (%s); %r dropped", site.name, stale, decision.reason)
            config.partial_threshold = partial_threshold(self.store, site.id)
            self.on_site_change(stale.current)
            self._load_evidence(config, stale.current)
            return
        config.partial_threshold = decision.threshold
        self.on_site_change(updated)
        self._load_evidence(config, updated)
        log.warning("site %s: %s", site.name, decision.reason)


def _pinned_local(site: SiteRecord) -> bool:
    """Pinned `local` or `local@vN`: served by a local version whatever its state."""
    return (site.pinned or "").startswith("local")


def _drift_checked(site: SiteRecord) -> bool:
    """A version serves the site (local, partial, or pinned local in any state): its answers are
    judged by drift checks."""
    return site.state in SERVING_STATES or _pinned_local(site)


def _pinned_version(pinned: str) -> int | None:
    if "@v" in pinned:
        try:
            return int(pinned.rsplit("@v", 1)[1])
        except ValueError:
            return None
    return None


def _now() -> datetime:
    return datetime.now(UTC)
