"""The shipped llm templates, as ``lorakit config init`` writes them, train (or refuse) on CPU.

Only the model path, data path, sequence length, step count and output folder are replaced.
PEFT is the judge of the files: ``PeftModel.from_pretrained`` reproduces the trained logits.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import lorakit
from lorakit.testing import run_cli


def _template(tmp_path: Path, assets: dict[str, Path], name: str, **llm: Any) -> Path:
    from lorakit.config.templates import template_text

    data = yaml.safe_load(template_text("llm", name))
    data.update(
        base_model=str(assets["model"]),
        train_data_dir=str(assets["qa"]),
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        save_steps=6,
    )
    data["llm"].update(max_seq_len=128, **llm)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _train(capsys: Any, config: Path) -> tuple[int, str]:
    old = os.umask(0o027)
    try:
        code, out, err = run_cli(capsys, "train", "--config", config)
    finally:
        os.umask(old)
    return code, out + err


class _Capture:
    """Keeps what the test compares: DoRA magnitudes at the start, scalings, magnitudes,
    logits and dtype at the end."""

    def __init__(self, seen: dict[str, Any], ids: Any) -> None:
        self.seen, self.ids = seen, ids

    @lorakit.hookimpl
    def on_train_start(self, run: Any) -> None:
        self.seen["magnitude0"] = {
            n: p.detach().clone()
            for n, p in run.backend.model.named_parameters()
            if "lora_magnitude_vector" in n
        }

    @lorakit.hookimpl
    def on_train_end(self, run: Any, outputs: list[str]) -> None:
        model = run.backend.model
        self.seen["scaling"] = [
            m.scaling["default"]
            for m in model.modules()
            if hasattr(m, "scaling") and isinstance(m.scaling, dict) and "default" in m.scaling
        ]  # noqa: E501
        self.seen["magnitude"] = {
            n: p.detach().clone()
            for n, p in model.named_parameters()
            if "lora_magnitude_vector" in n
        }
        self.seen["logits"] = _logits(model, self.ids).clone()
        self.seen["dtype"] = next(model.base_model.parameters()).dtype


def _assert_umask_027(out: Path) -> None:
    """Every file of the run, the adapter and the checkpoints follows the umask (027)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert any("checkpoints" in p.parts for p in files)
    wrong = [str(p) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o640]
    assert not wrong, wrong
    folders = [p for p in out.rglob("*") if p.is_dir()]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o750 for p in folders), folders


@pytest.mark.parametrize("variant", ["rslora", "dora"])
def test_7b_template_trains_and_peft_reproduces_it(assets, tmp_path, capsys, variant):
    from llm_helpers import probe_ids
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    options = {"use_rslora": True} if variant == "rslora" else {"use_dora": True}
    seen: dict[str, Any] = {}
    ids = probe_ids(assets["model"])

    from lorakit.plugins import get_plugins

    plugins = get_plugins()
    plugins.add(_Capture(seen, ids), name="capture")
    try:
        code, text = _train(capsys, _template(tmp_path, assets, "7b", **options))
    finally:
        plugins.pm.unregister(name="capture")
        plugins.infos.pop("capture", None)
    assert code == 0, text
    assert "Setting accelerator" not in text
    out = tmp_path / "out"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    if variant == "rslora":  # rsLoRA: alpha / sqrt(r), not alpha / r
        assert config["use_rslora"] is True
        assert seen["scaling"] and all(
            s == pytest.approx(alpha / math.sqrt(r)) for s in seen["scaling"]
        )
        assert alpha / math.sqrt(r) != pytest.approx(alpha / r)
    else:
        assert config["use_dora"] is True and seen["magnitude"]
        changed = [
            n
            for n in seen["magnitude"]
            if not torch.equal(seen["magnitude"][n], seen["magnitude0"][n])
        ]
        assert len(changed) == len(seen["magnitude"])
    # the template trains a bf16 base (torch_dtype auto under mixed_precision bf16)
    # in bf16, so judged against how far training moved the logits from the base's
    base = AutoModelForCausalLM.from_pretrained(assets["model"], dtype=seen["dtype"])
    before = _logits(base, ids).float()
    loaded = PeftModel.from_pretrained(base, out / "adapter")
    trained = seen["logits"].float()
    moved = (trained - before).abs().max()
    assert (_logits(loaded, ids).float() - trained).abs().max() < 0.1 * moved
    _assert_umask_027(out)


def test_qlora_template_refuses_on_cpu_in_one_line(assets, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs QLoRA")
    code, text = _train(capsys, _template(tmp_path, assets, "qlora"))
    assert code == 2
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "load_in_4bit" in lines[0], text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()
