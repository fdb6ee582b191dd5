"""SDXL: a UNet, two CLIP text encoders (penultimate layers + pooled), size conditioning."""

from __future__ import annotations

from typing import Any

import torch

from lorakit_sd.families.clip import time_ids
from lorakit_sd.families.sd1.family import SD1
from lorakit_sd.families.sdxl import SPEC
from lorakit_sd.lorafiles.names import UnetLayout
from lorakit_sd.lorafiles.read import sgm_unet_stem


class SDXL(SD1):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "stabilityai/stable-diffusion-xl-base-1.0"
    base_model_version = "sdxl_base_v1-0"
    architecture = "stable-diffusion-xl-v1-base/lora"
    implementation = "https://github.com/Stability-AI/generative-models"
    kohya_text_prefixes = {"te1": "lora_te1_", "te2": "lora_te2_"}
    diffusers_text_prefixes = {"te1": "text_encoder", "te2": "text_encoder_2"}
    clip_skip_applies = False
    demo = False
    size_conditioned = True
    kohya_unet_original_names = True

    lora_key_priority = 10

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl")

    def claims_lora_keys(self, keys: Any) -> bool:
        for k in keys:
            if k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
                return True
            if k.startswith(
                ("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle")
            ):
                return True
            if k.startswith("lora_unet_add_embedding"):  # SDXL's size conditioning
                return True
            # SDXL cross-attention reads 2048-wide text states (SD1: 768)
            shape = getattr(keys[k], "shape", ()) if isinstance(keys, dict) else ()
            if list(shape)[1:2] == [2048] and k.endswith("attn2_to_k.lora_down.weight"):
                return True
        return False

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        """UNet stems under their SGM names, also when written with diffusers block names."""

        layout = layout or UnetLayout(2, [True, True, False])
        return {sgm_unet_stem(stem, layout): entry for stem, entry in entries.items()}

    def claims_index(self, index: dict[str, Any]) -> bool:
        second = index.get("text_encoder_2")
        return "unet" in index and bool(second and second[0] is not None)

    def pipeline_class(self) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {}

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        return self.pipeline_class().from_single_file(
            str(path), config=config, local_files_only=local
        )

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer, pipe.tokenizer_2]

    def clip_skip(self, sec: Any, log: Any) -> int:
        if sec.clip_skip > 1:
            log("warning: sd.clip_skip is ignored for SDXL (it reads the penultimate layer)")
        return 1

    def skips_last_layer(self, index: int) -> bool:
        """The first encoder is read at its penultimate layer: its last layer trains nothing."""
        return index == 0

    def sample_extras(self, item: Any, crop: tuple[int, int]) -> dict[str, Any]:
        """The size ids of the crop and of its mirror image (for ``sd.flip_aug``)."""

        mirrored = (item.resized[0] - crop[0] - item.bucket[0], crop[1])
        return {
            "time_ids": torch.tensor(time_ids(item.size, crop, item.bucket)).float(),
            "time_ids_flip": torch.tensor(time_ids(item.size, mirrored, item.bucket)).float(),
        }

    def vae_dtype(self, weight_dtype: Any) -> Any:
        """The SDXL VAE overflows in float16: it encodes in float32 then."""
        return torch.float32 if weight_dtype == torch.float16 else weight_dtype

    def extra_inputs(self, batch: dict[str, Any], flip: Any, device: Any, dtype: Any) -> dict:
        """The six size/crop numbers (the mirrored crop's for flipped samples)."""
        ids = batch["time_ids"]
        if flip is not None:
            ids = torch.where(flip[:, None], batch["time_ids_flip"], ids)
        return {"time_ids": ids.to(device, dtype)}
