"""Wan 2.1 / 2.2 as a lorakit-sd family.

- **Recognised** by a diffusers folder's ``model_index.json`` (``WanPipeline``,
  ``WanImageToVideoPipeline`` or a ``WanTransformer3DModel``).
- **Conditioning**: captions through ``WanPipeline.encode_prompt`` (UMT5's last hidden state,
  zeroed past each caption's tokens, padded to ``sd.max_sequence_length``, default 512, as
  inference reads them); cached once.
- **Latents**: ``AutoencoderKLWan`` (8x space, 4x time: clips of ``4k + 1`` frames), its
  posterior cached once per sample; normalised as the pipeline undoes it before decoding,
  ``(z - latents_mean) / latents_std``.
- **Objective**: flow matching (velocity ``ε - x0``), σ drawn by ``sd.timestep_sampling`` and
  shifted by the scheduler's ``flow_shift`` (UniPC in flow-prediction mode; 3.0 for 480p),
  timesteps ``σ · 1000`` as the pipeline passes them.
- **Files**: diffusers/PEFT keys with the adapter metadata (``WanPipeline.load_lora_weights``)
  and ComfyUI's layout (:mod:`lorakit_sd.families.wan.comfy`).
- **Previews**: the pipeline's own sampler, written as an mp4 and an animated webp.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorakit_sd.families.base import Objective
from lorakit_sd.families.flow import FlowMatchObjective
from lorakit_sd.families.transformer import FlowFamily
from lorakit_sd.families.wan import SPEC, single_file
from lorakit_sd.families.wan.comfy import comfy_tensors, from_original
from lorakit_sd.families.wan.experts import Experts, expert_sigmas, split_modules
from lorakit_sd.families.wan.i2v import first_frame_condition, image_tokens, normalised

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_LINEAR = [*ATTN, "add_k_proj", "add_v_proj", "ffn.net.0.proj", "ffn.net.2"]
#: width -> (heads of 128, blocks, FFN width, latent channels) of the released transformers:
#: Wan2.1 1.3B, Wan2.2 TI2V-5B, Wan2.1 / 2.2 14B
RELEASED = {1536: (12, 30, 8960, 16), 3072: (24, 30, 14336, 48), 5120: (40, 40, 13824, 16)}


class WanObjective(FlowMatchObjective):
    """Flow matching with the Wan scheduler's fixed ``flow_shift`` (``sd.flow_shift`` wins);
    on a two-expert model, σ on the trained experts' side of the boundary."""

    def __init__(self, pipe: Any, sec: Any, which: str = "both", boundary: float = 0.0) -> None:
        super().__init__(pipe, sec)
        config = pipe.scheduler.config
        shift = config.get("flow_shift", config.get("shift", 1.0))
        self.shift = float(sec.flow_shift if sec.flow_shift is not None else shift)
        self.dynamic = False
        self.which = which
        self.boundary = boundary

    def shift_sigmas(self, u: Any, latents: Any) -> Any:
        return expert_sigmas(super().shift_sigmas(u, latents), self.which, self.boundary)

    def metadata(self) -> dict[str, str]:
        meta = super().metadata()
        if self.boundary:
            meta["ss_wan_experts"] = self.which
            meta["ss_timestep_boundary"] = f"{self.boundary:g}"
        return meta


class Wan(FlowFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 640  # 832x480 (480p) is about 640² pixels
    default_config_repo = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    base_model_version = "wan"
    architecture = "wan-2.1/lora"
    implementation = "https://github.com/Wan-Video/Wan2.1"
    network_module = "networks.lora_wan"
    kohya_text_prefixes: ClassVar[dict[str, str]] = {}
    diffusers_text_prefixes: ClassVar[dict[str, str]] = {}
    frame_multiple = 4
    default_sequence_length = 512
    sequence_encoder = caption_encoders = "UMT5"
    transformer_file_layout = "the original Wan layout (ComfyUI's)"
    pipeline_names = ("WanPipeline", "WanImageToVideoPipeline")
    transformer_names = ("WanTransformer3DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN
    lora_key_priority = 35

    #: ``sd.video.experts`` of the run being set up (check_section), taken by the next
    #: two-expert denoiser built (then back to both: sample and merge use every expert)
    which: str = "both"

    # -- recognition and loading ---------------------------------------------------------
    def check_section(self, sec: Any) -> None:
        super().check_section(sec)
        self.which = sec.video.experts

    def two_experts(self, pipe: Any) -> bool:
        return getattr(pipe, "transformer_2", None) is not None and bool(
            pipe.config.get("boundary_ratio")
        )

    def denoiser(self, pipe: Any) -> Any:
        """The transformer; a two-expert model's trained experts as one :class:`Experts`
        (built once per pipeline)."""
        if not self.two_experts(pipe):
            return pipe.transformer
        made = getattr(pipe, "_lorakit_experts", None)
        if made is None:
            made = pipe._lorakit_experts = Experts(pipe, self.which)
            self.which = "both"
        return made

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version == self.base_model_version or architecture.startswith("wan-")

    def claims_lora_keys(self, keys: Any) -> bool:
        return any(k.startswith("diffusion_model.blocks.") for k in keys) or any(
            k.startswith("transformer.blocks.") and ".attn1." in k for k in keys
        )

    def pipeline_class(self) -> Any:
        """``DiffusionPipeline``: a folder's ``model_index.json`` picks ``WanPipeline`` or
        ``WanImageToVideoPipeline``."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline

    def i2v(self, pipe: Any) -> bool:
        """Whether the model generates from a first frame (its transformer reads the noisy
        latents and the 20-channel condition)."""
        return type(pipe).__name__ == "WanImageToVideoPipeline"

    def finish(self, pipe: Any) -> None:
        """The VAE of an image-to-video model also encodes each sample's first frame."""
        if self.i2v(pipe):
            if pipe.config.expand_timesteps:
                from lorakit.api import UsageError

                raise UsageError(
                    "Wan 2.2 TI2V-5B's image-to-video (the first frame in the latents) is not "
                    "trained yet; it trains as text-to-video (WanPipeline)"
                )
            pipe.vae.first_frame_condition = True
            if pipe.transformer.config.image_dim is not None:  # Wan 2.1 I2V: CLIP tokens
                # kept outside the VAE's modules (not its weights, not moved with it)
                pipe.vae.__dict__["image_encoder"] = (pipe.image_processor, pipe.image_encoder)

    def transformer_class(self) -> Any:
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel

    def claims_keys(self, keys: set[str]) -> bool:
        return single_file.claims(keys)

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """A transformer file in the original layout (ComfyUI's), the other parts from
        ``config`` (a diffusers Wan folder or hub id)."""
        return single_file.load(path, config, local)

    def transformer_file_state(self, state: dict[str, Any], config: Any) -> dict[str, Any]:
        """The original layout, as ComfyUI's diffusion-model files are."""
        return single_file.to_original(state)

    # -- conditioning --------------------------------------------------------------------
    def text_encoders(self, pipe: Any) -> list[Any]:
        return []  # UMT5 takes no LoRA

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        return pipe.tokenizer, pipe.text_encoder

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        device = next(pipe.text_encoder.parameters()).device
        hidden, _ = pipe.encode_prompt(
            captions,
            do_classifier_free_guidance=False,
            max_sequence_length=max_tokens,
            device=device,
        )
        return hidden, None

    # -- latents -------------------------------------------------------------------------
    def objective(self, pipe: Any, sec: Any) -> Objective:
        if sec.video.experts != "both" and not self.two_experts(pipe):
            from lorakit.api import ConfigError

            raise ConfigError(
                f"sd.video.experts {sec.video.experts}: this model has one transformer "
                "(experts are Wan 2.2 A14B's)",
                key="sd.video.experts",
            )
        if not self.two_experts(pipe):
            return WanObjective(pipe, sec)
        boundary = float(pipe.config.boundary_ratio)
        return WanObjective(pipe, sec, sec.video.experts, boundary)

    def normalize(self, latents: Any, vae_config: Any) -> Any:
        return normalised(latents, vae_config)

    def encode_moments(self, vae: Any, pixels: Any) -> Any:
        """The posterior's parameters; for an image-to-video model also the first-frame
        condition (:mod:`lorakit_sd.families.wan.i2v`)."""
        moments = super().encode_moments(vae, pixels)
        if not getattr(vae, "first_frame_condition", False):
            return moments
        out = {"moments": moments, "condition": first_frame_condition(vae, pixels)}
        encoder = vae.__dict__.get("image_encoder")
        if encoder is not None:
            out["image"] = image_tokens(encoder, pixels)
        return out

    def extra_inputs(self, batch: dict[str, Any], flip: Any, device: Any, dtype: Any) -> dict:
        """An image-to-video sample's cached condition and CLIP image tokens (their mirror
        where flipped)."""
        import torch

        out = {}
        for key, name in (("condition", "condition"), ("image", "pooled")):
            if key not in batch:
                continue
            value = batch[key]
            if flip is not None:
                rows = flip.view(-1, *([1] * (value.ndim - 1)))
                value = torch.where(rows, batch[f"{key}_flip"], value)
            out[name] = value.to(device, dtype)  # CLIP image tokens travel as "pooled"
        return out

    def denoise(
        self, transformer: Any, noisy: Any, timesteps: Any, hidden: Any, pooled: Any, guidance: Any
    ) -> Any:
        """As the pipelines call it; ``pooled``: Wan 2.1 I2V's CLIP image tokens."""
        return transformer(
            hidden_states=noisy,
            timestep=timesteps.to(noisy.dtype),
            encoder_hidden_states=hidden,
            encoder_hidden_states_image=pooled,
            return_dict=False,
        )[0]

    def train_module(self, backend: Any, encoders: list[Any] | None) -> Any:
        pipe, sec = backend.model.pipe, backend.section
        if self.i2v(pipe):
            from lorakit.api import ConfigError

            if not backend.latents_cached:
                raise ConfigError(
                    "Wan image-to-video trains from cached latents (remove "
                    "sd.cache_latents: false / sd.random_crop)",
                    key="sd.cache_latents",
                )
            if backend.config.train.sample_prompts and not sec.video.sample_image:
                raise ConfigError(
                    "previews of an image-to-video model start from an image: set "
                    "sd.video.sample_image",
                    key="sd.video.sample_image",
                )
        return super().train_module(backend, encoders)

    def vae_factor(self, vae_config: Any) -> int:
        return int(vae_config.get("scale_factor_spatial") or 8)  # 8; Wan 2.2's 5B VAE: 16

    def pixel_multiple(self, pipe: Any) -> int:
        return self.vae_factor(pipe.vae.config) * int(pipe.transformer.config.patch_size[1])

    # -- files ---------------------------------------------------------------------------
    def file_parts(self, modules: list[Any]) -> list[tuple[str, list[Any]]]:
        """One file per expert of a two-expert model (``<name>_high_noise``, ``_low_noise``),
        as ComfyUI users load them, one per model; else one file."""
        return split_modules(modules)

    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:
        """ComfyUI's layout (``diffusion_model.<original Wan module>``)."""
        return comfy_tensors(modules, dtype)

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        """A ComfyUI-layout file's entries under diffusers' module names."""
        out = {}
        for stem, entry in entries.items():
            path = from_original(stem.removeprefix("diffusion_model."))
            out[f"transformer.{path}" if path else stem] = entry
        return out

    def standard_structure(
        self, entries: dict[str, Any] | None = None
    ) -> tuple[Any, list[Any]] | None:
        """The released Wan transformer of the file's width (1.3B, TI2V-5B or 14B), on the
        meta device; another width needs ``--base``."""
        import torch

        from lorakit.api import UsageError

        entries = entries or {}
        key = next((k for k in entries if k.endswith(".attn1.to_q")), None)
        width = int(entries[key]["down"].shape[1]) if key else 0
        if width not in RELEASED:
            raise UsageError(
                f"a Wan LoRA of width {width or 'unknown'} (not 1.3B, 5B or 14B): "
                "pass --base with its model"
            )
        heads, layers, ffn, channels = RELEASED[width]
        image = {}
        if any(".add_k_proj" in k for k in entries):  # Wan2.1 I2V: CLIP image tokens
            image = {"image_dim": 1280, "added_kv_proj_dim": width, "in_channels": 36}
        with torch.device("meta"):
            transformer = self.transformer_class()(
                **{
                    "num_attention_heads": heads,
                    "num_layers": layers,
                    "ffn_dim": ffn,
                    "in_channels": channels,
                    "out_channels": channels,
                    **image,
                }
            )
        return transformer, []

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        video = sec.video
        return {
            "ss_frame_buckets": ",".join(map(str, video.frames)),
            "ss_fps": "source" if video.fps is None else f"{video.fps:g}",
        }

    # -- previews ------------------------------------------------------------------------
    def render(self, pipe: Any, prompts: list[str], **kwargs: Any) -> list[Any]:
        """The pipeline's sampler; each prompt gives a clip (a list of PIL frames)."""
        import torch
        from PIL import Image

        device = next(self.denoiser(pipe).parameters()).device
        sampler = type(pipe)(**pipe.components)
        sampler.set_progress_bar_config(disable=not kwargs.get("progress"))
        length = kwargs.get("max_tokens") or self.default_sequence_length
        clips = []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for i, prompt in enumerate(prompts):
                generator = torch.Generator("cpu").manual_seed(kwargs["seed"] + i)
                frames = sampler(
                    **self.first_frame(pipe, kwargs),
                    prompt=prompt,
                    negative_prompt=kwargs.get("negative") or None,
                    num_inference_steps=kwargs["steps"],
                    guidance_scale=kwargs["guidance"],
                    width=kwargs["width"],
                    height=kwargs["height"],
                    num_frames=kwargs.get("frames") or 17,
                    generator=generator,
                    max_sequence_length=length,
                    output_type="np",
                ).frames[0]
                clips.append([Image.fromarray((f * 255).round().astype("uint8")) for f in frames])
        return clips

    def first_frame(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """An image-to-video pipeline's ``image`` (``sd.video.sample_image``, fitted)."""
        if not self.i2v(pipe):
            return {}
        from lorakit.api import UsageError
        from lorakit_sd.data.buckets import fit_image
        from lorakit_sd.data.images import open_rgb

        path = kwargs.get("image")
        if not path:
            raise UsageError("an image-to-video model's clips start from sd.video.sample_image")
        return {"image": fit_image(open_rgb(path), (kwargs["width"], kwargs["height"]))}

    def latent_channels(self, vae_config: Any) -> int:
        return int(vae_config["z_dim"])

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.frame_multiple + 1

    def plan_latents(self, batch: int, channels: int, side: int, section: Any) -> Any:
        """The longest frame bucket's latents (``(F - 1) / 4 + 1`` latent frames)."""
        import torch

        frames = self.latent_frames(max(section.video.frames))
        return torch.randn(batch, channels, frames, side, side)

    def plan_step(self, batch: int, resolution: int, section: Any) -> str:
        frames = max(section.video.frames)
        clips = f"{batch} clip{'s' if batch > 1 else ''}"
        return f"{clips} of {frames} frames at {resolution}×{resolution}"

    def plan_multiple(self, t_config: Any, vae_config: Any) -> int:
        return self.vae_factor(vae_config) * int(t_config["patch_size"][1])

    def plan_rungs(self, section: Any) -> tuple[tuple[dict[str, Any], str], ...]:
        """Fewer frames: without the longest frame bucket, then the next (three rows at
        most)."""
        buckets = sorted(section.video.frames)
        rows = []
        for end in range(len(buckets) - 1, max(0, len(buckets) - 4), -1):
            kept = buckets[:end]
            rows.append(({"sd.video.frames": kept}, f"clips of at most {kept[-1]} frames"))
        return tuple(rows)

    def plan_text_inputs(self, t_config: Any, batch: int, tokens: int) -> dict[str, Any]:
        import torch

        return {"hidden": torch.randn(batch, tokens, int(t_config["text_dim"]))}

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_sd.families.wan.standin import build_tiny_wan

        return build_tiny_wan(directory, seed)
