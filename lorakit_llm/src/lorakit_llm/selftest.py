"""``lorakit selftest``'s reload check for the llm backend, with the real clients.

The exported adapter goes through PEFT's ``PeftModel.from_pretrained`` onto a freshly
loaded base: every tensor of the file must land in the model unchanged, and the adapter
must change the model's logits. The base is also written as a GGUF file and read back
through transformers' GGUF loader, which must give the same logits, and the adapter is
merged into that GGUF base (``lorakit merge``): plain ``from_pretrained`` on the merged
folder must give the PEFT model's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def verify(output_dir: Path, config: Any) -> str:
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lorakit_llm.loading import load_base
    from lorakit_llm.testing import write_gguf

    adapter = Path(output_dir) / "adapter"
    base, tokenizer = load_base(config.train.base_model, dtype=torch.float32)
    ids = tokenizer("What is the capital of France?", return_tensors="pt").input_ids
    with torch.no_grad():
        before = base(ids, use_cache=False).logits
    model = PeftModel.from_pretrained(base, str(adapter))
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    if set(saved) != set(loaded):
        extra = sorted(set(saved) ^ set(loaded))[:3]
        raise RuntimeError(f"adapter keys do not match the model (e.g. {extra})")
    worst = max(float((saved[k].float() - loaded[k].float()).abs().max()) for k in saved)
    if worst > 0:
        raise RuntimeError(f"PEFT loaded other values than the file holds ({worst:.2e})")
    with torch.no_grad():
        after = model(input_ids=ids, use_cache=False).logits
    moved = float((after - before).abs().max())
    if not torch.isfinite(after).all() or moved == 0:
        raise RuntimeError("the reloaded adapter does not change the model")
    gguf = write_gguf(config.train.base_model, Path(output_dir) / "selftest-base.gguf")
    from_gguf, _ = load_base(str(gguf), dtype=torch.float32)
    with torch.no_grad():
        gap = float((from_gguf(ids, use_cache=False).logits - before).abs().max())
    if gap > 1e-4:
        raise RuntimeError(f"the GGUF base gives other logits ({gap:.2e})")
    merged_gap = _merge_gap(gguf, adapter, ids, after)
    gguf.unlink()
    return (
        f"PeftModel.from_pretrained: {len(saved)} tensors, logits move by {moved:.2e}; "
        f"GGUF base logits within {gap:.0e}; merged on the GGUF base within {merged_gap:.0e}"
    )


def _merge_gap(gguf: Path, adapter: Path, ids: Any, want: Any) -> float:
    """``lorakit merge`` on the GGUF base, read back by plain ``from_pretrained``: how far its
    logits are from the PEFT model's ``want``."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from lorakit_llm.export import merge_command

    folder = merge_command(
        str(gguf), [(str(adapter), 1.0)], gguf.parent / "selftest-merged", "float32"
    )
    try:
        merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            gap = float((merged(ids, use_cache=False).logits - want).abs().max())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if gap > 1e-4:
        raise RuntimeError(f"the model merged on a GGUF base gives other logits ({gap:.2e})")
    return gap
