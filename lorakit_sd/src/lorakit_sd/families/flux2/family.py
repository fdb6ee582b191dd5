"""FLUX.2 dev: a 32B transformer on 2x2-patchified 32-channel latents, Mistral-3 captions.

What the pipeline defines, used as it is (``Flux2Pipeline``'s static helpers):

- **Latents**: the VAE's mode (``retrieve_latents(..., sample_mode="argmax")``, as
  ``_encode_vae_image`` does), 2x2-patchified (``_patchify_latents``: 128 channels) and
  normalised by the VAE's latent batch norm statistics (``(z - bn.running_mean) /
  sqrt(bn.running_var + eps)``). The cache keeps that latent; every step uses it as is.
- **Tokens and positions**: ``_pack_latents`` (one token per patchified latent pixel), image
  ids from ``_prepare_latent_ids`` and caption ids from ``_prepare_text_ids`` (4-axis RoPE),
  the prediction scattered back with ``_unpack_latents_with_ids``.
- **Captions**: ``encode_prompt`` (the pipeline's system prompt, hidden states 10, 20, 30 of
  Mistral-3 stacked), cached once: the text encoder is on the accelerator only while the
  cache is built, and never takes LoRA.
- **Objective**: flow matching (``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``), σ drawn by
  ``diffusers.training_utils`` and shifted by the scheduler's dynamic shifting (``mu`` linear
  in the image's token count between the config's ``base_shift`` and ``max_shift``, the
  scheduler's ``time_shift``); ``sd.flow_shift`` fixes the shift instead. The pipeline's
  ``compute_empirical_mu`` depends on the number of sampling steps, so it shifts previews,
  not training draws. dev's guidance embedding trains at ``sd.guidance``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorakit.api import ConfigError
from lorakit_sd.families.base import Objective
from lorakit_sd.families.flow import FlowMatchObjective
from lorakit_sd.families.flux2 import SPEC
from lorakit_sd.families.flux2.kohya import from_bfl, to_bfl
from lorakit_sd.families.flux2.single_file import diffusers_to_bfl
from lorakit_sd.families.transformer import FlowFamily

#: double blocks' attention; ``to_out`` is a ModuleList there (``to_out.0``), a Linear in the
#: single blocks (fused q/k/v + MLP in, attention + MLP out)
ATTN = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_qkv_mlp_proj",
    "single_transformer_blocks.*.attn.to_out",
]
ALL_LINEAR = ATTN + [
    "ff.linear_in",
    "ff.linear_out",
    "ff_context.linear_in",
    "ff_context.linear_out",
]


class Flux2(FlowFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "black-forest-labs/FLUX.2-dev"
    base_model_version = "flux2"
    architecture = "Flux.2-dev/lora"
    implementation = "https://github.com/black-forest-labs/flux2"
    network_module = "networks.lora_flux_2"
    kohya_text_prefixes: ClassVar[dict[str, str]] = {}
    diffusers_text_prefixes: ClassVar[dict[str, str]] = {}
    latent_multiple = 2  # 2x2 patches
    transformer_file_layout = "BFL's layout"
    merge_keeps_base_layout = True  # a diffusers base: its transformer/ file's names
    load_in_stored_dtype = True  # 32B + 24B: bf16 in CPU memory, never a float32 copy
    default_sequence_length = 512
    sequence_encoder = caption_encoders = "Mistral-3"
    pipeline_names = ("Flux2Pipeline",)
    transformer_names = ("Flux2Transformer2DModel",)
    #: the text encoder's class in model_index.json (tells dev from klein without a class name)
    encoder_prefix = "Mistral3"
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN
    lora_key_priority = 35

    # -- recognition -------------------------------------------------------------------------
    def claims_index(self, index: dict[str, Any]) -> bool:
        name = index.get("_class_name")
        if name is not None and str(name).startswith("Flux2"):
            return name in self.pipeline_names
        transformer = index.get("transformer") or [None, None]
        encoder = index.get("text_encoder") or [None, ""]
        return transformer[1] in self.transformer_names and str(encoder[1]).startswith(
            self.encoder_prefix
        )

    def claims_keys(self, keys: set[str]) -> bool:
        stripped = {k.split("diffusion_model.", 1)[-1] for k in keys}
        return "single_stream_modulation.lin.weight" in stripped and self.has_guidance(stripped)

    def has_guidance(self, keys: set[str]) -> bool:
        return "guidance_in.in_layer.weight" in keys

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version == self.base_model_version or architecture == self.architecture

    def claims_lora_keys(self, keys: Any) -> bool:
        """FLUX.2's own modules (diffusers or BFL names), told from FLUX.1's by them or by
        the single blocks' fused widths (``linear1``: 9 hidden wide, ``linear2``: 4 in)."""
        own = (".to_qkv_mlp_proj.", ".ff.linear_in.", "stream_modulation", "to_qkv_mlp_proj")
        if any(o in k for k in keys for o in own):
            return True
        shapes = keys if isinstance(keys, dict) else {}
        for key, shape in shapes.items():
            if "single_blocks_" in key and key.endswith("linear2.lora_down.weight"):
                hidden = _hidden(shapes)
                return hidden is not None and int(shape[1]) == 4 * hidden
        return False

    # -- loading -----------------------------------------------------------------------------
    def pipeline_class(self) -> Any:
        from diffusers import Flux2Pipeline

        return Flux2Pipeline

    def transformer_class(self) -> Any:
        from diffusers import Flux2Transformer2DModel

        return Flux2Transformer2DModel

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """The transformer of a BFL-layout file; the text encoder and VAE from files beside
        it when there are (transformers' / diffusers' names), else from ``config``."""
        from lorakit_sd.families.flux2.split import load_split

        return load_split(self, path, config, local)

    def transformer_file_state(self, state: dict[str, Any], config: Any) -> dict[str, Any]:
        """BFL's layout, as ``flux2-dev.safetensors`` is (ComfyUI loads it): a merge into a
        BFL file writes it; a merge into a diffusers folder keeps diffusers' names."""
        return diffusers_to_bfl(state)

    # -- conditioning ------------------------------------------------------------------------
    def text_encoders(self, pipe: Any) -> list[Any]:
        return []  # the caption encoder never takes LoRA

    def all_text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder] if pipe.text_encoder is not None else []

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        """(caption tokenizer, caption encoder): a processor's own tokenizer counts tokens."""
        tokenizer = getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)
        return tokenizer, pipe.text_encoder

    def check_section(self, sec: Any) -> None:
        super().check_section(sec)
        if sec.train_text_encoder:
            raise ConfigError(
                f"{self.label}'s caption encoder ({self.caption_encoders}) takes no LoRA; "
                "remove sd.train_text_encoder",
                key="sd.train_text_encoder",
            )

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        device = next(pipe.text_encoder.parameters()).device
        hidden, _ = pipe.encode_prompt(captions, device=device, max_sequence_length=max_tokens)
        return hidden, None

    def encode_captions(
        self, pipe: Any, captions: list[str], max_tokens: int, clip_skip: int = 1
    ) -> dict[str, Any]:
        return {"hidden": self.encode(pipe, captions, max_tokens)[0]}

    def uses_guidance(self, transformer: Any) -> bool:
        return bool(transformer.config.guidance_embeds)

    # -- latents -----------------------------------------------------------------------------
    def encode_moments(self, vae: Any, pixels: Any) -> Any:
        """The cached latent: the VAE's mode, patchified and batch-normalised."""
        import torch
        from diffusers.pipelines.flux2.pipeline_flux2 import retrieve_latents

        pipeline = self.pipeline_class()
        param = next(vae.parameters())
        with torch.no_grad():
            z = retrieve_latents(vae.encode(pixels.to(param.device, param.dtype)), None, "argmax")
            z = pipeline._patchify_latents(z.float())
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
            z = (z - mean) / std.to(z.device, z.dtype)
        return z.contiguous()

    def latents_from_moments(self, moments: Any) -> Any:
        return moments

    def normalize(self, latents: Any, vae_config: Any) -> Any:
        return latents

    def pixel_multiple(self, pipe: Any) -> int:
        return self.vae_factor(pipe.vae.config) * self.latent_multiple

    def latent_layout(self, vae_config: Any, resolution: int) -> tuple[int, int]:
        """(channels, side) of the latent the objective draws on: 2x2 patches of the VAE's."""
        side = resolution // (self.vae_factor(vae_config) * 2)
        return int(vae_config["latent_channels"]) * 4, side

    # -- objective and denoiser --------------------------------------------------------------
    def objective(self, pipe: Any, sec: Any) -> Objective:
        return FlowMatchObjective(pipe, sec, tokens_per_latent=1.0)

    def denoise(
        self, transformer: Any, noisy: Any, timesteps: Any, hidden: Any, pooled: Any, guidance: Any
    ) -> Any:
        """Pack ``[B, 128, h, w]`` into tokens, run the transformer, scatter its prediction."""
        pipeline = self.pipeline_class()
        img_ids = pipeline._prepare_latent_ids(noisy).to(noisy.device)
        txt_ids = pipeline._prepare_text_ids(hidden).to(noisy.device)
        tokens = pipeline._pack_latents(noisy)
        out = transformer(
            hidden_states=tokens,
            timestep=timesteps.to(noisy.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=hidden,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        # klein's helper takes the size (dev's reads it from the ids: data-dependent, which
        # ``lorakit plan``'s fake tensors cannot trace); both scatter by the same ids
        from diffusers import Flux2KleinPipeline

        h, w = noisy.shape[-2:]
        return Flux2KleinPipeline._unpack_latents_with_ids(out[:, : tokens.shape[1]], img_ids, h, w)

    # -- files -------------------------------------------------------------------------------
    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:
        """musubi-tuner's / ComfyUI's layout: ``lora_unet_`` + BFL names, a double block's
        q/k/v fused exactly (rank 3r, block-diagonal up)."""
        transformer = [m for m in modules if m.component == "transformer"]
        return to_bfl(transformer, denoiser, dtype)

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        return from_bfl(entries)

    def variant(self, transformer: Any) -> str:
        return "dev"

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        out = {"ss_model_prediction_type": "raw"}
        if self.uses_guidance(denoiser):
            out["ss_guidance_scale"] = f"{sec.guidance:g}"
        return out

    def plan_text_inputs(self, t_config: Any, batch: int, tokens: int) -> dict[str, Any]:
        import torch

        return {"hidden": torch.randn(batch, tokens, int(t_config["joint_attention_dim"]))}

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_sd.families.flux2.standin import build_tiny_flux2

        return build_tiny_flux2(directory, self.name, seed)


def _hidden(shapes: dict[str, Any]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("img_attn_qkv.lora_down.weight"):
            return int(shape[1])
    return None
