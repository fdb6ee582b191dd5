"""GRPO's rewards: the built-ins, the registry that loads them lazily by name, the checks on
what a reward returns, and group-normalised advantages."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lorakit.api import RewardSpec, UsageError


def _reward(name: str, **options: Any) -> Any:
    from lorakit.plugins import get_registries

    return get_registries().rewards.get(name).factory(**options)


def test_the_built_in_rewards_are_registered_by_lorakit_llm() -> None:
    from lorakit.plugins import get_registries

    rewards = get_registries().rewards
    for name in ("answer_match", "regex", "think_format", "length", "json_valid"):
        assert rewards.entry(name).distribution == "llm"


def test_answer_match_exact_last_number_and_tag() -> None:
    rows = [{"answer": "Lima"}, {"answer": "1,200"}, {"answer": "42"}]
    exact = _reward("answer_match")
    assert exact([""] * 3, [" Lima ", "1200", "41"], rows) == [1.0, 0.0, 0.0]
    number = _reward("answer_match", mode="number")
    assert number([""] * 3, ["Lima", "so 3 then 1,200", "42.0 apples"], rows) == [0.0, 1.0, 1.0]
    tag = _reward("answer_match", mode="tag", field="answer")
    got = tag(
        [""] * 3, ["<answer>Lima</answer>", "<answer>1</answer><answer>1,200</answer>", "42"], rows
    )
    assert got == [1.0, 1.0, 0.0]
    with pytest.raises(UsageError, match="mode"):
        _reward("answer_match", mode="fuzzy")


def test_format_rewards() -> None:
    think = _reward("think_format")
    completions = ["<think>2+2</think> 4", "4", "<think>hm</think>", " <think>a\nb</think>\nok"]
    assert think([""] * 4, completions, [{}] * 4) == [1.0, 0.0, 0.0, 1.0]
    regex = _reward("regex", pattern=r"\d+")
    assert regex([""] * 2, ["42", "a42"], [{}] * 2) == [1.0, 0.0]
    anywhere = _reward("regex", pattern=r"\d", full=False)
    assert anywhere([""] * 2, ["a42", "abc"], [{}] * 2) == [1.0, 0.0]
    with pytest.raises(UsageError, match="pattern"):
        _reward("regex")
    with pytest.raises(UsageError, match="bad pattern"):
        _reward("regex", pattern="(")


def test_length_and_json_rewards() -> None:
    length = _reward("length", target=4)
    assert length([""] * 3, ["abcd", "ab", "abcdefghij"], [{}] * 3) == [1.0, 0.5, 0.0]
    words = _reward("length", target=2, unit="words")
    assert words([""], ["one two"], [{}]) == [1.0]
    valid = _reward("json_valid")
    completions = ['{"a": 1}', "```json\n[1, 2]\n```", "{a: 1}"]
    assert valid([""] * 3, completions, [{}] * 3) == [1.0, 1.0, 0.0]


def test_json_schema_needs_jsonschema_or_validates() -> None:
    schema = {"type": "object", "required": ["dose"]}
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install jsonschema"):
            _reward("json_valid", schema=schema)
        return
    valid = _reward("json_valid", schema=schema)
    assert valid([""] * 2, ['{"dose": 5}', '{"x": 1}'], [{}] * 2) == [1.0, 0.0]


def test_load_rewards_names_the_key_of_each_mistake() -> None:
    from lorakit_llm.grpo.rewards import load_rewards

    from lorakit.plugins import get_registries

    registry = get_registries().rewards
    with pytest.raises(UsageError, match="did you mean 'answer_match'"):
        load_rewards(registry, ["answer_mach"])
    with pytest.raises(UsageError, match="reward_weights has 1 values for 2 rewards"):
        load_rewards(registry, ["length", "think_format"], [1.0])
    with pytest.raises(UsageError, match=r"reward_options.length.size: unknown option"):
        load_rewards(registry, ["length"], options={"length": {"size": 3}})
    with pytest.raises(UsageError, match=r"reward_options.regex: no such reward"):
        load_rewards(registry, ["length"], options={"regex": {"pattern": "a"}})
    with pytest.raises(UsageError, match="at least one reward"):
        load_rewards(registry, [])
    rewards = load_rewards(
        registry, ["length", "think_format"], [0.5, 2.0], {"length": {"target": 2}}
    )
    per = rewards.score(["p"], ["<think>x</think> y"], [{}], ["f:1"])
    assert per == [[0.0], [1.0]] and rewards.total(per) == [2.0]


def _one(values: Any) -> Any:
    return lambda prompts, completions, rows: values(completions, rows)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            _one(lambda c, r: [1.0 / len(x) for x in c]),
            "reward 'bad' failed on row data.jsonl:2: ZeroDivisionError: float division by zero",
        ),
        (_one(lambda c, r: [1.0]), "reward 'bad' returned 1 values for 2 completions"),
        (
            _one(lambda c, r: [1.0, math.nan]),
            "reward 'bad' returned nan, not a finite number, on row data.jsonl:2",
        ),
        (_one(lambda c, r: [1.0, "1"]), "reward 'bad' returned '1', not a finite number"),
    ],
)
def test_a_broken_reward_is_one_line_naming_it_and_the_row(function: Any, message: str) -> None:
    from lorakit_llm.grpo.rewards import Rewards

    rewards = Rewards(["bad"], [function], [1.0])
    with pytest.raises(UsageError) as info:
        rewards.score(["p", "p"], ["ab", ""], [{}, {}], ["data.jsonl:1", "data.jsonl:2"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_plugin_registers_a_reward_through_the_hook() -> None:
    import lorakit_llm.plugin

    from lorakit.api import hookimpl
    from lorakit.plugins import build_plugins

    class Plugin:
        @hookimpl
        def register_rewards(self, register: Any) -> None:
            register(
                RewardSpec(
                    "shouty",
                    lambda: lambda p, c, r: [float(x.isupper()) for x in c],
                    "1 for upper-case completions",
                )
            )

    plugins = build_plugins(
        entry_points=False, extra=[("llm", lorakit_llm.plugin), ("shouty-dist", Plugin())]
    )
    registries = plugins.registries
    entry = registries.rewards.entry("shouty")
    assert entry.distribution == "shouty-dist" and "answer_match" in registries.rewards
    assert entry.spec.factory()([""] * 2, ["HI", "hi"], [{}, {}]) == [1.0, 0.0]


def test_group_advantages_as_trl_computes_them() -> None:
    from lorakit_llm.grpo.objective import advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, std = advantages(rewards, 4, "group")
    first = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4)  # unbiased std of group 1
    torch.testing.assert_close(adv, torch.cat([first, torch.zeros(4)]))
    assert std[4:].abs().sum() == 0
    adv, _ = advantages(rewards, 4, "none")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    adv, std = advantages(rewards, 4, "batch")
    torch.testing.assert_close(std, rewards.std().expand(8))
    torch.testing.assert_close(adv[:4], first * (0.5 + 1e-4) / (float(rewards.std()) + 1e-4))
