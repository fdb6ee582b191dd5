"""Tiny, offline FLUX.1 and SD3 test assets: random weights from diffusers' test configs.

:func:`build_tiny_flow` makes a FLUX.1-shaped (``family="flux1"``, dev with a guidance
embedding or schnell without) or SD3-shaped (``family="sd3"``) pipeline: a one- or two-block
transformer, a two-block 16-channel VAE with FLUX.1's / SD3's shift and scaling factors, tiny
CLIP encoders (:func:`lorakit_sd.testing.tiny_tokenizer`) and a tiny T5 encoder with a
Unigram tokenizer built from the test corpus. It is saved as a diffusers folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit_sd.testing import CORPUS, TINY_RESOLUTION, _text_encoder, tiny_tokenizer


def tiny_t5_tokenizer() -> Any:
    """A T5 tokenizer (Unigram) over the corpus words and single letters."""
    from transformers import T5Tokenizer

    words = sorted({w for line in CORPUS for w in line.replace(",", " ,").split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz,.▁"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5(vocab_size: int, width: int, seed: int) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=width * 2, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_vae(shift: float, scale: float, seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=TINY_RESOLUTION,
        shift_factor=shift, scaling_factor=scale, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip


def build_tiny_flux(seed: int = 0, guidance: bool = True) -> Any:
    """A FLUX.1-shaped pipeline (dev with ``guidance``, else schnell), random weights."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, t5_tokenizer = tiny_tokenizer(), tiny_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=guidance, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    return FluxPipeline(
        scheduler=scheduler, vae=tiny_vae(0.1159, 0.3611, seed + 1),
        text_encoder=_text_encoder(CLIPTextModel, len(tokenizer), 32, seed + 3),
        tokenizer=tokenizer, text_encoder_2=tiny_t5(len(t5_tokenizer), 32, seed + 4),
        tokenizer_2=t5_tokenizer, transformer=transformer,
    )  # fmt: skip


def build_tiny_sd3(seed: int = 0) -> Any:
    """An SD3-shaped pipeline (two CLIPs with projection, T5, MMDiT), random weights."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed + 2)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 2, patch_size=1, in_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32,
    )  # fmt: skip
    vocab = len(tiny_tokenizer())
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(0.0609, 1.5305, seed + 1),
        text_encoder=_text_encoder(CLIPTextModelWithProjection, vocab, 32, seed + 3),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, vocab, 32, seed + 5),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(len(t5_tokenizer), 64, seed + 4), tokenizer_3=t5_tokenizer,
        transformer=transformer,
    )  # fmt: skip


@dataclass
class TinyFlowModel:
    """Where :func:`build_tiny_flow` saved a tiny FLUX.1 / SD3 model."""

    family: str
    diffusers_dir: Path
    single_file: Path | None = None
    resolution: int = TINY_RESOLUTION

    @property
    def config_dir(self) -> Path:
        """The folder single files take their other parts from (the full pipeline)."""
        return self.diffusers_dir

    def load(self) -> Any:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(self.diffusers_dir)


def build_tiny_flow(
    directory: str | Path, family: str = "flux1", seed: int = 0, guidance: bool = True
) -> TinyFlowModel:
    """Build a tiny FLUX.1 (``guidance``: dev) or SD3 model and save it under ``directory``.

    ``directory/diffusers/`` is the diffusers folder; ``single_file`` is the transformer
    alone as BFL's layout (FLUX.1) or the all-in-one original layout (SD3), written by
    :mod:`lorakit_sd.flow_files` where that conversion exists.
    """
    directory = Path(directory)
    pipe = build_tiny_flux(seed, guidance) if family == "flux1" else build_tiny_sd3(seed)
    diffusers_dir = directory / "diffusers"
    pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    return TinyFlowModel(family, diffusers_dir)
