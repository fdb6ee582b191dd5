"""``lorakit export --to gguf``: a llama.cpp LoRA adapter file, read back with gguf's reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llm_helpers import cli, llm_config


@pytest.fixture(scope="module")
def lora_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with LoRA on q, k, v and o (so the q/k head permutation is exercised)."""
    from lorakit.config import load_config
    from lorakit.engine import train

    out = tmp_path_factory.mktemp("gguf-export") / "qkvo"
    data = llm_config(
        assets,
        out,
        max_steps=3,
        lora_alpha=12,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    return train(load_config(data=data), progress=False).output_dir


def _fields(reader: Any) -> dict[str, Any]:
    out = {}
    for name, field in reader.fields.items():
        if not field.types:
            continue
        out[name] = field.contents()
    return out


def test_export_writes_a_llama_cpp_lora_that_maps_onto_the_base(
    lora_run: Path, assets: dict[str, Path], tmp_path: Path
) -> None:
    import gguf
    from safetensors.numpy import load_file

    target = tmp_path / "qkvo-lora.gguf"
    assert (
        cli("export", lora_run / "adapter", "--to", "gguf", "--base", assets["gguf"], "-o", target)
        == 0
    )
    reader = gguf.GGUFReader(str(target))
    fields = _fields(reader)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.lora.alpha"] == pytest.approx(12.0)

    base = gguf.GGUFReader(str(assets["gguf"]))
    base_tensors = {t.name: t for t in base.tensors}
    lora = {t.name: t for t in reader.tensors}
    # 2 layers × q, k, v, o × (A, B), each onto a base tensor of the right shape.
    assert len(lora) == 16
    for name in lora:
        stem, _, part = name.rpartition(".")
        assert part in ("lora_a", "lora_b") and stem in base_tensors, name
        shape = [int(x) for x in base_tensors[stem].shape]  # GGUF order: [in, out]
        a, b = lora[f"{stem}.lora_a"], lora[f"{stem}.lora_b"]
        assert int(a.shape[0]) == shape[0] and int(b.shape[1]) == shape[1]
        assert int(a.shape[1]) == int(b.shape[0]) == 8  # the rank

    # Applying it as llama.cpp does (W + alpha/r · B·A, on the base GGUF's q/k row order)
    # gives the merged model's weights in that order: the permutation is right.
    merged = tmp_path / "merged"
    assert (
        cli(
            "merge",
            "--base",
            assets["model"],
            "--adapter",
            lora_run,
            "-o",
            merged,
            "--dtype",
            "float32",
        )
        == 0
    )
    from lorakit_llm.testing import _permute_heads

    weights = load_file(str(merged / "model.safetensors"))
    names = {
        "attn_q": ("q_proj", 4),
        "attn_k": ("k_proj", 2),
        "attn_v": ("v_proj", 0),
        "attn_output": ("o_proj", 0),
    }
    for layer in range(2):
        for short, (module, heads) in names.items():
            stem = f"blk.{layer}.{short}.weight"
            w = np.asarray(base_tensors[stem].data, dtype=np.float32)  # [out, in] in numpy
            a = np.asarray(lora[f"{stem}.lora_a"].data, dtype=np.float32)
            b = np.asarray(lora[f"{stem}.lora_b"].data, dtype=np.float32)
            applied = w + 12.0 / 8 * (b @ a)
            expected = weights[f"model.layers.{layer}.self_attn.{module}.weight"]
            if heads:
                expected = _permute_heads(expected, heads)
            assert np.abs(applied - expected).max() < 1e-5, stem


def test_export_finds_the_base_of_a_gguf_run_and_refuses_what_llama_cpp_cannot_apply(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lorakit.config import load_config
    from lorakit.engine import train

    run = train(
        load_config(
            data=llm_config(assets, tmp_path / "g", max_steps=1, base_model=str(assets["gguf"]))
        ),
        progress=False,
    ).output_dir
    assert cli("export", run, "--to", "gguf") == 0  # base from adapter_config + lorakit.json
    assert (run / "g-lora.gguf").is_file()
    dora = train(
        load_config(data=llm_config(assets, tmp_path / "d", max_steps=1, llm={"use_dora": True})),
        progress=False,
    ).output_dir
    capsys.readouterr()
    assert cli("export", dora, "--to", "gguf") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DoRA" in err


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installable here (the package index serves no wheel for it)",
)
def test_llama_cpp_applies_the_exported_lora(
    lora_run: Path, assets: dict[str, Path], tmp_path: Path
) -> None:  # pragma: no cover - needs llama-cpp-python
    import llama_cpp

    target = tmp_path / "lora.gguf"
    assert cli("export", lora_run, "--to", "gguf", "--base", assets["gguf"], "-o", target) == 0
    prompt = [1, 10, 20, 30]

    def last_logits(**kwargs: Any) -> np.ndarray:
        model = llama_cpp.Llama(str(assets["gguf"]), logits_all=True, verbose=False, **kwargs)
        model.eval(prompt)
        return np.array(model.scores[len(prompt) - 1])

    base, tuned = last_logits(), last_logits(lora_path=str(target))
    assert np.abs(base - tuned).max() > 1e-3
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(assets["model"]), lora_run / "adapter"
    )
    with torch.no_grad():
        expected = peft(input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.abs(tuned - expected).max() < 1e-2
