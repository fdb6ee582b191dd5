"""SANA as a lorakit-sd family: what lorakit-sd asks of a family, answered for SANA.

- **Recognised** by a diffusers folder's ``model_index.json`` (``SanaPipeline`` or a
  ``SanaTransformer2DModel``); there is no single-file layout.
- **Conditioning**: captions through ``SanaPipeline.encode_prompt`` (Gemma-2's last hidden
  state, the first token and the last ``max_sequence_length - 1``, as inference reads them),
  without the "complex human instruction" prefix, in training and in previews alike. The text
  cache stores the states as ``hidden`` and the attention mask as ``pooled`` (the second
  tensor lorakit-sd keeps per caption); the transformer reads both.
- **Latents**: the deep-compression autoencoder (``AutoencoderDC``) is deterministic, so the
  cache keeps its latent and every step uses it as it is; scaled by ``scaling_factor``.
- **Objective**: flow matching (velocity ``ε - x0``) on the model's scheduler config, as SD3;
  the timestep is scaled by the transformer's ``timestep_scale`` as the pipeline does.
- **Files**: diffusers/PEFT keys (``transformer.<module>.lora_A.weight``), the layout
  ``SanaPipeline.load_lora_weights`` reads; there is no kohya layout for SANA.
- **Stand-in**: :mod:`lorakit_family_sana.standin`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorakit_sd.api import TransformerFamily

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_LINEAR = ATTN + ["ff.conv_inverted", "ff.conv_point", "proj_out"]


class Sana(TransformerFamily):
    name = "sana"
    label = "SANA"
    default_resolution = 1024
    default_config_repo = "Efficient-Large-Model/Sana_600M_1024px_diffusers"
    base_model_version = "sana"
    architecture = "sana/lora"
    implementation = "https://github.com/NVlabs/Sana"
    network_module = "networks.lora_sana"
    kohya_text_prefixes: ClassVar[dict[str, str]] = {}
    diffusers_text_prefixes: ClassVar[dict[str, str]] = {}
    default_sequence_length = 300
    sequence_encoder = caption_encoders = "Gemma-2"
    pipeline_names = ("SanaPipeline",)
    transformer_names = ("SanaTransformer2DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN
    lora_key_priority = 25

    # -- recognition and loading -------------------------------------------------------------
    def claims_lora_keys(self, keys: Any) -> bool:
        return any(".attn2.to_q." in k and k.startswith("transformer.") for k in keys) and any(
            ".ff.conv_inverted." in k for k in keys
        )

    def pipeline_class(self) -> Any:
        from diffusers import SanaPipeline

        return SanaPipeline

    def transformer_class(self) -> Any:
        from diffusers import SanaTransformer2DModel

        return SanaTransformer2DModel

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        from lorakit.api import UsageError

        raise UsageError(f"{path}: SANA trains from a diffusers folder or hub id")

    # -- conditioning --------------------------------------------------------------------------
    def text_encoders(self, pipe: Any) -> list[Any]:
        return []  # Gemma-2 takes no LoRA

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        return pipe.tokenizer, pipe.text_encoder

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        device = next(pipe.text_encoder.parameters()).device
        hidden, mask, _, _ = pipe.encode_prompt(
            captions,
            do_classifier_free_guidance=False,
            device=device,
            max_sequence_length=max_tokens,
            complex_human_instruction=None,
        )
        return hidden, mask.float()

    def denoise(
        self, transformer: Any, noisy: Any, timesteps: Any, hidden: Any, pooled: Any, guidance: Any
    ) -> Any:
        scale = float(transformer.config.get("timestep_scale", 1.0) or 1.0)
        out = transformer(
            noisy,
            encoder_hidden_states=hidden,
            encoder_attention_mask=pooled,
            timestep=timesteps.to(noisy.dtype) * scale,
            return_dict=False,
        )[0]
        if out.shape[1] == 2 * noisy.shape[1]:  # learned sigma: the pipeline keeps the first half
            out = out.chunk(2, dim=1)[0]
        return out

    # -- latents -------------------------------------------------------------------------------
    def encode_moments(self, vae: Any, pixels: Any) -> Any:
        import torch

        param = next(vae.parameters())
        with torch.no_grad():
            latent = vae.encode(pixels.to(param.device, param.dtype)).latent
        return latent.float().contiguous()

    def latents_from_moments(self, moments: Any) -> Any:
        return moments

    def vae_factor(self, vae_config: Any) -> int:
        return int(2 ** (len(vae_config["encoder_block_out_channels"]) - 1))

    def pixel_multiple(self, pipe: Any) -> int:
        return self.vae_factor(pipe.vae.config) * int(pipe.transformer.config.patch_size)

    # -- previews and plan ---------------------------------------------------------------------
    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "negative_prompt": kwargs.get("negative") or "",
            "complex_human_instruction": None,
            "use_resolution_binning": False,
        }

    def plan_text_inputs(self, t_config: Any, batch: int, tokens: int) -> dict[str, Any]:
        import torch

        width = int(t_config["caption_channels"])
        return {"hidden": torch.randn(batch, tokens, width), "pooled": torch.ones(batch, tokens)}

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_family_sana.standin import build_tiny_sana

        return build_tiny_sana(directory, seed)
