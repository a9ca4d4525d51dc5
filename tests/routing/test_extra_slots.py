"""The router owns the count of extra upstream calls in flight (drift checks, second answers):
a plan only samples, a call holds a slot while it runs, and the slot comes back on exit
however the call ends. Nothing else takes or gives back a slot, so a path that drops a
sampled call (an answer that failed, a local answer refused) cannot leak one."""

from __future__ import annotations

import pytest

from tests.conftest import open_test_store
from tests.support.routers import router_over


@pytest.fixture
def router(tmp_path):
    store = open_test_store(tmp_path / "understudy.duckdb")
    router = router_over(store, current_site=lambda site_id: None, max_extra_upstream=2)
    yield router
    store.close()


def test_a_slot_is_held_while_the_call_runs_and_given_back_however_it_ends(router):
    with router.extra_upstream_slot() as first, router.extra_upstream_slot() as second:
        assert first and second and router.extra_upstream == 2
        # The control: a third call while two run is refused, holds nothing and gives nothing back.
        with router.extra_upstream_slot() as third:
            assert third is False and router.extra_upstream == 2
        assert router.extra_upstream == 2
    assert router.extra_upstream == 0
    with pytest.raises(RuntimeError):  # a call that fails still gives its slot back
        with router.extra_upstream_slot() as granted:
            assert granted and router.extra_upstream == 1
            raise RuntimeError("upstream broke")
    assert router.extra_upstream == 0


def test_sampling_takes_no_slot_but_honours_the_cap(router):
    # Many sampled plans whose calls never run (the answer failed, or was refused): nothing held.
    assert all(router._sample_extra(1.0) for _ in range(100))
    assert router.extra_upstream == 0
    assert not router._sample_extra(0.0)
    # While the slots are all taken, a call is not sampled at all.
    with router.extra_upstream_slot(), router.extra_upstream_slot():
        assert not any(router._sample_extra(1.0) for _ in range(100))
    assert router._sample_extra(1.0)
