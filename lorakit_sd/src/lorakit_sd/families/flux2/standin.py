"""Tiny random-weight FLUX.2 models (dev and klein), built offline in about a second.

Shaped after the real configs, scaled down: FLUX.2-dev has 8 double-stream and 48
single-stream blocks (1:6), 48 heads of 128, a guidance embedding, and reads hidden states
10, 20 and 30 of its Mistral-3 encoder (so ``joint_attention_dim`` is three times the
encoder's width); klein (4B) has 5 and 20 blocks (1:4), no guidance embedding, and reads
states 9, 18 and 27 of Qwen3. The stand-ins keep those ratios and layer indices (the text
encoders are narrow but 31 / 28 layers deep, as the pipelines index them), the 4-axis RoPE,
the 32-channel VAE with its latent batch norm, and the schedulers' dynamic shifting.

FLUX.2-dev's tokenizer is a ``PixtralProcessor`` (it needs torchvision); the pipeline only
calls its ``apply_chat_template``, so a fast word-level tokenizer whose chat template reads
the user's text stands in. Saved as diffusers folders, with the transformer alone in BFL's
layout beside them (``flux2-tiny.safetensors``: what ComfyUI users keep) and the text
encoder and VAE as their own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit_sd.families.transformer_standin import TinyFlowModel
from lorakit_sd.testing import CORPUS, TINY_RESOLUTION

#: dev's chat template (content lists); the system prompt is not encoded by the stand-in
DEV_TEMPLATE = (
    "{% for conversation in messages %}{% if conversation.role == 'user' %}"
    "{% for part in conversation.content %}{{ part.text }} {% endfor %}"
    "{% endif %}{% endfor %}"
)
#: klein's (Qwen3-style) chat template
KLEIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m.content }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> {% endif %}"
)


#: FLUX.2's scheduler config (dev's and klein's): dynamic, exponential time shift
SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


@dataclass
class TinyFlux2(TinyFlowModel):
    """Where :func:`build_tiny_flux2` saved a tiny FLUX.2 model (the split files too)."""

    text_encoder_file: Path | None = None
    vae_file: Path | None = None


def tiny_word_tokenizer(template: str) -> Any:
    """A word-level fast tokenizer over the corpus words (pad 0), with ``template``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<|im_start|>": 4, "<|im_end|>": 5}
    for line in CORPUS:
        for word in line.replace(",", " , ").split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    out.unk_token = "<unk>"
    out.chat_template = template
    return out


def tiny_mistral3(vocab: int, seed: int) -> Any:
    """A Mistral-3 (text + Pixtral vision tower), 8 wide and 31 layers deep."""
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = {
        "model_type": "mistral",
        "vocab_size": vocab,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 31,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 4,
        "image_size": 16,
        "patch_size": 4,
    }
    config = Mistral3Config(text_config=text, vision_config=vision, image_token_index=vocab - 1)
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def tiny_qwen3(vocab: int, seed: int) -> Any:
    """A Qwen3 causal LM, 8 wide and 28 layers deep."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=28,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def tiny_vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae: Any = AutoencoderKLFlux2(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )
    with torch.no_grad():  # a latent batch norm with statistics, as the real one has
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape) * 0.1)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape) + 0.5)
    return vae.eval()


def build_tiny_pipeline(klein: bool = False, seed: int = 0) -> Any:
    """The tiny ``Flux2Pipeline`` (or ``Flux2KleinPipeline``) in memory."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    tokenizer = tiny_word_tokenizer(KLEIN_TEMPLATE if klein else DEV_TEMPLATE)
    width = 8
    torch.manual_seed(seed + 2)
    transformer = Flux2Transformer2DModel(
        in_channels=128,
        num_layers=1,
        num_single_layers=4 if klein else 6,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * width,
        timestep_guidance_channels=16,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=not klein,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    parts = {"scheduler": scheduler, "vae": tiny_vae(seed + 1), "transformer": transformer}
    if klein:
        encoder = tiny_qwen3(len(tokenizer), seed + 3)
        return Flux2KleinPipeline(text_encoder=encoder, tokenizer=tokenizer, **parts)
    encoder = tiny_mistral3(len(tokenizer), seed + 3)
    return Flux2Pipeline(text_encoder=encoder, tokenizer=tokenizer, **parts)


def build_tiny_flux2(directory: str | Path, family: str = "flux2", seed: int = 0) -> TinyFlux2:
    """Build and save a tiny FLUX.2 (``family``: flux2 or flux2_klein) under ``directory``:
    the diffusers folder, and the split files ComfyUI keeps (transformer in BFL's layout,
    text encoder, VAE)."""
    from safetensors.torch import save_file

    from lorakit_sd.families.flux2.single_file import diffusers_to_bfl

    directory = Path(directory)
    pipe = build_tiny_pipeline(family != "flux2", seed)
    out = directory / "diffusers"
    pipe.save_pretrained(out, safe_serialization=True)
    single = directory / f"{family}-tiny.safetensors"
    state = diffusers_to_bfl(pipe.transformer.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, str(single))
    te = directory / f"{family}-text-encoder.safetensors"
    save_file(
        {k: v.contiguous().clone() for k, v in pipe.text_encoder.state_dict().items()}, str(te)
    )
    vae = directory / f"{family}-vae.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.vae.state_dict().items()}, str(vae))
    return TinyFlux2(family, out, single, text_encoder_file=te, vae_file=vae)
