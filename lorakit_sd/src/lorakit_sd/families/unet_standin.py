"""The UNet families' stand-ins: random-weight SD1- and SDXL-shaped models, offline.

Everything here builds in about a second and downloads nothing, so tests, the demo and other
packages can exercise the loading paths a user hits:

- :func:`build_tiny_sd` makes an SD1-shaped (``family="sd1"``) or SDXL-shaped
  (``family="sdxl"``) pipeline with random weights (a two-block UNet, a two-block VAE, one or
  two small CLIP text encoders with a hand-made byte-level BPE vocabulary, a DDPM scheduler)
  and saves it three ways: a diffusers folder, a single-file ``.safetensors`` checkpoint in
  the original SD/SGM key layout (the way users keep ``v1-5-pruned.safetensors``), and a
  config-only diffusers folder (configs, tokenizers, scheduler; no weights) that tells
  ``from_single_file`` the shapes offline (``sd.base_config`` in a lorakit config).
- :func:`write_tiny_images` writes a small image folder with captions as ``metadata.csv``
  (``file_name,text``), ``metadata.jsonl`` or ``.txt`` sidecars.

The SDXL-shaped model keeps SDXL's structure: two text encoders of different widths (the
second with a projection), ``text_time`` added conditioning, linear ``proj_in``, a
cross-attention up block with an upsampler, and two transformer layers in its inner block.
Both tiny UNets have attention at full latent resolution (as SD1 does; SDXL's outer block has
none), so a LoRA on the attention can overfit a few images in a few steps.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import save_safetensors
from lorakit_sd.families.ldm import pipeline_to_ldm
from lorakit_sd.testing import TINY_RESOLUTION, TINY_VAE_FACTOR, _text_encoder, tiny_tokenizer


def build_tiny_pipeline(family: str = "sd1", seed: int = 0) -> Any:
    """An SD1- or SDXL-shaped diffusers pipeline with random weights (in memory)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("sd1", "sdxl"):
        raise ValueError(f"family must be 'sd1' or 'sdxl', not {family!r}")
    tokenizer = tiny_tokenizer()
    vocab_size = len(tokenizer)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type="epsilon",
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_RESOLUTION,
        scaling_factor=0.18215 if family == "sd1" else 0.13025,
    )
    torch.manual_seed(seed + 2)
    if family == "sd1":
        text_encoder = _text_encoder(CLIPTextModel, vocab_size, 32, seed + 3)
        unet = UNet2DConditionModel(
            sample_size=TINY_RESOLUTION // TINY_VAE_FACTOR,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            norm_num_groups=32,
        )
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    text_encoder = _text_encoder(CLIPTextModel, vocab_size, 32, seed + 3)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, vocab_size, 64, seed + 4)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // TINY_VAE_FACTOR,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=32 + 64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
    )


@dataclass
class TinyModel:
    """Where :func:`build_tiny_sd` saved one tiny model, three ways."""

    family: str
    diffusers_dir: Path
    single_file: Path
    config_dir: Path
    resolution: int = TINY_RESOLUTION

    def load(self) -> Any:
        """The pipeline, from the diffusers folder (float32, CPU)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
        return cls.from_pretrained(self.diffusers_dir)


def build_tiny_sd(directory: str | Path, family: str = "sd1", seed: int = 0) -> TinyModel:
    """Build a tiny model and save it under ``directory``.

    ``directory/diffusers/`` is a diffusers folder, ``directory/<family>-tiny.safetensors``
    a single-file checkpoint in the original layout, and ``directory/config/`` the same
    folder without weights (what ``from_single_file(..., config=...)`` reads offline).
    """

    directory = Path(directory)
    pipe = build_tiny_pipeline(family, seed)
    diffusers_dir = directory / "diffusers"
    pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    config_dir = directory / "config"
    if config_dir.exists():
        shutil.rmtree(config_dir)
    shutil.copytree(
        diffusers_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
    )
    single = directory / f"{family}-tiny.safetensors"
    tensors = {k: v.detach().contiguous() for k, v in pipeline_to_ldm(pipe).items()}
    save_safetensors(tensors, single, metadata={"format": "pt"})
    return TinyModel(family, diffusers_dir, single, config_dir)


# -- data -------------------------------------------------------------------------------------
