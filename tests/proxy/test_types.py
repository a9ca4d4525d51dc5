"""Request validation (proxy/types.py) on decoded bodies, without a server."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from understudy.proxy.types import MAX_DEPTH, validation_error

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{[]}"\\ ', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40,
)


def _deep(depth: int) -> list:
    node: list = []
    for _ in range(depth - 1):
        node = [node]
    return node


@settings(max_examples=300, deadline=None)
@given(extra=_json, depth=st.integers(min_value=0, max_value=MAX_DEPTH + 4))
def test_the_bracket_count_shortcut_decides_as_the_walk_does(extra, depth):
    """Validating with the raw body (which may skip the nesting walk) gives the answer the walk
    gives, for bodies just inside and just past the depth limit and strings full of brackets."""
    payload = {"model": "m", "messages": [{"role": "user", "content": "x", "extra": [extra, _deep(depth)]}]}
    body = json.dumps(payload).encode()
    assert validation_error(json.loads(body), body) == validation_error(json.loads(body))


def test_depth_past_the_limit_is_refused_with_or_without_the_body():
    inside = {"model": "m", "messages": [{"role": "user", "content": "x", "extra": _deep(MAX_DEPTH - 3)}]}
    past = {"model": "m", "messages": [{"role": "user", "content": "x", "extra": _deep(MAX_DEPTH)}]}
    for payload, refused in ((inside, False), (past, True)):
        body = json.dumps(payload).encode()
        for given_body in (body, None):
            problem = validation_error(json.loads(body), given_body)
            assert (problem is not None and "nests deeper" in problem) is refused
