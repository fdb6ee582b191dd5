"""A GGUF base (F32, and Q8_0 written by the ``gguf`` package's quantizer): merge, plan,
inspect, and the messages around them.

Judges: PEFT's ``PeftModel.from_pretrained`` on transformers' own GGUF loader (the logits a
merged folder must reproduce when plain ``AutoModelForCausalLM.from_pretrained`` reads it),
the base folder's tokenizer counting the rows' tokens, and ``gguf.GGUFReader``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import cli, probe_ids

from lorakit.config import load_config


@pytest.fixture(scope="module")
def adapter(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT adapter on q, k, v, o with non-zero B (so merging changes every weight)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(assets["model"], dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    folder = tmp_path_factory.mktemp("gguf-adapter") / "adapter"
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def q8_gguf(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorakit_llm.testing import write_gguf

    return write_gguf(
        assets["model"], tmp_path_factory.mktemp("q8") / "tiny-llama.q8_0.gguf", dtype="q8_0"
    )


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_merge_on_a_gguf_base_writes_a_plain_model_with_the_peft_logits(
    kind: str, assets: dict[str, Path], q8_gguf: Path, adapter: Path, tmp_path: Path, capfd: Any
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    gguf = assets["gguf"] if kind == "f32" else q8_gguf
    out = tmp_path / "merged"
    capfd.readouterr()
    code = cli(
        "merge",
        "--base",
        str(gguf),
        "--adapter",
        str(adapter),
        "-o",
        str(out),
        "--dtype",
        "float32",
    )
    err = capfd.readouterr().err
    assert code == 0, err
    assert f"reading GGUF {gguf.name} (21 tensors, dequantizing to float32)" in err
    noises = ("Converting and de-quantizing", "Pass `dtype", "Dequantizing the whole", "shards")
    for noise in noises:
        assert noise not in err, err
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((out / "lorakit.json").read_text())["base_gguf_file"] == gguf.name

    ids = probe_ids(assets["model"])
    base = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        want = PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert merged.dtype == torch.float32
    assert float((got - want).abs().max()) < 1e-4
    assert float((got - plain).abs().max()) > 1e-2  # the adapter is in the weights


def _rows(n: int, folder: Path) -> Path:
    from lorakit_llm.testing import write_qa_jsonl

    return write_qa_jsonl(folder / "train.jsonl", n)


def _plan_config(base: Path, data: Path, out: Path, max_seq_len: int = 2048) -> Any:
    return load_config(
        data={
            "task_type": "text-generation",
            "base_model": str(base),
            "train_data_dir": str(data),
            "output_dir": str(out),
            "batch_size": 4,
            "llm": {"max_seq_len": max_seq_len},
        },
        check_paths=False,
    )


def test_plan_reads_the_tokenizer_inside_the_gguf(
    assets: dict[str, Path], q8_gguf: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from lorakit.planning import make_plan

    data = _rows(24, tmp_path)
    plan = make_plan(_plan_config(q8_gguf, data, tmp_path / "o"), both=False)
    # The test's own count: the folder's tokenizer, the chat template, each QA row.
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    lengths = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ]
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    assert plan.model.resolution == max(lengths) < 100
    assert plan.model.per_step == f"{4 * max(lengths):,} tokens (4 × {max(lengths)})"
    assert plan.model.caveat == "" and "worst case" not in plan.summary()
    folder = make_plan(_plan_config(assets["model"], data, tmp_path / "o"), both=False)
    assert folder.estimate.activations == plan.estimate.activations


def test_a_worst_case_plan_says_so_and_never_refuses(
    assets: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    from lorakit.cli.plan_cmd import train_check

    alone = tmp_path / "model"
    alone.mkdir()
    (alone / "config.json").write_text((assets["model"] / "config.json").read_text())
    config = _plan_config(alone, _rows(4, tmp_path), tmp_path / "o", max_seq_len=512)
    train_check(config, "0.00001GB")  # far too small: a real plan would refuse
    line = capsys.readouterr().out.strip()
    assert "does NOT fit" in line
    assert line.endswith(
        "[worst case: every row 512 tokens (llm.max_seq_len); no tokenizer files beside "
        "config.json]"
    ), line


def test_inspect_a_gguf_adapter_and_a_run_folder(
    assets: dict[str, Path], adapter: Path, tmp_path: Path, capsys: Any
) -> None:
    import gguf

    from lorakit.diagnostics.inspect import inspect_path

    target = tmp_path / "x-lora.gguf"
    assert (
        cli(
            "export", str(adapter), "--to", "gguf", "--base", str(assets["gguf"]), "-o", str(target)
        )
        == 0
    )
    reader = gguf.GGUFReader(str(target))
    pairs = [t for t in reader.tensors if t.name.endswith(".lora_a")]
    report = inspect_path(target)
    assert report.format.startswith("GGUF LoRA adapter (llama")
    assert report.modules == len(pairs) == 8  # 2 layers × q, k, v, o
    assert report.ranks == [4] and report.alphas == [8.0]
    assert report.targets == ["attn_k", "attn_output", "attn_q", "attn_v"]
    assert cli("inspect", str(target)) == 0
    out = capsys.readouterr().out
    assert "alpha:       8 (scale alpha/rank = 2)" in out and "not a valid" not in out

    run = tmp_path / "run"
    (run / "checkpoints" / "step-3").mkdir(parents=True)
    (run / "adapter").mkdir()
    for file in adapter.iterdir():
        (run / "adapter" / file.name).write_bytes(file.read_bytes())
    record = {
        "lorakit": "0.1.0",
        "backend": "llm",
        "status": "finished",
        "steps": 3,
        "final_loss": 1.25,
    }
    (run / "run.json").write_text(json.dumps(record))
    report = inspect_path(run)
    assert report.format.startswith("lorakit run folder (llm): PEFT adapter (LORA")
    assert report.ranks == [4] and report.alphas == [8.0] and report.modules == 8
    assert "run: finished (3 steps, final loss 1.25) [run.json]" in report.notes
    assert "checkpoints: 1 (latest step-3)" in report.notes
    base = inspect_path(assets["gguf"])
    assert base.format == "GGUF model (llama)" and "not a LoRA adapter" in base.notes[0]


def test_export_help_names_gguf(capsys: Any) -> None:
    assert cli("export", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "gguf" in out and "kohya" in out
