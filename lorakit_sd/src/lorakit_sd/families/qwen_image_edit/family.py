"""Qwen-Image-Edit: Qwen-Image's transformer, its input image's tokens after the noisy ones,
the instruction read by Qwen2.5-VL together with the input image.

Everything is Qwen-Image's (per-channel latent normalisation, 2x2 packing, flow matching
with the dynamic shift of the target's token count, ComfyUI's and diffusers' LoRA layouts,
split files) but the control image:

- **its latents** (the posterior's mode, normalised, as ``QwenImageEditPipeline`` encodes it)
  are packed with the pipeline's ``_pack_latents`` and appended to the noisy image's tokens,
  its shape a second ``img_shapes`` entry; only the noisy tokens' prediction is trained;
- **the instruction** goes through the pipeline's ``encode_prompt`` with the control image
  (its prompt template, Qwen2.5-VL's vision tower): the text cache keeps one entry per
  (instruction, control image), so the vision-language encoder runs once per pair.

The pipeline scales its input image to about 1024² pixels whatever the output size; training
fits the control image to its target's bucket, which is that size when training at 1024 px.
Single files are Qwen-Image's (ComfyUI's split files): ``sd.model_family: qwen_image_edit``
loads them as this family.
"""

from __future__ import annotations

from typing import Any

from lorakit.api import ConfigError, UsageError
from lorakit_sd.families.qwen_image.family import QwenImage
from lorakit_sd.families.qwen_image_edit import SPEC


class QwenImageEdit(QwenImage):
    name = SPEC.name
    label = SPEC.label
    default_config_repo = "Qwen/Qwen-Image-Edit"
    base_model_version = "qwen_image_edit"
    architecture = "Qwen-Image-Edit/lora"
    pipeline_names = ("QwenImageEditPipeline",)
    takes_control = True
    max_control_images = 1  # QwenImageEditPipeline takes one input image
    captions_see_control = True
    file_family = QwenImage.name
    lora_key_priority = QwenImage.lora_key_priority + 1  # its metadata is asked first

    def claims_index(self, index: dict[str, Any]) -> bool:
        """By the pipeline's name only: its transformer is Qwen-Image's class."""
        return index.get("_class_name") in self.pipeline_names

    def claims_keys(self, keys: set[str]) -> bool:
        return False  # Qwen-Image's files until sd.model_family says otherwise

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version == self.base_model_version or architecture.startswith("Qwen-Image-Edit")

    def claims_lora_keys(self, keys: Any) -> bool:
        return False  # Qwen-Image's names: Qwen-Image reads them the same way

    def pipeline_class(self) -> Any:
        from lorakit_sd.families.qwen_image_edit.processor import pipeline_class

        return pipeline_class()

    def check_section(self, sec: Any) -> None:
        """The instruction is encoded with its control image once, in the text cache."""
        super().check_section(sec)
        if not sec.text_cache_enabled():
            raise ConfigError(
                f"{self.label} encodes each instruction with its control image once (the text "
                "cache): remove sd.shuffle_tags / sd.cache_text_encoder_outputs: false",
                key="sd.cache_text_encoder_outputs",
            )
        if sec.flip_aug:
            raise ConfigError(
                f"{self.label} reads each instruction with its control image as it is: a "
                "mirrored pair would not match its cached embedding (remove it)",
                key="sd.flip_aug",
            )
        if sec.caption_dropout:
            raise ConfigError(
                f"{self.label} reads each instruction with its control image; an empty "
                "instruction without it is not what the pipeline sees (remove it)",
                key="sd.caption_dropout",
            )

    def max_tokens(self, items: list[Any], pipe: Any, sec: Any, log: Any) -> int:
        """``sd.max_sequence_length`` (default 512): an instruction's embedding also holds its
        control image's vision tokens, which the caption's own tokens do not count, so the
        cache keeps the whole window (each step still cuts a batch to its longest mask)."""
        return self.sequence_length(pipe, sec)

    def encode_captions(
        self,
        pipe: Any,
        captions: list[str],
        max_tokens: int,
        clip_skip: int = 1,
        controls: list[list[Any]] | None = None,
    ) -> dict[str, Any]:
        """Each instruction through the pipeline's ``encode_prompt`` with its control image
        (one at a time: their lengths differ), padded to ``max_tokens`` with its mask."""
        import torch

        device = next(pipe.text_encoder.parameters()).device
        hidden, masks = [], []
        width = int(pipe.text_encoder.config.text_config.hidden_size)
        for i, caption in enumerate(captions):
            images = controls[i] if controls else []
            if not images:  # the empty caption's entry (caption dropout is refused): unused
                hidden.append(torch.zeros(1, max_tokens, width, device=device))
                masks.append(torch.zeros(1, max_tokens, device=device))
                continue
            embeds, mask = pipe.encode_prompt([caption], image=images[0], device=device)
            n = min(embeds.shape[1], max_tokens)
            padded = embeds.new_zeros(1, max_tokens, embeds.shape[2])
            padded[:, :n] = embeds[:, :n]
            full = torch.zeros(1, max_tokens, device=embeds.device)
            full[:, :n] = 1.0 if mask is None else mask[:, :n].float()
            hidden.append(padded)
            masks.append(full)
        return {"hidden": torch.cat(hidden), "pooled": torch.cat(masks)}

    def image_tokens(self, latents: Any, control: Any = None) -> tuple[Any, list[Any]]:
        """The noisy image's tokens, then the control image's (as the pipeline lays them out:
        packed, concatenated along the sequence, a second ``img_shapes`` entry)."""
        import torch

        packed, shapes = super().image_tokens(latents)
        if control is None:
            return packed, shapes
        for k in range(control.shape[1]):
            tokens, more = super().image_tokens(control[:, k])
            packed, shapes = torch.cat([packed, tokens], dim=1), shapes + more
        return packed, shapes

    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The prompt's input image (the pipeline scales it to about 1024² pixels itself)."""
        control = kwargs.get("control")
        if not control:
            raise UsageError(
                f"{self.label} renders from an input image: give one (--control, sd.sample_control)"
            )
        return {"image": control[kwargs["prompt_index"]][0]}

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        """musubi-tuner's architecture name for Qwen-Image-Edit."""
        return {**super().run_metadata(sec, denoiser), "ss_architecture": "qwen_image_edit"}

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_sd.families.qwen_image_edit.standin import build_tiny_qwen_image_edit

        return build_tiny_qwen_image_edit(directory, seed)
