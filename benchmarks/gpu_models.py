"""The GPU suite's models (see gpu_suite.py): each architecture's published config with
random weights, built on the target device in bf16 (the dry run: the tiny test models on
CPU), saved as the folder a user points ``base_model`` at."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def clip_text(cls: Any, vocab_eos: tuple[int, int], hidden: int, layers: int, act: str) -> Any:
    from transformers import CLIPTextConfig

    vocab, eos = vocab_eos
    return cls(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            max_position_embeddings=77,
            hidden_act=act,
            projection_dim=hidden,
            bos_token_id=eos - 1,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def sd_vae(latent: int, scale: float, shift: float | None = None) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=1024,
        scaling_factor=scale,
        shift_factor=shift,
        use_quant_conv=shift is None,
        use_post_quant_conv=shift is None,
    )


def ddpm() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )


def build_sd(name: str) -> Any:
    """SD1.5's or SDXL's pipeline: the published component configs, random weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from lorakit_sd.testing import tiny_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = tiny_tokenizer()
    ids = (49408, tok.eos_token_id)
    clip_l = clip_text(CLIPTextModel, ids, 768, 12, "quick_gelu")
    if name == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        return StableDiffusionPipeline(
            vae=sd_vae(4, 0.18215),
            text_encoder=clip_l,
            tokenizer=tok,
            unet=unet,
            scheduler=ddpm(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    clip_g = clip_text(CLIPTextModelWithProjection, ids, 1280, 32, "gelu")
    return StableDiffusionXLPipeline(
        vae=sd_vae(4, 0.13025),
        text_encoder=clip_l,
        text_encoder_2=clip_g,
        tokenizer=tok,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=ddpm(),
        force_zeros_for_empty_prompt=False,
    )


def build_flux() -> Any:
    """FLUX.1-dev's pipeline: its transformer, CLIP-L, T5-XXL and VAE configs, random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from lorakit_sd.families.transformer_standin import tiny_t5_tokenizer
    from lorakit_sd.testing import tiny_tokenizer
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tok = tiny_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=32128,
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=sd_vae(16, 0.3611, 0.1159),
        text_encoder=clip_text(CLIPTextModel, (49408, tok.eos_token_id), 768, 12, "quick_gelu"),
        tokenizer=tok,
        text_encoder_2=t5,
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )


def build_llama(name: str, directory: Path) -> Any:
    """Llama-2-7B's or Llama-3-8B's config with random weights, and the test tokenizer."""
    from lorakit_llm.testing import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    shape = (
        {
            "intermediate_size": 11008,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
        }
        if name == "llama2-7b"
        else {
            "intermediate_size": 14336,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "rope_theta": 500000.0,
            "max_position_embeddings": 8192,
        }
    )
    config = LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    tok.save_pretrained(directory)
    return LlamaForCausalLM(config)


def unet_forward_flops(unet: Any, side: int, pipe: Any) -> int:
    """Forward FLOPs of one image through ``unet`` at ``side`` px (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(unet.parameters())
    side //= pipe.vae_scale_factor
    latents = torch.zeros(1, 4, side, side, device=p.device, dtype=p.dtype)
    context = torch.zeros(1, 77, unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        added = {
            "text_embeds": torch.zeros(1, pooled, device=p.device, dtype=p.dtype),
            "time_ids": torch.zeros(1, 6, device=p.device, dtype=p.dtype),
        }
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(latents, torch.tensor([500], device=p.device), context, added_cond_kwargs=added)
    return int(counter.get_total_flops())


def count_n(model: Any, embedding: Any | None = None) -> int:
    """Parameters tokens pass through, each tensor once: all but the input ``embedding``
    table, unless that table is also the (tied) LM head."""
    seen = {id(p): p.numel() for p in model.parameters()}
    if embedding is not None:
        head = getattr(model.get_output_embeddings(), "weight", None)
        if head is not embedding.weight:
            seen.pop(id(embedding.weight), None)
    return sum(seen.values())


def build(model: str, root: Path, dry: bool, device: str, side: int) -> dict[str, Any]:
    """Write ``model`` under ``root``; its path and what the FLOPs formulas need (a UNet's
    forward FLOPs at ``side`` px)."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if dry else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipe = llm = None
            if dry and model.startswith("llama"):
                from lorakit_llm.testing import build_tiny_llama
                from transformers import AutoModelForCausalLM

                build_tiny_llama(root, hidden_size=64, num_layers=2)
                llm = AutoModelForCausalLM.from_pretrained(root)
            elif dry:
                from lorakit_sd.families.transformer_standin import build_tiny_flux
                from lorakit_sd.families.unet_standin import build_tiny_pipeline

                pipe = (
                    build_tiny_flux()
                    if model == "flux1-dev"
                    else build_tiny_pipeline("sd1" if model == "sd15" else "sdxl")
                )
            elif model.startswith("llama"):
                llm = build_llama(model, root)
            else:
                pipe = build_flux() if model == "flux1-dev" else build_sd(model)
            if llm is not None:
                info = {"n": count_n(llm, llm.get_input_embeddings())}
                llm.save_pretrained(root)
            else:
                assert pipe is not None
                info = {"n": count_n(getattr(pipe, "unet", None) or pipe.transformer)}
                if model != "flux1-dev":
                    info["forward_flops"] = unet_forward_flops(pipe.unet, side, pipe)
                pipe.save_pretrained(root, safe_serialization=True)
    finally:
        torch.set_default_dtype(previous)
    del pipe, llm
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"path": str(root), **info}
