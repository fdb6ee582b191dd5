"""``lorakit plan``: estimates against the real step, the ladder, ``--gpu``, ``train``'s check."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from plan_helpers import LLAMA, LLAMA2_7B, llm_config, real_peak, real_plugins, write_config  # noqa: F401

from lorakit.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorakit_llm.testing import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("llama") / "model", hidden_size=128, num_layers=3
    )


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layer: for what the plan does with its numbers (the ladder, the CLI, ``train``'s
    check), where a trace of fewer operations proves the same."""
    from lorakit_llm.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("llama1") / "model", num_layers=1)


def within(plan: int, real: int, tolerance: float = 0.15) -> bool:
    return abs(plan - real) <= tolerance * real


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.usefixtures("real_plugins")
def test_llm_plan_matches_the_real_step(tmp_path, tiny_llama, checkpointing):
    from lorakit.planning import make_plan

    data = llm_config(
        tmp_path,
        str(tiny_llama),
        gradient_checkpointing=checkpointing,
        llm={"attn_implementation": "eager"},
    )
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


@pytest.mark.usefixtures("real_plugins")
def test_llm_plan_with_sdpa_errs_high_by_one_score_matrix_at_most(tmp_path, tiny_llama):
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
    from lorakit_sd.families.unet_standin import build_tiny_sd

    root = tmp_path_factory.mktemp("sd")
    return {family: build_tiny_sd(root / family, family) for family in ("sd1", "sdxl")}


@pytest.mark.parametrize(
    ("family", "checkpointing", "single_file", "size"),
    [("sd1", False, False, 32), ("sdxl", True, True, 48)],  # activations still > weights
)
@pytest.mark.usefixtures("real_plugins")
def test_sd_plan_matches_the_real_step(tmp_path, tiny_sd, family, checkpointing, single_file, size):
    from lorakit_sd.testing import tiny_config, write_tiny_images

    from lorakit.planning import make_plan

    images = write_tiny_images(tmp_path / "data", 4, sizes=[(size, size)])
    data = tiny_config(
        tiny_sd[family],
        images,
        tmp_path / "run",
        single_file=single_file,
        gradient_checkpointing=checkpointing,
        batch_size=2,
        trackers=[],
        sd={"resolution": size, "bucket": False},
    )
    config = load_config(write_config(tmp_path / "c.yaml", data))
    plan = make_plan(config, both=False)
    real = real_peak(config, tmp_path)
    assert within(plan.estimate.total, real), (plan.estimate, real)
    assert plan.estimate.activations > plan.estimate.frozen
    assert plan.model.items == 4 and plan.steps == 4


@pytest.mark.parametrize(
    ("text", "name", "gib"),
    [
        ("24GB", "24 GiB", 24),
        ("24 gib", "24 GiB", 24),
        ("80G", "80 GiB", 80),
        ("0.5GB", "0.5 GiB", 0.5),
        ("RTX 4090", "RTX 4090", 24),
        ("rtx4090", "RTX 4090", 24),
        ("4090", "RTX 4090", 24),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 24),
        ("H100", "H100", 80),
        ("A100 40GB", "A100 40GB", 40),
        ("a100", "A100", 80),
    ],
)
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


@pytest.mark.usefixtures("real_plugins")
def test_ladder_rows_fit_by_the_plans_own_numbers(tmp_path, capsys, small_llama):
    data = llm_config(tmp_path, str(small_llama), batch_size=8)
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


@pytest.mark.usefixtures("real_plugins")
def test_plan_text_output(tmp_path, capsys, small_llama):
    from lorakit.testing import run_cli

    config = write_config(tmp_path / "c.yaml", llm_config(tmp_path, str(small_llama)))
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--gpu", "0.005GB")
    assert code == 0, err
    for words in (
        "frozen weights",
        "activations (gradient checkpointing off)",
        "optimizer state (adamw)",
        "does not fit",
        "configs that fit",
        "--set batch_size=2",
    ):
        assert words in out, out


@pytest.mark.usefixtures("real_plugins")
def test_train_refuses_a_run_that_cannot_fit(tmp_path, capsys, small_llama):
    from lorakit.testing import run_cli

    data = llm_config(tmp_path, str(small_llama), max_steps=1, save_steps=0)
    config = write_config(tmp_path / "c.yaml", data)
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--gpu", "0.005GB")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "first config that fits: --set " in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    # The header carries the plan's line; --no-plan-check trains anyway.
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--gpu", "24GB")
    assert code == 0, err
    assert "plan: peak ≈" in out and "fits" in out
    code, out, err = run_cli(
        capsys,
        "train",
        "--config",
        str(config),
        "--gpu",
        "0.005GB",
        "--no-plan-check",
        "--set",
        f"output_dir={tmp_path / 'run2'}",
    )
    assert code == 0, err
    assert "plan:" not in out and (tmp_path / "run2" / "adapter").is_dir()


@pytest.mark.usefixtures("real_plugins")
def test_llm_plan_from_a_config_file_and_a_gguf(tmp_path, small_llama, monkeypatch):
    """A config.json alone, a GGUF file's metadata and a model folder plan
    the same model to the same byte; no weight is read (the config file has none)."""
    from lorakit_llm.testing import write_gguf

    from lorakit.planning import make_plan

    def total(base: str) -> int:
        config = load_config(write_config(tmp_path / "c.yaml", llm_config(tmp_path, base)))
        return make_plan(config, both=False).estimate.total

    folder = total(str(small_llama))
    alone = tmp_path / "llama.json"
    alone.write_text((small_llama / "config.json").read_text())
    assert total(str(alone)) == folder
    gguf = write_gguf(small_llama, tmp_path / "tiny.gguf")
    assert total(str(gguf)) == folder
    # Two layers of Llama-2-7B's shape in bf16: weights, LoRA (q_proj, v_proj) and AdamW's
    # state as the parameter counts by hand (below) say; the rotary table is the only buffer.
    shape = {**LLAMA2_7B, "num_hidden_layers": 2}
    big = tmp_path / "big.json"
    big.write_text(json.dumps(shape))
    data = llm_config(tmp_path, str(big), mixed_precision="bf16")
    data["llm"]["max_seq_len"] = 512
    config = load_config(write_config(tmp_path / "big.yaml", data))
    e = make_plan(config, both=False).estimate
    params, lora = _llama(shape, ["q_proj", "v_proj"], config.train.lora_rank)
    assert e.trainable_params == lora and (e.lora, e.optimizer) == (4 * lora, 8 * lora)
    rotary = 4 * shape["hidden_size"] // shape["num_attention_heads"] // 2
    assert 2 * params <= e.frozen <= 2 * params + 2 * rotary, (e.frozen - 2 * params, rotary)


# -- docs/will-it-fit.md's two cases, computed by hand from the models' configs --------------
# Parameter counts from the architectures (the diffusers UNet2DConditionModel of SD1.x and
# transformers' Llama, layer by layer); LoRA adds r × (in + out) per adapted Linear; AdamW
# keeps two fp32 moments (8 bytes) per trainable parameter, bitsandbytes' 8-bit AdamW two
# bytes plus one fp32 scale per 2,048-value block of each moment; gradients are fp32 like
# the LoRA parameters. Nothing here builds a model or calls the planner.


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _linear(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def _resnet(cin: int, cout: int, temb: int) -> int:
    """ResnetBlock2D: GroupNorm, 3×3 conv, time projection, GroupNorm, 3×3 conv, 1×1 shortcut."""
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return (
        2 * cin
        + _conv(cin, cout, 3)
        + _linear(temb, cout)
        + 2 * cout
        + _conv(cout, cout, 3)
        + shortcut
    )


def _transformer(c: int, cross: int) -> int:
    """Transformer2DModel, one block, 1×1 conv projections: self-attention (q, k, v without
    bias, out with), cross-attention (k, v from the text), GEGLU feed-forward (c → 2 × 4c → c)."""
    attn1 = 3 * _linear(c, c, False) + _linear(c, c)
    attn2 = _linear(c, c, False) + 2 * _linear(cross, c, False) + _linear(c, c)
    ff = _linear(c, 8 * c) + _linear(4 * c, c)
    return 2 * c + 2 * _conv(c, c, 1) + 3 * 2 * c + attn1 + attn2 + ff


def _unet_blocks(unet: dict[str, Any]) -> tuple[int, list[int]]:
    """(parameters, channels of every transformer block) of a UNet2DConditionModel config."""
    channels, n, cross = (
        unet["block_out_channels"],
        unet["layers_per_block"],
        unet["cross_attention_dim"],
    )
    temb = 4 * channels[0]
    params = (
        _conv(unet["in_channels"], channels[0], 3)
        + _linear(channels[0], temb)
        + _linear(temb, temb)
    )
    attention: list[int] = []
    out = channels[0]
    for i, kind in enumerate(unet["down_block_types"]):
        cin, out = out, channels[i]
        for j in range(n):
            params += _resnet(cin if j == 0 else out, out, temb)
            attention += [out] if kind.startswith("CrossAttn") else []
        params += _conv(out, out, 3) if i < len(channels) - 1 else 0  # downsampler
    params += 2 * _resnet(channels[-1], channels[-1], temb)
    attention.append(channels[-1])  # the mid block's
    up = channels[::-1]
    out = up[0]
    for i, kind in enumerate(unet["up_block_types"]):
        prev, out, skip_in = out, up[i], up[min(i + 1, len(up) - 1)]
        for j in range(n + 1):  # each resnet takes a skip connection of the down path
            skip = skip_in if j == n else out
            params += _resnet((prev if j == 0 else out) + skip, out, temb)
            attention += [out] if kind.startswith("CrossAttn") else []
        params += _conv(out, out, 3) if i < len(up) - 1 else 0  # upsampler
    params += sum(_transformer(c, cross) for c in attention)
    return params + 2 * channels[0] + _conv(channels[0], unet["out_channels"], 3), attention


def _llama(cfg: dict[str, Any], targets: list[str], rank: int) -> tuple[int, int]:
    """(parameters, LoRA parameters on ``targets``) of a Llama config.json."""
    h, inter, layers, vocab = (
        cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    )
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    layer = sum(i * o for i, o in shapes.values()) + 2 * h  # no biases; two RMSNorms
    head = 0 if cfg["tie_word_embeddings"] else vocab * h
    params = vocab * h + layers * layer + h + head
    return params, layers * sum(rank * sum(shapes[t]) for t in targets)


def _size(n: float) -> str:
    """Bytes the way the page prints them: GiB with one decimal (MiB under 1 GiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 or n == 0 else f"{n / 2**20:.1f} MiB"


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"GiB": 2**30, "MiB": 2**20}[unit]


def _table(page: str, first_line: str) -> dict[str, str]:
    """The rows (label → size) of the page's ``text`` block that starts with ``first_line``."""
    start = page.index(f"```text\n{first_line}\n")
    block = page[start : page.index("```\n", start + 8)].splitlines()[2:]
    return {
        m.group(1).strip(): m.group(2)
        for m in map(re.compile(r"^(.*?)\s+(\d+\.\d \w+)$").match, block)
        if m
    }


def _check_case(
    page: str, heading: str, params: int, lora: int, optimizer: int, steps: str
) -> float:
    """Check a case's table and line against the hand-computed bytes (bf16 weights, fp32
    LoRA) and the 24 GB card; returns the total the page shows, in bytes."""
    rows = _table(page, heading)
    weights, lora_bytes = 2 * params, 4 * lora
    assert rows["frozen weights"] == _size(weights), (heading, rows)
    assert rows[f"LoRA parameters ({lora:,})"] == _size(lora_bytes)
    grads = _bytes(rows["LoRA gradients (alive at the peak)"])
    assert 0 <= grads <= lora_bytes  # the trace says which are alive; never more than all
    assert rows["optimizer state (adamw)"] == _size(optimizer)
    activations = _bytes(rows[next(k for k in rows if k.startswith("activations (gradient"))])
    total = weights + lora_bytes + grads + optimizer + activations
    assert abs(_bytes(rows["total"]) - total) <= 0.1 * 2**30  # each figure is rounded
    usable = (24 - min(1.5, 0.06 * 24)) * 2**30  # a card's size less the reserve
    assert f"fits 24 GiB: {rows['total']} of {_size(usable)} usable" in page
    assert steps in page
    line = (
        f"plan: peak ≈ {rows['total']} (weights {_size(weights)}, LoRA + grads + optimizer "
        f"{_size(lora_bytes + grads + optimizer)}, activations {_size(activations)}) on 24 GiB: fits"
    )
    assert line in page, line
    return total


def test_the_docs_cases_match_the_configs_by_hand():
    """docs/will-it-fit.md's two cases (the shipped templates on stable-diffusion-v1-5 and
    Llama-2-7B) against the parameter, LoRA, optimizer and step counts computed here from the
    models' configs and the templates. The activations are the trace's (tests/test_plan_rss.py
    holds the trace to a process's RSS); the page's totals must add up with them."""
    from plan_helpers import SD15, template

    page = (Path(__file__).parent.parent / "docs" / "will-it-fit.md").read_text()

    sd = template("lorakit_sd", "families/sd1/sd15.yaml")
    assert (sd["mixed_precision"], sd["optimizer"], sd["batch_size"]) == ("bf16", "adamw", 4)
    unet, attention = _unet_blocks(SD15["unet/config.json"])
    r, cross = sd["lora_rank"], SD15["unet/config.json"]["cross_attention_dim"]
    # to_q, to_k, to_v, to_out.0 of both attentions of every transformer block
    lora = sum(r * (4 * 2 * c + 2 * 2 * c + 2 * (cross + c)) for c in attention)
    assert (unet, lora) == (859_520_964, 3_188_736)  # the published SD1.5 UNet size
    steps = f"{80 * 15 // 4} optimizer steps; 4 images of {sd['sd']['resolution']}×{sd['sd']['resolution']}"
    _check_case(page, "sd: SD1.x UNet, bfloat16 weights", unet, lora, 8 * lora, steps)

    llm = template("lorakit_llm", "templates/7b.yaml")
    assert (llm["mixed_precision"], llm["optimizer"], llm["batch_size"]) == ("bf16", "adamw", 4)
    params, lora = _llama(LLAMA2_7B, llm["target_modules"], llm["lora_rank"])
    assert (params, lora) == (6_738_415_616, 16_777_216)  # Llama-2-7B's "6.7B"
    seq = llm["llm"]["max_seq_len"]
    steps = f"{math.ceil(150 / 4) * llm['epochs']} optimizer steps; {4 * seq:,} tokens (4 × {seq})"
    layers, hidden = LLAMA2_7B["num_hidden_layers"], LLAMA2_7B["hidden_size"]
    total = _check_case(
        page,
        f"llm: Llama ({layers} layers × {hidden}), bfloat16 weights",
        params,
        lora,
        8 * lora,
        steps,
    )
    # Without checkpointing: the same weights and state with the other activations.
    rows = _table(page, f"llm: Llama ({layers} layers × {hidden}), bfloat16 weights")
    other = _bytes(rows["activations with gradient checkpointing off"])
    off = total - _bytes(rows["activations (gradient checkpointing on)"]) + other
    assert f"needs {_size(off)}" in page and f"does not fit 24 GiB: {_size(off)} needed" in page
    # The ladder's 8-bit optimizer row: the same step with 8-bit AdamW's state.
    eight_bit = 2 * lora + 2 * 4 * lora / 2048
    row = re.search(r" 2 (\d+\.\d GiB)  8-bit optimizer state", page)
    assert row and abs(_bytes(row.group(1)) - (total - 8 * lora + eight_bit)) <= 0.1 * 2**30


def test_a_backend_without_a_planner(tmp_path, capsys, toy_plugins):
    """`lorakit plan` says so in one line (exit 2); `lorakit train` says it skipped the
    check and trains."""
    from conftest import toy_config

    from lorakit.testing import run_cli

    config = write_config(tmp_path / "toy.yaml", toy_config(tmp_path, max_steps=2))
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--gpu", "24GB")
    assert code == 2 and err.strip() == (
        "lorakit: error: backend 'toy' cannot plan (it has no plan method)"
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


@pytest.mark.usefixtures("real_plugins")
def test_plan_from_hub_ids_in_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants
    from plan_helpers import LLAMA, SD15, llm_config

    from lorakit.planning import make_plan

    home = tmp_path / "hf"
    _hub_cache(home, "someone/tiny-llama", {"config.json": {**LLAMA, "num_hidden_layers": 2}})
    small = {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }
    sd15 = {**SD15, "unet/config.json": {**SD15["unet/config.json"], **small}}
    _hub_cache(home, "someone/tiny-sd", sd15)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    config = load_config(
        write_config(tmp_path / "l.yaml", llm_config(tmp_path, "someone/tiny-llama"))
    )
    plan = make_plan(config, both=False)
    assert plan.model.description.startswith("Llama (2 layers × 128)")
    images = tmp_path / "images"
    images.mkdir()
    data = {
        "task_type": "image-generation",
        "base_model": "someone/tiny-sd",
        "train_data_dir": str(images),
        "batch_size": 1,
        "sd": {"resolution": 64},
    }
    plan = make_plan(load_config(write_config(tmp_path / "s.yaml", data)), both=False)
    assert plan.model.description.startswith("SD1.x UNet") and plan.estimate.activations > 0


@pytest.mark.usefixtures("real_plugins")
def test_optimizer_state_by_optimizer(tmp_path, small_llama):
    """The same step with AdamW, 8-bit AdamW, DAdaptAdam and Prodigy: only the optimizer
    state differs, by the bytes each keeps per trainable parameter."""
    from lorakit.planning import Planner

    data = llm_config(tmp_path, str(small_llama))
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


@pytest.mark.usefixtures("real_plugins")
def test_sharded_runs_are_not_refused(tmp_path, capsys, small_llama):
    """ZeRO-3 / FSDP over several processes shard the weights: the per-process plan is shown,
    never used to refuse; plain DDP is refused as a single process is."""
    from lorakit.cli.plan_cmd import train_check
    from lorakit.errors import UsageError

    data = llm_config(tmp_path, str(small_llama), distributed={"strategy": "deepspeed_zero3"})
    config = load_config(write_config(tmp_path / "c.yaml", data))
    train_check(config, "0.005GB", processes=2)
    assert "(per process, before sharding)" in capsys.readouterr().out
    with pytest.raises(UsageError, match="first config that fits"):
        train_check(config, "0.005GB", processes=1)


@pytest.mark.usefixtures("real_plugins")
def test_llm_preference_plan_matches_the_real_step(tmp_path, tiny_llama):
    """Two rows per pair (ORPO: no reference) against the real step's peak, measured."""
    import json

    from lorakit.planning import make_plan

    words = [f"word{i}" for i in range(97)]
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": " ".join(words[(i + j) % 97] for j in range(40)),
            "rejected": " ".join(words[(i * 3 + j) % 97] for j in range(40)),
        }
        for i in range(40)
    ]
    path = tmp_path / "pairs" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    configs = {}
    for method in ("orpo", "dpo"):
        data = llm_config(
            tmp_path,
            str(tiny_llama),
            train_data_dir=str(path),
            batch_size=2,
            llm={
                "attn_implementation": "eager",
                "method": method,
                "dataset_format": "auto",
                "train_on_inputs": False,
            },
        )
        configs[method] = load_config(write_config(tmp_path / f"{method}.yaml", data))
    from lorakit_llm.plan import planner

    dpo = planner(configs["dpo"])
    assert dpo.batch()["input_ids"].shape[0] == 4  # chosen and rejected rows of 2 pairs
    assert "2 pairs + a reference pass" in dpo.per_step
    plan = make_plan(configs["orpo"])
    assert "2 pairs" in plan.model.per_step and "reference" not in plan.model.per_step
    real = real_peak(configs["orpo"], tmp_path)
    assert within(plan.estimate.total, real), (plan.estimate, real)
