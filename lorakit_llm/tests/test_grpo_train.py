"""GRPO through ``lorakit train``: a format reward's mean rises on the tiny model, the
completions land in samples/, the metrics carry TRL's names, the adapter produces the format
more often than the base, resume is exact, and mistakes are one line (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from llm_helpers import cli, llm_config
from pref_helpers import write_jsonl

from lorakit.testing import run_cli

#: Printable ASCII only: a format the random tiny model meets about a third of the time.
FORMAT = {"regex": {"pattern": "[ -~]*"}}
COUNTRIES = ("Peru", "Japan", "Chile", "Cuba", "Kenya", "Iran", "Egypt", "Norway")


def _rows() -> list[dict[str, Any]]:
    return [{"prompt": f"What is the capital of {c}?", "answer": c} for c in COUNTRIES]


def _config(assets: dict[str, Path], out: Path, data: Path, **keys: Any) -> dict[str, Any]:
    llm = {
        "method": "grpo",
        "rewards": ["regex"],
        "reward_options": FORMAT,
        "num_generations": 8,
        "max_completion_length": 3,
        **keys.pop("llm", {}),
    }
    config = llm_config({**assets, "qa": data}, out, llm=llm, **keys)
    config.update(train_data_dir=str(data), lora_dropout=0.0, target_modules=["all-linear"])
    return {"learning_rate": 1e-2, "max_steps": 40, "logging_steps": 5, **config, **keys}


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grpo_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("grpo")
    data = write_jsonl(root / "prompts.jsonl", _rows())
    out = root / "out"
    config = _config(assets, out, data)
    assert cli("train", "--config", _write(root / "grpo.yaml", config)) == 0
    return {"root": root, "data": data, "out": out, "config": config}


def test_a_format_rewards_mean_rises(grpo_run: dict[str, Any]) -> None:
    logged = _metrics(grpo_run["out"])
    rewards = [m["rewards/regex/mean"] for m in logged]
    assert len(rewards) == 8
    assert rewards[-1] > rewards[0] + 0.2 and max(rewards[-3:]) > 0.6, rewards
    names = {
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "rewards/regex/mean",
        "rewards/regex/std",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
    }
    assert names <= logged[0].keys()
    assert "kl" not in logged[0]  # beta 0: no reference pass, no KL
    assert all(1 <= m["completions/mean_length"] <= 3 for m in logged)


def test_completions_and_rewards_are_written_every_log_step(grpo_run: dict[str, Any]) -> None:
    samples = grpo_run["out"] / "samples"
    assert sorted(p.name for p in samples.iterdir()) == sorted(
        f"completions-step-{s}.jsonl" for s in range(5, 41, 5)
    )
    lines = [
        json.loads(x) for x in (samples / "completions-step-40.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 4 * 8  # four prompts of the last batch, all their completions
    first = lines[0]
    assert first["step"] == 40 and first["source"].startswith(str(grpo_run["data"]))
    assert "<|assistant|>" in first["prompt"]  # the chat template, as lorakit chat renders it
    assert first["rewards"]["regex"] == first["reward"] in (0.0, 1.0)
    import re

    for line in lines:
        assert line["reward"] == float(bool(re.fullmatch("[ -~]*", line["completion"], re.S)))


def _format_rate(model: Any, tokenizer: Any, seed: int = 0) -> float:
    from lorakit_llm.grpo.generation import Sampling, prompt_text, sample_completions

    template = tokenizer.chat_template
    prompts = [
        tokenizer(
            prompt_text(tokenizer, [{"role": "user", "content": r["prompt"]}], template),
            add_special_tokens=False,
        )["input_ids"]
        for r in _rows()
    ]
    torch.manual_seed(seed)
    generated = sample_completions(model, tokenizer, prompts, template, Sampling(16, 3))
    import re

    return sum(bool(re.fullmatch("[ -~]*", t, re.S)) for t in generated.texts) / len(
        generated.texts
    )


def test_the_saved_adapter_produces_the_format_more_often_than_the_base(
    assets: dict[str, Path], grpo_run: dict[str, Any]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    base = AutoModelForCausalLM.from_pretrained(assets["model"])
    before = _format_rate(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(grpo_run["out"] / "adapter"))
    after = _format_rate(tuned, tokenizer)
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("iterations", [1, 2])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(
    assets: dict[str, Path], tmp_path: Path, iterations: int
) -> None:
    """Completions are sampled from the run's RNG, restored with the checkpoint: the resumed
    run samples the same completions and ends with the same adapter (with num_iterations,
    from a checkpoint where a batch's iterations are done)."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())
    keys = {
        "max_steps": 6,
        "save_steps": 2,
        "logging_steps": 1,
        "batch_size": 2,
        "llm": {"beta": 0.05, "num_iterations": iterations},
    }
    full, part = tmp_path / "full", tmp_path / "part"
    config = _config(assets, full, data, **keys)
    assert cli("train", "--config", _write(tmp_path / "a.yaml", config)) == 0
    half = _config(assets, part, data, **{**keys, "max_steps": 4})
    assert cli("train", "--config", _write(tmp_path / "b.yaml", half)) == 0
    again = _config(assets, part, data, **keys)
    assert cli("train", "--config", _write(tmp_path / "c.yaml", again), "--resume") == 0
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)
    for step in (5, 6):
        name = f"samples/completions-step-{step}.jsonl"
        assert (part / name).read_text() == (full / name).read_text()


def test_eval_split_logs_the_mean_reward_of_held_out_prompts(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    from lorakit_llm.data import split_rows

    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())
    out = tmp_path / "out"
    config = _config(
        assets,
        out,
        data,
        max_steps=4,
        logging_steps=1,
        batch_size=2,
        llm={"eval_split": 0.25, "eval_steps": 2},
    )
    assert cli("train", "--config", _write(tmp_path / "e.yaml", config)) == 0
    evals = [m for m in _metrics(out) if "eval_reward" in m]
    assert [m["step"] for m in evals] == [2, 4]
    for m in evals:
        assert m["eval_reward"] == m["eval_rewards/regex/mean"]
        assert 0.0 <= m["eval_reward"] <= 1.0 and 1 <= m["eval_completions/mean_length"] <= 3
    _, held = split_rows(len(COUNTRIES), 0.25, 0)
    assert len(held) == 2
    trained_on = {
        json.loads(x)["source"]
        for p in (out / "samples").iterdir()
        for x in p.read_text().splitlines()
    }
    assert len(trained_on) >= 4 and not trained_on & {f"{data}:{r + 1}" for r in held}


def test_evaluating_does_not_change_what_training_samples(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())
    held = write_jsonl(tmp_path / "held" / "held.jsonl", _rows()[:3])
    keys = {"max_steps": 3, "logging_steps": 1, "batch_size": 2}
    plain, with_eval = tmp_path / "plain", tmp_path / "eval"
    config = _config(assets, plain, data, **keys)
    assert cli("train", "--config", _write(tmp_path / "a.yaml", config)) == 0
    config = _config(assets, with_eval, data, **keys, llm={"eval_data": str(held), "eval_steps": 1})
    assert cli("train", "--config", _write(tmp_path / "b.yaml", config)) == 0
    assert [m["step"] for m in _metrics(with_eval) if "eval_reward" in m] == [1, 2, 3]
    for step in (1, 2, 3):
        name = f"samples/completions-step-{step}.jsonl"
        assert (with_eval / name).read_text() == (plain / name).read_text()


def test_grpo_refusals_are_one_line(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())

    def train(name: str, **keys: Any) -> str:
        config = _write(tmp_path / f"{name}.yaml", _config(assets, tmp_path / name, data, **keys))
        code, out, err = run_cli(capsys, "train", "--config", config)
        assert code == 2, out + err
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    assert "vLLM generation needs CUDA" in train("vllm", llm={"use_vllm": True})
    line = train("typo", llm={"rewards": ["regexp"]})
    assert "llm.rewards" in line and "unknown reward 'regexp' (did you mean 'regex'?)" in line
    config = _write(
        tmp_path / "v.yaml",
        _config(assets, tmp_path / "v", data, llm={"rewards": ["length", "regexp"]}),
    )
    code, out, err = run_cli(capsys, "config", "validate", config)
    line_of = config.read_text().splitlines().index("  rewards:") + 1
    assert code == 2 and f"{config}:{line_of}: llm.rewards: unknown reward 'regexp'" in err
    line = train("qa", llm={"dataset_format": "qa"})
    assert "missing key" in line or "grpo trains on prompt rows" in line
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    config = _config(assets, tmp_path / "qa-out", qa)
    code, out, err = run_cli(capsys, "train", "--config", _write(tmp_path / "qa2.yaml", config))
    assert code == 2 and "llm.method grpo trains on prompt rows" in err, out + err


def test_a_broken_plugin_reward_stops_the_run_naming_it_and_the_row(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import lorakit_llm.plugin

    from lorakit.api import RewardSpec, hookimpl
    from lorakit.plugins import build_plugins, get_plugins, set_plugins

    def strict(
        prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float]:
        return [1.0 / (row["answer"] != "Cuba") for row in rows]  # Cuba's row breaks it

    class Plugin:
        @hookimpl
        def register_rewards(self, register: Any) -> None:
            register(RewardSpec("strict", lambda: strict, "breaks on one row"))

    rows = _rows()
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    config = _config(
        assets,
        tmp_path / "out",
        data,
        batch_size=8,
        llm={"rewards": ["strict"], "reward_options": {}},
    )
    previous = get_plugins()
    set_plugins(
        build_plugins(
            entry_points=False, extra=[("llm", lorakit_llm.plugin), ("strict-reward", Plugin())]
        )
    )
    try:
        code, out, err = run_cli(capsys, "train", "--config", _write(tmp_path / "s.yaml", config))
    finally:
        set_plugins(previous)
    line = COUNTRIES.index("Cuba") + 1
    assert code == 2, out + err
    assert f"reward 'strict' failed on row {data}:{line}: ZeroDivisionError" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_grpo_template_trains_on_the_tiny_model(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config init --template grpo`` as written, pointed at the tiny model and CPU sizes."""
    path = tmp_path / "grpo.yaml"
    code, out, err = run_cli(
        capsys, "config", "init", "--backend", "llm", "--template", "grpo", "-o", path
    )
    assert code == 0, out + err
    config = yaml.safe_load(path.read_text())
    assert config["llm"]["method"] == "grpo"
    assert config["llm"]["rewards"] == ["answer_match", "think_format"]
    rows = [
        {"prompt": f"Capital of {c}? Answer in <answer></answer>.", "answer": c} for c in COUNTRIES
    ]
    config.update(
        base_model=str(assets["model"]),
        output_dir=str(tmp_path / "out"),
        train_data_dir=str(write_jsonl(tmp_path / "q.jsonl", rows)),
        mixed_precision="no",
        max_steps=2,
        gradient_accumulation_steps=2,
        lora_rank=4,
        lora_alpha=8,
    )
    config["llm"].update(num_generations=2, max_completion_length=4, max_seq_len=128)
    path.write_text(yaml.safe_dump(config))
    code, out, err = run_cli(capsys, "train", "--config", path)
    assert code == 0, out + err
    assert "llm: grpo on 8 prompts" in out + err
    logged = _metrics(tmp_path / "out")
    assert {"rewards/answer_match/mean", "rewards/think_format/mean"} <= logged[-1].keys()


def test_plan_counts_every_completion_of_a_micro_batch(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step's forward holds batch_size × num_generations rows of prompt + completion."""
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())
    config = _config(assets, tmp_path / "out", data, llm={"beta": 0.1})
    code, out, err = run_cli(capsys, "plan", "-c", _write(tmp_path / "p.yaml", config))
    assert code == 0, out + err
    from lorakit_llm.grpo.generation import prompt_text

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    longest = max(
        len(
            tokenizer(
                prompt_text(
                    tokenizer, [{"role": "user", "content": r["prompt"]}], tokenizer.chat_template
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in _rows()
    )
    text = " ".join(out.split())
    assert "4 prompts × 8 completions + a reference pass" in text
    seq = longest + 3  # the longest prompt and max_completion_length
    assert f"{32 * seq:,} tokens (32 × {seq})" in text  # 4 prompts × 8 completions a forward
    assert "caches (generation KV cache)" in text
    code, out, err = run_cli(capsys, "plan", "-c", tmp_path / "p.yaml", "--json")
    plan = json.loads(out)
    size = 2 if "bfloat16" in plan["model"] else 4
    # keys and values × 2 layers × 2 key/value heads × 16 per head, for every row and token
    assert plan["bytes"]["caches"] == 2 * 2 * 2 * 16 * 32 * seq * size


@pytest.mark.slow
def test_two_processes_train_grpo(assets: dict[str, Path], tmp_path: Path) -> None:
    """DDP on two CPU processes: each samples its own prompts' completions, the KL reference
    is each process's own base with the adapter disabled, the metrics are averaged."""
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "prompts.jsonl", _rows())
    out = tmp_path / "two"
    config = _config(
        assets, out, data, max_steps=2, logging_steps=1, batch_size=2, llm={"beta": 0.05}
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorakit.cli",
            "train",
            "--config",
            str(_write(tmp_path / "two.yaml", config)),
            "--num-processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["num_processes"] == 2
    logged = _metrics(out)
    assert [m["step"] for m in logged] == [1, 2]
    assert all(0.0 <= m["reward"] <= 1.0 and m["kl"] >= 0.0 for m in logged)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
