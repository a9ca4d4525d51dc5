"""Bounded cardinality (issue 16, point 8): a client with dynamic prompts cannot grow the site
registry or the /metrics `site` label set without limit."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import query_store, start_proxy
from understudy.proxy.callsite import identify
from understudy.proxy.site_registry import SiteRegistry

CHAT = "/v1/chat/completions"
TYPED = {
    "type": "json_schema",
    "json_schema": {
        "name": "Answer",
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}


def _body(n: int, typed: bool = False) -> dict:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": f"Today is day {n}. Be helpful."},
            {"role": "user", "content": "Summarise the news."},
        ],
    }
    return {**body, "response_format": TYPED} if typed else body


def _observe(registry: SiteRegistry, body: dict) -> str:
    record, _, _ = registry.observe(identify(body))
    return record.id


def test_past_the_cap_new_generic_signatures_share_their_shapes_overflow_site():
    registry = SiteRegistry([], max_generic_sites=5)
    first = [_observe(registry, _body(n)) for n in range(5)]
    assert len(set(first)) == 5  # control: under the cap every signature is a site of its own
    later = {_observe(registry, _body(n)) for n in range(5, 500)}
    typed = {_observe(registry, _body(n, typed=True)) for n in range(500, 600)}
    assert len(later) == 1 and len(typed) == 1 and later != typed  # one overflow site per shape
    assert len(registry.all()) == 7
    assert [_observe(registry, _body(n)) for n in range(5)] == first  # known sites keep their calls
    overflow = registry.get(later.pop())
    assert overflow.name == "overflow:str" and registry.get(typed.pop()).name == "overflow:Answer"


def test_without_a_cap_and_for_byllm_and_tagged_calls_every_signature_is_a_site():
    """Controls: no cap, or calls the cap does not cover (explicit tags), still split by signature."""
    unbounded = SiteRegistry([])
    assert len({_observe(unbounded, _body(n)) for n in range(300)}) == 300
    capped = SiteRegistry([], max_generic_sites=1)
    _observe(capped, _body(0))
    tagged = {capped.observe(identify(_body(n), explicit_tag=f"tag-{n}"))[0].id for n in range(20)}
    assert len(tagged) == 20


def test_the_cap_counts_the_sites_already_stored():
    registry = SiteRegistry([], max_generic_sites=3, generic_sites=3)  # a restart with 3 generic sites stored
    record, row, _ = registry.observe(identify(_body(1)))
    assert record.name == "overflow:str" and row[3] == "overflow"


def _site_labels(metrics: str) -> set[str]:
    return set(re.findall(r'understudy_requests_total\{[^}]*\bsite="([^"]+)"', metrics))


def _requests_total(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r"understudy_requests_total\{[^}]*\} ([0-9.e+]+)", metrics))


def test_thousands_of_system_prompts_stay_within_the_default_bounds(fake_upstream, isolated_data_dir):
    """2,200 distinct system prompts at the shipped defaults (1,000 generic sites, 50 labels)."""
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        with httpx.Client(timeout=30) as client:
            busy = [client.post(proxy.url + CHAT, json=_body(-1)).headers["x-understudy-site"] for _ in range(30)]
            metrics = client.get(proxy.url + "/metrics").text
            assert _site_labels(metrics) == {busy[0]}  # control: below N sites every site has its label

            def send(n: int) -> str:
                response = client.post(proxy.url + CHAT, json=_body(n))
                assert response.status_code == 200
                return response.headers["x-understudy-site"]

            under_cap = [send(n) for n in range(999)]  # with the busy site: 1,000 generic sites
            with ThreadPoolExecutor(8) as pool:
                over_cap = list(pool.map(send, range(1000, 2200)))
            metrics = client.get(proxy.url + "/metrics").text
            sites = client.get(proxy.url + "/healthz").json()["sites"]
    finally:
        proxy.stop()
    assert len(set(under_cap)) == 999 and busy[0] not in under_cap  # control: under the cap, a site each
    assert len(set(over_cap)) == 1 and set(over_cap).isdisjoint(under_cap)  # past it: the shape's overflow site
    assert sites == 1001
    labels = _site_labels(metrics)
    assert len(labels) <= 51 and "other" in labels
    assert busy[0] in labels and over_cap[0] in labels  # the top sites by traffic keep their own label
    assert _requests_total(metrics) == 30 + 999 + 1200  # nothing is lost in `other`
    stored = dict(query_store(isolated_data_dir, "SELECT kind, count(*) FROM sites GROUP BY ALL"))
    assert stored == {"generic": 1000, "overflow": 1}
