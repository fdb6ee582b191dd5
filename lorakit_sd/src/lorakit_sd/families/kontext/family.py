"""FLUX.1 Kontext: FLUX.1-dev's transformer, its input image's tokens after the noisy ones.

Everything is FLUX.1's (CLIP + T5 captions, the 2x2-packed latents, the guidance embedding,
flow matching with the resolution-dependent shift of the target's token count, BFL's and
diffusers' LoRA layouts, which ComfyUI loads for Kontext as for FLUX.1) but the control
image: its latents (the VAE posterior's mode, normalised, as ``FluxKontextPipeline`` encodes
it) are packed with the pipeline's ``_pack_latents`` and appended to the noisy image's tokens,
with ``_prepare_latent_image_ids`` ids whose first coordinate is 1; only the noisy tokens'
prediction is trained. Single files are FLUX.1's (BFL's layout): ``sd.model_family: kontext``
loads one as Kontext, the other parts from ``sd.base_config``.
"""

from __future__ import annotations

from typing import Any

from lorakit_sd.families.flux1.family import Flux1
from lorakit_sd.families.kontext import SPEC


class Kontext(Flux1):
    name = SPEC.name
    label = SPEC.label
    default_config_repo = "black-forest-labs/FLUX.1-Kontext-dev"
    architecture = "flux-1-kontext-dev/lora"
    pipeline_names = ("FluxKontextPipeline",)
    takes_control = True
    max_control_images = 1  # FluxKontextPipeline takes one input image
    file_family = Flux1.name
    lora_key_priority = Flux1.lora_key_priority + 1  # its metadata is asked before FLUX.1's

    def claims_index(self, index: dict[str, Any]) -> bool:
        """By the pipeline's name only: its transformer is FLUX.1's class."""
        return index.get("_class_name") in self.pipeline_names

    def claims_keys(self, keys: set[str]) -> bool:
        return False  # a BFL file is FLUX.1's until sd.model_family says Kontext

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return architecture.startswith("flux-1-kontext")

    def claims_lora_keys(self, keys: Any) -> bool:
        return False  # FLUX.1's names: FLUX.1 reads them the same way

    def pipeline_class(self) -> Any:
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    def image_tokens(self, latents: Any, control: Any = None) -> tuple[Any, Any]:
        """The noisy image's tokens, then the control image's (as the pipeline lays them out
        in ``prepare_latents``: packed, ids with first coordinate 1, concatenated along the
        sequence)."""
        import torch

        packed, ids = super().image_tokens(latents)
        if control is None:
            return packed, ids
        for k in range(control.shape[1]):
            tokens, control_ids = super().image_tokens(control[:, k])
            control_ids[..., 0] = 1
            packed = torch.cat([packed, tokens], dim=1)
            ids = torch.cat([ids, control_ids], dim=0)
        return packed, ids

    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The prompt's input image, fitted to the output size as training fits control images
        to their targets' buckets (the pipeline's own resizing off)."""
        from lorakit_sd.data.buckets import fit_image

        size = (kwargs["width"], kwargs["height"])
        extras: dict[str, Any] = {"max_area": size[0] * size[1], "_auto_resize": False}
        control = kwargs.get("control")
        if control:
            extras["image"] = fit_image(control[kwargs["prompt_index"]][0], size)
        return extras

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        """FLUX.1's keys, and musubi-tuner's architecture name for Kontext."""
        return {**super().run_metadata(sec, denoiser), "ss_architecture": "flux_kontext"}

    def format_metadata_for(self, transformer: Any) -> dict[str, str]:
        return {
            **super().format_metadata_for(transformer),
            "modelspec.architecture": self.architecture,
        }

    def standin(self, directory: Any, seed: int = 0) -> Any:
        """A tiny Kontext model: the tiny FLUX.1-dev's parts in ``FluxKontextPipeline``."""
        from pathlib import Path

        from diffusers import FluxKontextPipeline

        from lorakit_sd.families.transformer_standin import (
            TinyFlowModel,
            build_tiny_flux,
            write_flux_single_file,
        )

        directory = Path(directory)
        pipe: Any = FluxKontextPipeline(**build_tiny_flux(seed, guidance=True).components)
        folder = directory / "diffusers"
        pipe.save_pretrained(folder, safe_serialization=True)
        single = write_flux_single_file(pipe, directory / f"{self.name}-tiny.safetensors")
        return TinyFlowModel(self.name, folder, single)
