"""A tiny random Wan 2.1 text-to-video model with the real configs' shapes, scaled down.

Wan2.1-T2V-1.3B has 12 heads of 128 (width 1536), an FFN 5.8 times as wide, patch (1, 2, 2),
RMS q/k norm across heads and a 256-wide timestep embedding, reading UMT5-XXL (width 4096)
captions; its VAE compresses 8x in space and 4x in time into 16 channels; its scheduler is
UniPC in flow-prediction mode with shift 3. The stand-in keeps every structural choice at
2 heads of 16, two blocks, a 32-wide two-layer UMT5 and an 8-channel VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families.transformer_standin import TinyFlowModel

#: the stand-in's training side (pixels) and the frame counts it is tested with
TINY_RESOLUTION = 32


def tiny_transformer(
    seed: int, in_channels: int = 16, out_channels: int = 16, image_dim: int | None = None
) -> Any:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=192,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=image_dim,
        added_kv_proj_dim=32 if image_dim else None,
    )


def tiny_vae(seed: int, five_b: bool) -> Any:
    """Wan 2.1's VAE (16 channels, 8x space); ``five_b``: Wan 2.2's (48 channels, 16x space:
    2x2 pixel patches, residual blocks)."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    five: dict[str, Any] = {}
    if five_b:
        five = {"in_channels": 12, "out_channels": 12, "is_residual": True, "patch_size": 2}
        five.update(scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=48 if five_b else 16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        **five,
    )


def tiny_image_encoder(seed: int) -> dict[str, Any]:
    """Wan 2.1 I2V's CLIP image encoder (ViT-H: 1280 wide, read at its penultimate layer)
    and processor, at 32 wide on 32-pixel images."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return {"image_encoder": CLIPVisionModel(config).eval(), "image_processor": processor}


def build_tiny_wan_pipeline(
    seed: int = 0,
    experts: bool = False,
    i2v: bool = False,
    five_b: bool = False,
    clip: bool = False,
) -> Any:
    """Wan 2.1 T2V's shape; ``experts``: Wan 2.2 A14B's, a high-noise ``transformer`` and a
    low-noise ``transformer_2`` switched at ``boundary_ratio`` (0.875; image-to-video 0.9);
    ``i2v``: Wan 2.2 I2V A14B's (36 input channels: the noisy latents, the first-frame mask
    and its latents; no CLIP image encoder); ``five_b``: Wan 2.2 TI2V-5B's (48-channel latents
    of the 16x VAE, per-token timesteps) used for text-to-video; ``clip`` (with ``i2v``): Wan
    2.1 I2V's, whose transformer also reads the first frame's CLIP image tokens."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from lorakit_sd.families.transformer_standin import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()
    vae = tiny_vae(seed, five_b)
    latent = 48 if five_b else 16
    channels = 36 if i2v else latent
    transformer = tiny_transformer(seed + 1, channels, latent, 32 if clip else None)
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(config).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    two: dict[str, Any] = {}
    if experts:
        two = {"transformer_2": tiny_transformer(seed + 3, channels)}
        two["boundary_ratio"] = 0.9 if i2v else 0.875
    parts = {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae}
    parts.update(transformer=transformer, scheduler=scheduler, **two)
    if five_b:
        parts["expand_timesteps"] = True
    if clip:
        parts.update(tiny_image_encoder(seed + 4))
    return WanImageToVideoPipeline(**parts) if i2v else WanPipeline(**parts)


def build_tiny_wan(
    directory: str | Path,
    seed: int = 0,
    experts: bool = False,
    i2v: bool = False,
    five_b: bool = False,
    clip: bool = False,
) -> TinyFlowModel:
    """Build the stand-in (``experts``: two, as Wan 2.2 A14B; ``i2v``: image-to-video) and
    save it as a diffusers folder under ``directory/diffusers``, and its transformer in the
    original layout as ``directory/wan-tiny.safetensors``."""
    directory = Path(directory)
    pipe = build_tiny_wan_pipeline(seed, experts, i2v, five_b, clip)
    target = directory / "diffusers"
    pipe.save_pretrained(target, safe_serialization=True)
    single = directory / "wan-tiny.safetensors"
    write_original_transformer(pipe.transformer, single)
    return TinyFlowModel("wan", target, single, resolution=TINY_RESOLUTION)


def write_original_transformer(transformer: Any, path: Path) -> Path:
    """The transformer alone in the original layout (as ComfyUI's diffusion-model files)."""
    from safetensors.torch import save_file

    from lorakit_sd.families.wan.single_file import to_original

    state = to_original(transformer.state_dict())
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return path
