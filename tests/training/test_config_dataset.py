import json

from tests.training.examples import COLOR_SCHEMA, make_example
from understudy.training.config import TrainConfig
from understudy.training.dataset import load_examples, write_examples
from understudy.training.evaluate import evaluate, is_exact, parse_valid


def test_config_roundtrip(tmp_path):
    cfg = TrainConfig(base_model="/m", base_gguf="/m.gguf", lora_r=8, max_steps=3, target_modules=["q_proj"])
    cfg.to_json(tmp_path / "config.json")
    assert TrainConfig.from_json(tmp_path) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_json(tmp_path / "config.json").resolved_base_gguf() == "/m.gguf"


def test_load_examples_roundtrip(tmp_path):
    train = [make_example("q1", '{"color": "red"}', COLOR_SCHEMA, system="s"), make_example("q2", "plain")]
    train[1]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    eval_ = [make_example("q3", "x")]
    path = write_examples(tmp_path / "snap.parquet", train, eval_)
    got_train, got_eval = load_examples(path)
    assert got_train == train and got_eval == eval_


def test_parse_valid_and_exact():
    assert parse_valid('{"color": "red"}', COLOR_SCHEMA) is True
    assert parse_valid('{"colour": "red"}', COLOR_SCHEMA) is False
    assert parse_valid("not json", {"type": "json_object"}) is False
    assert parse_valid("free text", None) is None
    assert is_exact('{"a":1,"b":2}', '{"b": 2, "a": 1}', json_typed=True)
    assert not is_exact("a", "b", json_typed=False)


def wants_the_asked_color(answer: str, arguments) -> bool:
    """A validator that reads the request: the answer's color is the one the question names."""
    return json.loads(answer).get("color") in arguments.request["messages"][-1]["content"]


def test_evaluate_rates_and_validator():
    exs = [
        make_example("red?", '{"color": "red"}', COLOR_SCHEMA),
        make_example("blue?", '{"color": "blue"}', COLOR_SCHEMA),
    ]
    answers = {"red?": '{"color":"red"}', "blue?": '{"color": "green"}'}
    report = evaluate(
        lambda ex: answers[ex["messages"][-1]["content"]],
        exs,
        validator="tests.training.test_config_dataset:wants_the_asked_color",
    )
    assert report.n == 2 and report.exact_match == 0.5
    assert report.parse_valid == 1.0 and report.validator_pass == 0.5
