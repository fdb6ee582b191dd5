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

from lorakit_sd.families.flux1.single_file import PREFIX, diffusers_to_bfl
from lorakit_sd.families.ldm import UNET_PREFIX, vae_to_ldm
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
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=width * 2,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        # T5Config passes keys it does not declare on to PreTrainedConfig, which its typed
        # (dataclass) signature does not show
        decoder_start_token_id=0,  # type: ignore[call-arg]
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_vae(shift: float, scale: float, seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_RESOLUTION,
        shift_factor=shift,
        scaling_factor=scale,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_flux(seed: int = 0, guidance: bool = True) -> Any:
    """A FLUX.1-shaped pipeline (dev with ``guidance``, else schnell), random weights."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, t5_tokenizer = tiny_tokenizer(), tiny_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance,
        axes_dims_rope=[4, 4, 8],
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(0.1159, 0.3611, seed + 1),
        text_encoder=_text_encoder(CLIPTextModel, len(tokenizer), 32, seed + 3),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5(len(t5_tokenizer), 32, seed + 4),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def build_tiny_sd3(seed: int = 0) -> Any:
    """An SD3-shaped pipeline (two CLIPs with projection, T5, MMDiT), random weights.

    The CLIPs differ in width (32, 48) as CLIP-L and CLIP-G do, which is how diffusers'
    single-file loader tells them apart, and CLIP-L's projection is the identity, as
    SD3's single files imply (diffusers sets it so when it reads one).
    """
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
        sample_size=TINY_RESOLUTION // 2,
        patch_size=1,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=96,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=32,
    )
    vocab = len(tiny_tokenizer())
    clip_l = _text_encoder(CLIPTextModelWithProjection, vocab, 32, seed + 3)
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(32))
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(0.0609, 1.5305, seed + 1),
        text_encoder=clip_l,
        tokenizer=tiny_tokenizer(),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, vocab, 48, seed + 5),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(len(t5_tokenizer), 96, seed + 4),
        tokenizer_3=t5_tokenizer,
        transformer=transformer,
    )


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


@dataclass
class TinyFolder:
    """Where a tiny model was saved as a diffusers folder (the families without single files
    of their own in the stand-in)."""

    diffusers_dir: Path
    resolution: int = TINY_RESOLUTION
    single_file: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.diffusers_dir

    def load(self) -> Any:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(self.diffusers_dir)


def _cat(state: dict[str, Any], names: list[str]) -> Any:
    import torch

    return torch.cat([state[n] for n in names], dim=0)


def _swap(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def sd3_transformer_to_original(state: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """An SD3 transformer state dict in the original MMDiT layout (``joint_blocks``).

    The inverse of diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers`` for
    models without qk-norm or dual attention (the tiny test model); a test loads the file
    back through ``from_single_file`` and compares outputs.
    """
    out = {
        "pos_embed": state["pos_embed.pos_embed"],
        "x_embedder.proj.weight": state["pos_embed.proj.weight"],
        "x_embedder.proj.bias": state["pos_embed.proj.bias"],
    }
    tops = {
        "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
        "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
        "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
        "context_embedder": "context_embedder",
        "final_layer.linear": "proj_out",
    }
    for kind in ("weight", "bias"):
        for ours, theirs in tops.items():
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"]
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(state[f"norm_out.linear.{kind}"])
        for i in range(num_layers):
            d, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
            last = i == num_layers - 1
            qkv = [f"{d}attn.to_{n}.{kind}" for n in "qkv"]
            ctx = [f"{d}attn.add_{n}_proj.{kind}" for n in "qkv"]
            out[f"{o}x_block.attn.qkv.{kind}"] = _cat(state, qkv)
            out[f"{o}context_block.attn.qkv.{kind}"] = _cat(state, ctx)
            parts = {
                "x_block.attn.proj": "attn.to_out.0",
                "x_block.adaLN_modulation.1": "norm1.linear",
                "x_block.mlp.fc1": "ff.net.0.proj",
                "x_block.mlp.fc2": "ff.net.2",
            }
            if not last:
                parts.update(
                    {
                        "context_block.attn.proj": "attn.to_add_out",
                        "context_block.mlp.fc1": "ff_context.net.0.proj",
                        "context_block.mlp.fc2": "ff_context.net.2",
                        "context_block.adaLN_modulation.1": "norm1_context.linear",
                    }
                )
            for ours, theirs in parts.items():
                out[f"{o}{ours}.{kind}"] = state[f"{d}{theirs}.{kind}"]
            if last:
                norm = state[f"{d}norm1_context.linear.{kind}"]
                out[f"{o}context_block.adaLN_modulation.1.{kind}"] = _swap(norm)
    return out


def write_flux_single_file(pipe: Any, path: Path, gguf: bool = False) -> Path:
    """The transformer alone in BFL's layout, as ``flux1-dev.safetensors`` is (``gguf``:
    as ComfyUI-GGUF's files are, 2-D weights quantized Q8_0, the rest float32)."""
    from safetensors.torch import save_file

    cfg = pipe.transformer.config
    state = diffusers_to_bfl(pipe.transformer.state_dict(), cfg.num_layers, cfg.num_single_layers)
    if not gguf:
        save_file({PREFIX + k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    import gguf as gg

    writer = gg.GGUFWriter(str(path), "flux")
    for key, value in state.items():
        array = value.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            q = gg.quants.quantize(array, gg.GGMLQuantizationType.Q8_0)
            writer.add_tensor(key, q, raw_shape=q.shape, raw_dtype=gg.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_sd3_single_file(pipe: Any, path: Path) -> Path:
    """SD3.5's all-in-one layout: MMDiT, VAE, both CLIPs and T5 in one ``.safetensors``."""
    from safetensors.torch import save_file

    state = {
        UNET_PREFIX + k: v
        for k, v in sd3_transformer_to_original(
            pipe.transformer.state_dict(), pipe.transformer.config.num_layers
        ).items()
    }
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for name, encoder in (
        ("clip_l", pipe.text_encoder),
        ("clip_g", pipe.text_encoder_2),
        ("t5xxl", pipe.text_encoder_3),
    ):
        for key, value in encoder.state_dict().items():
            state[f"text_encoders.{name}.transformer.{key}"] = value
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return path


def build_tiny_flow(
    directory: str | Path, family: str = "flux1", seed: int = 0, guidance: bool = True
) -> TinyFlowModel:
    """Build a tiny FLUX.1 (``guidance``: dev) or SD3 model and save it under ``directory``.

    ``directory/diffusers/`` is the diffusers folder; ``single_file`` is the transformer
    alone in BFL's layout (FLUX.1, ``flux1-tiny.safetensors``) or SD3.5's all-in-one
    original layout (``sd3-tiny.safetensors``).
    """
    directory = Path(directory)
    pipe = build_tiny_flux(seed, guidance) if family == "flux1" else build_tiny_sd3(seed)
    diffusers_dir = directory / "diffusers"
    pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    single = directory / f"{family}-tiny.safetensors"
    if family == "flux1":
        write_flux_single_file(pipe, single)
    else:
        write_sd3_single_file(pipe, single)
    return TinyFlowModel(family, diffusers_dir, single)
