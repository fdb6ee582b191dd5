"""SD1 single files whose CLIP keys lack the ``text_model.`` level (NAI-derived merges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError
from lorakit_sd.families.ldm import SD1_TE_PREFIX
from lorakit_sd.models import offline


def bare_text_encoder(path: Path, keys: list[str], config: str) -> dict[str, Any]:
    """``{"text_encoder": model}`` for SD1 files whose CLIP keys lack ``text_model.``.

    Some SD1 checkpoints (NAI-derived merges among them) store the text encoder as
    ``cond_stage_model.transformer.embeddings...``: diffusers' single-file loader calls its
    weights missing. Those keys are exactly transformers' ``CLIPTextModel`` names, so the
    encoder is built from the config's ``text_encoder`` and loaded here, then handed over.
    """
    bare = [
        k
        for k in keys
        if k.startswith(SD1_TE_PREFIX) and not k.startswith(SD1_TE_PREFIX + "text_model.")
    ]
    if not bare:
        return {}
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    te_config = CLIPTextConfig.from_pretrained(
        config, subfolder="text_encoder", local_files_only=offline() or Path(config).is_dir()
    )
    encoder = CLIPTextModel(te_config)
    with safe_open(str(path), framework="pt") as f:
        state = {k[len(SD1_TE_PREFIX) :]: f.get_tensor(k) for k in bare}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        sample = ", ".join((missing or unexpected)[:2])
        raise UsageError(f"{path}: the text encoder's weights do not fit its config ({sample})")
    return {"text_encoder": encoder.eval()}
