"""``lorakit plan``: estimates against the real step, the ladder, ``--gpu``, ``train``'s check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from plan_helpers import LLAMA, llm_config, real_peak, write_config

from lorakit.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture
def real_plugins() -> Any:
    """The built-ins, lorakit-sd and lorakit-llm, without other entry points."""
    import lorakit_llm.plugin
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(
        entry_points=False, extra=[("sd", lorakit_sd.plugin), ("llm", lorakit_llm.plugin)]
    )
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorakit_llm.testing import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("llama") / "model", hidden_size=128, num_layers=3
    )


def within(plan: int, real: int, tolerance: float = 0.15) -> bool:
    return abs(plan - real) <= tolerance * real


@pytest.mark.parametrize("checkpointing", [False, True])
def test_llm_plan_matches_the_real_step(tmp_path, real_plugins, tiny_llama, checkpointing):
    from lorakit.planning import make_plan

    data = llm_config(
        tmp_path, str(tiny_llama), gradient_checkpointing=checkpointing,
        llm={"attn_implementation": "eager"},
    )  # fmt: skip
    config = load_config(write_config(tmp_path / "c.yaml", data))
    plan = make_plan(config)
    real = real_peak(config, tmp_path)
    assert within(plan.estimate.total, real), (plan.estimate, real)
    # Activations dominate this step, so the comparison is about what the trace predicts.
    assert plan.estimate.activations > plan.estimate.frozen
    assert plan.estimate.other_activations is not None
    if checkpointing:
        assert plan.estimate.activations < plan.estimate.other_activations
    else:
        assert plan.estimate.activations > plan.estimate.other_activations


def test_llm_plan_with_sdpa_errs_high_by_one_score_matrix_at_most(
    tmp_path, real_plugins, tiny_llama
):
    """Traced on fake tensors, sdpa counts the attention scores its fused kernels never
    build: the plan may be high by about one layer's scores (batch × heads × length² fp32),
    never low."""
    from lorakit.planning import make_plan

    config = load_config(write_config(tmp_path / "c.yaml", llm_config(tmp_path, str(tiny_llama))))
    plan = make_plan(config)
    real = real_peak(config, tmp_path)
    seq = 256  # every row is cut at max_seq_len
    scores = config.train.batch_size * LLAMA["num_attention_heads"] * seq * seq * 4
    assert real <= plan.estimate.total <= real + scores * 1.5, (plan.estimate, real, scores)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lorakit_sd.testing import build_tiny_sd

    root = tmp_path_factory.mktemp("sd")
    return {family: build_tiny_sd(root / family, family) for family in ("sd1", "sdxl")}


@pytest.mark.parametrize(
    ("family", "checkpointing", "single_file"),
    [("sd1", False, False), ("sdxl", True, True)],
)
def test_sd_plan_matches_the_real_step(
    tmp_path, real_plugins, tiny_sd, family, checkpointing, single_file
):
    from lorakit_sd.testing import tiny_config, write_tiny_images

    from lorakit.planning import make_plan

    images = write_tiny_images(tmp_path / "data", 4, sizes=[(64, 64)])
    data = tiny_config(
        tiny_sd[family], images, tmp_path / "run", single_file=single_file,
        gradient_checkpointing=checkpointing, batch_size=2, trackers=[],
        sd={"resolution": 64, "bucket": False},
    )  # fmt: skip
    config = load_config(write_config(tmp_path / "c.yaml", data))
    plan = make_plan(config)
    real = real_peak(config, tmp_path)
    assert within(plan.estimate.total, real), (plan.estimate, real)
    assert plan.estimate.activations > plan.estimate.frozen
    assert plan.model.items == 4 and plan.steps == 4


@pytest.mark.parametrize(
    ("text", "name", "gib"),
    [
        ("24GB", "24 GiB", 24), ("24 gib", "24 GiB", 24), ("80G", "80 GiB", 80),
        ("0.5GB", "0.5 GiB", 0.5), ("RTX 4090", "RTX 4090", 24), ("rtx4090", "RTX 4090", 24),
        ("4090", "RTX 4090", 24), ("NVIDIA GeForce RTX 3090", "RTX 3090", 24),
        ("H100", "H100", 80), ("A100 40GB", "A100 40GB", 40), ("a100", "A100", 80),
    ],
)  # fmt: skip
def test_gpu_parsing(text, name, gib):
    from lorakit.planning import parse_gpu

    card = parse_gpu(text)
    assert (card.name, card.gib) == (name, gib)
    assert 0 < card.usable_bytes < gib * 1024**3


@pytest.mark.parametrize("text", ["RTX 9999", "A100 41GB", "0GB", "lots"])
def test_gpu_parsing_refuses(text):
    from lorakit.errors import UsageError
    from lorakit.planning import parse_gpu

    with pytest.raises(UsageError, match="--gpu"):
        parse_gpu(text)


def _cli_plan(capsys: Any, config: Path, *args: str) -> dict[str, Any]:
    from lorakit.testing import run_cli

    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_ladder_rows_fit_by_the_plans_own_numbers(tmp_path, capsys, real_plugins, tiny_llama):
    data = llm_config(tmp_path, str(tiny_llama), batch_size=8)
    config = write_config(tmp_path / "c.yaml", data)
    whole = _cli_plan(capsys, config)["bytes"]["total"]
    card = f"{whole * 0.75 / 0.94 / 1024**3:.4f}GB"  # three quarters of what the run needs
    plan = _cli_plan(capsys, config, "--gpu", card)
    assert plan["fits"] is False and plan["bytes"]["total"] == whole
    rows = plan["ladder"]
    assert rows, plan
    usable = int(float(card[:-2]) * 0.94 * 1024**3)
    # Cheapest first: the batch split (same effective batch) is the first row.
    assert rows[0]["set"]["batch_size"] * rows[0]["set"]["gradient_accumulation_steps"] == 8
    for row in rows:
        assert row["total"] <= usable
        # Re-planned from scratch with the row's --set flags, the run fits.
        flags = [
            f
            for part in row["flags"].split(" --set ")
            for f in ("--set", part.removeprefix("--set "))
        ]
        again = _cli_plan(capsys, config, "--gpu", card, *flags)
        assert again["fits"] is True and again["bytes"]["total"] == row["total"], row


def test_plan_text_output(tmp_path, capsys, real_plugins, tiny_llama):
    from lorakit.testing import run_cli

    config = write_config(tmp_path / "c.yaml", llm_config(tmp_path, str(tiny_llama)))
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--gpu", "0.01GB")
    assert code == 0, err
    for words in ("frozen weights", "activations (gradient checkpointing off)", "optimizer state (adamw)",
                  "does not fit", "configs that fit", "--set batch_size=2"):  # fmt: skip
        assert words in out, out


def test_train_refuses_a_run_that_cannot_fit(tmp_path, capsys, real_plugins, tiny_llama):
    from lorakit.testing import run_cli

    data = llm_config(tmp_path, str(tiny_llama), max_steps=1, save_steps=0)
    config = write_config(tmp_path / "c.yaml", data)
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--gpu", "0.01GB")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "first config that fits: --set " in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    # The header carries the plan's line; --no-plan-check trains anyway.
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--gpu", "24GB")
    assert code == 0, err
    assert "plan: peak ≈" in out and "fits" in out
    code, out, err = run_cli(
        capsys, "train", "--config", str(config), "--gpu", "0.01GB", "--no-plan-check",
        "--set", f"output_dir={tmp_path / 'run2'}",
    )  # fmt: skip
    assert code == 0, err
    assert "plan:" not in out and (tmp_path / "run2" / "adapter").is_dir()


def test_llm_plan_from_a_config_file_and_a_gguf(tmp_path, real_plugins, tiny_llama, monkeypatch):
    """A config.json alone, a GGUF file's metadata and a model folder plan
    the same model to the same byte; no weight is read (the config file has none)."""
    from lorakit_llm.testing import write_gguf

    from lorakit.planning import make_plan

    def total(base: str) -> int:
        config = load_config(write_config(tmp_path / "c.yaml", llm_config(tmp_path, base)))
        return make_plan(config, both=False).estimate.total

    folder = total(str(tiny_llama))
    alone = tmp_path / "llama.json"
    alone.write_text((tiny_llama / "config.json").read_text())
    assert total(str(alone)) == folder
    gguf = write_gguf(tiny_llama, tmp_path / "tiny.gguf")
    assert total(str(gguf)) == folder
    # A 7B-shaped config.json: the weights alone are 7B parameters in bf16.
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**LLAMA, "hidden_size": 4096, "intermediate_size": 11008,
                               "num_hidden_layers": 32, "num_attention_heads": 32,
                               "num_key_value_heads": 32, "vocab_size": 32000}))  # fmt: skip
    data = llm_config(tmp_path, str(big), mixed_precision="bf16")
    data["llm"]["max_seq_len"] = 512
    config = load_config(write_config(tmp_path / "big.yaml", data))
    plan = make_plan(config, both=False)
    assert 6.7e9 * 2 < plan.estimate.frozen < 6.8e9 * 2


def test_the_docs_cases_are_what_plan_prints(tmp_path, real_plugins):
    """docs/will-it-fit.md's two cases, planned from the real models' configs (no weights)."""
    from plan_helpers import mascot_case, medqa_case

    from lorakit.planning import make_plan, parse_gpu

    page = (Path(__file__).parent.parent / "docs" / "will-it-fit.md").read_text()
    for case in (mascot_case(tmp_path / "mascot"), medqa_case(tmp_path / "medqa")):
        plan = make_plan(load_config(case), parse_gpu("24GB"), both=False)
        assert plan.fits
        assert plan.summary() in page, plan.summary()
    assert "Llama (32 layers × 4096)" in page and plan.estimate.trainable_params == 16_777_216


def test_a_backend_without_a_planner(tmp_path, capsys, toy_plugins):
    """`lorakit plan` says so in one line (exit 2); `lorakit train` says it skipped the
    check and trains."""
    from conftest import toy_config

    from lorakit.testing import run_cli

    config = write_config(tmp_path / "toy.yaml", toy_config(tmp_path, max_steps=2))
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--gpu", "24GB")
    assert code == 2 and err.strip() == (
        "lorakit: error: backend 'toy' cannot plan (it registers no planner)"
    )
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--gpu", "24GB")
    assert code == 0, err
    assert "plan: skipped (backend 'toy' cannot plan" in err


def _hub_cache(home: Path, repo: str, files: dict[str, Any]) -> None:
    """A Hugging Face cache holding only ``files`` (configs) of ``repo``, as a download of
    just the configs leaves it."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))


def test_plan_from_hub_ids_in_the_local_cache(tmp_path, real_plugins, monkeypatch):
    import huggingface_hub.constants as hub_constants
    from plan_helpers import LLAMA, SD15, llm_config

    from lorakit.planning import make_plan

    home = tmp_path / "hf"
    _hub_cache(home, "someone/tiny-llama", {"config.json": LLAMA})
    sd15 = {
        **SD15,
        "unet/config.json": {**SD15["unet/config.json"], "block_out_channels": [32, 64, 64, 64]},
    }
    _hub_cache(home, "someone/tiny-sd", sd15)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    config = load_config(
        write_config(tmp_path / "l.yaml", llm_config(tmp_path, "someone/tiny-llama"))
    )
    plan = make_plan(config, both=False)
    assert plan.model.description.startswith("Llama (3 layers × 128)")
    images = tmp_path / "images"
    images.mkdir()
    data = {"task_type": "image-generation", "base_model": "someone/tiny-sd",
            "train_data_dir": str(images), "batch_size": 1, "sd": {"resolution": 64}}  # fmt: skip
    plan = make_plan(load_config(write_config(tmp_path / "s.yaml", data)), both=False)
    assert plan.model.description.startswith("SD1.x UNet") and plan.estimate.activations > 0


def test_optimizer_state_by_optimizer(tmp_path, real_plugins, tiny_llama):
    """The same step with AdamW, 8-bit AdamW, DAdaptAdam and Prodigy: only the optimizer
    state differs, by the bytes each keeps per trainable parameter."""
    from lorakit.planning import Planner

    data = llm_config(tmp_path, str(tiny_llama))
    planner = Planner(load_config(write_config(tmp_path / "c.yaml", data)))
    states = {}
    for name in ("adamw", "adamw8bit", "dadapt_adam", "prodigy"):
        _, estimate = planner.estimate({"optimizer": name})
        states[name] = estimate
    params = states["adamw"].trainable_params
    assert states["adamw"].optimizer == 8 * params
    assert states["dadapt_adam"].optimizer == 12 * params
    assert states["prodigy"].optimizer == 16 * params
    assert 2 * params <= states["adamw8bit"].optimizer < 2.1 * params
    others = {e.total - e.optimizer for e in states.values()}
    assert len(others) == 1  # one trace serves them all


def test_sharded_runs_are_not_refused(tmp_path, capsys, real_plugins, tiny_llama):
    """ZeRO-3 / FSDP over several processes shard the weights: the per-process plan is shown,
    never used to refuse; plain DDP is refused as a single process is."""
    from lorakit.cli.plan_cmd import train_check
    from lorakit.errors import UsageError

    data = llm_config(tmp_path, str(tiny_llama), distributed={"strategy": "deepspeed_zero3"})
    config = load_config(write_config(tmp_path / "c.yaml", data))
    train_check(config, "0.01GB", processes=2)
    assert "(per process, before sharding)" in capsys.readouterr().out
    with pytest.raises(UsageError, match="first config that fits"):
        train_check(config, "0.01GB", processes=1)


def test_llm_preference_plan_matches_the_real_step(tmp_path, real_plugins, tiny_llama):
    """Two rows per pair (ORPO: no reference) against the real step's peak, measured."""
    import json

    from lorakit.planning import make_plan

    words = [f"word{i}" for i in range(97)]
    rows = [
        {"prompt": f"q{i}", "chosen": " ".join(words[(i + j) % 97] for j in range(40)),
         "rejected": " ".join(words[(i * 3 + j) % 97] for j in range(40))}
        for i in range(40)
    ]  # fmt: skip
    path = tmp_path / "pairs" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    configs = {}
    for method in ("orpo", "dpo"):
        data = llm_config(tmp_path, str(tiny_llama), train_data_dir=str(path), batch_size=2,
                          llm={"attn_implementation": "eager", "method": method,
                               "dataset_format": "auto", "train_on_inputs": False})  # fmt: skip
        configs[method] = load_config(write_config(tmp_path / f"{method}.yaml", data))
    from lorakit_llm.plan import planner

    dpo = planner(configs["dpo"])
    assert dpo.batch()["input_ids"].shape[0] == 4  # chosen and rejected rows of 2 pairs
    assert "2 pairs + a reference pass" in dpo.per_step
    plan = make_plan(configs["orpo"])
    assert "2 pairs" in plan.model.per_step and "reference" not in plan.model.per_step
    real = real_peak(configs["orpo"], tmp_path)
    assert within(plan.estimate.total, real), (plan.estimate, real)
