"""The llm backend's speed options change nothing but speed (issue 29, item 2):
``torch_compile`` trains to eager's losses and LoRA; the GPU-only options refuse in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_helpers import cli, llm_config, one_thread

from lorakit.config import load_config
from lorakit.engine import train


def _run(
    assets: dict[str, Path], data: Path, out: Path, **keys: Any
) -> tuple[list[float], dict[str, Any]]:
    from safetensors.torch import load_file

    config = load_config(
        data=llm_config(
            assets,
            out,
            train_data_dir=str(data),
            max_steps=3,
            batch_size=4,
            learning_rate=1e-2,
            **keys,
        )
    )
    with one_thread():
        train(config, progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    return losses, load_file(out / "adapter" / "adapter_model.safetensors")


def test_torch_compile_trains_as_eager(assets: dict[str, Path], tmp_path: Path) -> None:
    """Three steps through torch.compile against three eager ones: the same per-step losses
    within 1e-4 (relative) and the same saved LoRA within 1e-4.

    The backend is aot_eager (TorchDynamo's graph capture and AOTAutograd's joint graph, as
    inductor gets them): inductor's C++ code generation takes ~90 s on a 2-core CPU for this
    model (it passed the same check there). The rows share one shape: one compilation."""
    import torch

    data = tmp_path / "data.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eager_losses, eager = _run(assets, data, tmp_path / "eager")
    torch._dynamo.reset()
    compiled_losses, compiled = _run(
        assets, data, tmp_path / "compiled", torch_compile=True, torch_compile_backend="aot_eager"
    )
    torch._dynamo.reset()
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager.keys() == compiled.keys()
    for key, tensor in eager.items():
        assert torch.allclose(compiled[key], tensor, atol=1e-4, rtol=1e-4), key
    # the LoRA moved: the comparison is not between two untrained adapters
    assert any(k.endswith("lora_B.weight") and eager[k].abs().max() > 0 for k in eager)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("llm.kernels", "liger", "llm.kernels: liger runs on a CUDA GPU"),
        (
            "llm.attn_implementation",
            "flash_attention_2",
            "llm.attn_implementation: flash_attention_2 runs on a CUDA GPU",
        ),
    ],
)
def test_gpu_options_refused_on_cpu_before_loading(
    assets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: str,
    words: str,
) -> None:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(llm_config(assets, tmp_path / "out")))
    code = cli("train", "--config", str(path), "--set", f"{key}={value}")
    err = capsys.readouterr().err
    assert code == 2
    assert words in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_package_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU without the package: one line naming what to install."""
    import importlib.util

    from lorakit_llm.section import LLMSection

    from lorakit_llm import speed

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("liger_kernel", "flash_attn") else real(name, *a),
    )
    with pytest.raises(Exception, match="liger-kernel: pip install liger-kernel"):
        speed.check(LLMSection(kernels="liger"), cuda=True)
    with pytest.raises(Exception, match="flash-attn: pip install flash-attn"):
        speed.check(LLMSection(attn_implementation="flash_attention_2"), cuda=True)
    speed.check(LLMSection(attn_implementation="sdpa"), cuda=False)  # nothing to refuse
