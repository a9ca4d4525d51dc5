"""The shuffled control's training set: each prompt paired with an answer that does not depend on it.

The workload here is recorded as a showcase run records it: games played in step (so requests
for the same stage arrive together), and a free teacher asked twice on a shadowed call (so its
second answer to a request lands right after the first).
"""

from __future__ import annotations

import json

import pytest

from understudy.training.jobs import NotEnoughData, answers_to_other_requests

GAMES, STAGES = 4, 10


def lockstep_examples() -> list[dict]:
    """Examples in time order: stage by stage, each game's request answered twice; the answer
    depends on the stage (what the request fixes), the game and the attempt."""
    examples = []
    for stage in range(STAGES):
        for game in range(GAMES):
            messages = [{"role": "user", "content": f"game {game}: the level after stage {stage}"}]
            for attempt in range(2):  # the teacher's answer, then its self-check answer
                answer = {"difficulty": stage, "walls": 10 * stage + 2 * game + attempt}
                examples.append({"messages": messages, "completion": json.dumps(answer)})
    return examples


def stage_of_request(example: dict) -> int:
    return int(example["messages"][0]["content"].rsplit(" ", 1)[1])


def stage_of_answer(example: dict) -> int:
    return json.loads(example["completion"])["difficulty"]


def test_no_prompt_is_trained_on_an_answer_to_its_own_request_or_its_stage():
    examples = lockstep_examples()
    given = {}
    for example in examples:
        given.setdefault(example["messages"][0]["content"], set()).add(example["completion"])

    shuffled = answers_to_other_requests(examples)

    assert [e["messages"] for e in shuffled] == [e["messages"] for e in examples]  # every prompt kept
    assert not [e for e in shuffled if e["completion"] in given[e["messages"][0]["content"]]]
    # Answers come from across the site, not from the neighbouring requests of the same stage:
    # chance is 1 in STAGES. (A rotation by one in time order, the old shuffle, gave 40 of these 80
    # prompts an answer to their own request and 70 one of their own stage.)
    same_stage = sum(stage_of_request(e) == stage_of_answer(e) for e in shuffled) / len(shuffled)
    assert same_stage <= 0.25
    assert len({e["completion"] for e in shuffled}) >= 0.5 * len({e["completion"] for e in examples})
    # the control: the recorded pairs themselves answer their own stage every time
    assert all(stage_of_request(e) == stage_of_answer(e) for e in examples)


def test_the_shuffle_is_reproducible():
    """A snapshot is named by its content: the same examples make the same control."""
    assert answers_to_other_requests(lockstep_examples()) == answers_to_other_requests(lockstep_examples())
    assert answers_to_other_requests(lockstep_examples(), seed=1) != answers_to_other_requests(lockstep_examples())


def test_a_site_with_one_request_or_one_answer_has_no_shuffled_control():
    one_request = [e for e in lockstep_examples() if e["messages"] == lockstep_examples()[0]["messages"]]
    with pytest.raises(NotEnoughData):
        answers_to_other_requests(one_request)
    one_answer = [{**e, "completion": '{"difficulty": 1}'} for e in lockstep_examples()]
    with pytest.raises(NotEnoughData):
        answers_to_other_requests(one_answer)
