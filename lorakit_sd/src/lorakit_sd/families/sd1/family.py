"""Stable Diffusion 1.x: a UNet, one CLIP text encoder, DDPM noise prediction."""

from __future__ import annotations

from typing import Any

from lorakit_sd.families.base import ModelFamily, Objective, PartialClient
from lorakit_sd.families.clip import SDTrainModule, encode_captions, tokenize
from lorakit_sd.families.ddpm import DDPMObjective
from lorakit_sd.families.ldm import detect_family
from lorakit_sd.families.sd1 import SPEC
from lorakit_sd.families.sd1.single_file import bare_text_encoder
from lorakit_sd.families.unet_plan import unet_planner
from lorakit_sd.families.unet_sampling import render, sampling_pipeline
from lorakit_sd.families.unet_standin import build_tiny_sd
from lorakit_sd.lorafiles.names import UnetLayout, to_kohya

#: LoRA target presets of the UNet families (``target_modules``).
UNET_PRESETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "ff": ["ff.net.0.proj", "ff.net.2"],
    "proj": ["proj_in", "proj_out"],
}
UNET_PRESETS["all-linear"] = UNET_PRESETS["attn"] + UNET_PRESETS["ff"] + UNET_PRESETS["proj"]


#: kohya sd-scripts' own network (``networks/lora.py``, used by its scripts and the tools built
#: on it) wraps only modules inside the UNet's transformer, resnet and sampler blocks: a LoRA
#: on ``conv_in``, ``conv_out``, ``time_embedding`` or ``add_embedding`` loads there without a
#: word and is dropped. diffusers, ComfyUI and A1111 apply every module a key names.
KOHYA_UNET_NETWORK = PartialClient(
    "kohya sd-scripts' network",
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(attentions|resnets|downsamplers|upsamplers)\.",
    "transformer, resnet and sampler blocks",
    "diffusers, ComfyUI and A1111",
)


class SD1(ModelFamily):
    partial_clients = (KOHYA_UNET_NETWORK,)
    name = SPEC.name
    label = SPEC.label
    default_resolution = 512
    default_config_repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    base_model_version = "sd_v1"
    architecture = "stable-diffusion-v1/lora"
    implementation = "diffusers"
    kohya_text_prefixes = {"te1": "lora_te_"}
    diffusers_text_prefixes = {"te1": "text_encoder"}
    target_presets = UNET_PRESETS
    default_targets = UNET_PRESETS["attn"]
    clip_skip_applies = True
    demo = True

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version.startswith(self.base_model_version)

    def pixel_multiple(self, pipe: Any) -> int:
        vae = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return vae * 2 ** (len(pipe.unet.config.down_block_types) - 1)

    def claims_keys(self, keys: set[str]) -> bool:

        return detect_family(keys) == self.name

    def claims_index(self, index: dict[str, Any]) -> bool:
        second = index.get("text_encoder_2")
        return "unet" in index and not (second and second[0] is not None)

    def pipeline_class(self) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def pipeline_kwargs(self) -> dict[str, Any]:
        """SD1 repos ship a safety checker (a CLIP vision model): training never needs it."""
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:

        parts = bare_text_encoder(path, keys, config)
        return self.pipeline_class().from_single_file(
            str(path), config=config, local_files_only=local, **parts
        )

    def finish(self, pipe: Any) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())

    def objective(self, pipe: Any, sec: Any) -> Objective:

        return DDPMObjective(pipe, sec)

    def clip_skip(self, sec: Any, log: Any) -> int:
        return int(sec.clip_skip)

    def encode_captions(
        self, pipe: Any, captions: list[str], max_tokens: int, clip_skip: int = 1
    ) -> dict[str, Any]:
        hidden, pooled = encode_captions(
            captions,
            self.tokenizers(pipe),
            self.text_encoders(pipe),
            self.name,
            max_tokens,
            clip_skip,
        )
        return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}

    def text_inputs(self, pipe: Any, captions: list[str], max_tokens: int) -> dict[str, Any]:

        return {"input_ids": tokenize(self.tokenizers(pipe), captions, max_tokens)}

    def train_module(self, backend: Any, encoders: list[Any] | None) -> Any:

        return SDTrainModule(
            backend.unet, encoders, self.name, backend.train_text, backend.clip_skip
        )

    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:

        return to_kohya(modules, self.name, UnetLayout.from_config(denoiser.config), dtype)

    def standin(self, directory: Any, seed: int = 0) -> Any:

        return build_tiny_sd(directory, self.name, seed)

    def planner(self, config: Any, folder: Any, section: Any) -> Any:

        return unet_planner(config, folder, self, section)

    def render(self, pipe: Any, prompts: list[str], **kwargs: Any) -> list[Any]:

        sampler = sampling_pipeline(pipe, self.name, kwargs.pop("prediction_type"))
        kwargs.pop("control", None)  # takes none: sampling refuses control images before this
        if kwargs.pop("progress", False):
            sampler.set_progress_bar_config(disable=False, desc=f"{len(prompts)} prompt(s)")
        return render(sampler, prompts, **kwargs)
