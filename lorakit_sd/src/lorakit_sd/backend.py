"""The ``sd`` backend: LoRA on an image model's denoiser (and its CLIP text encoders).

The engine owns the loop; this class loads the base model, injects LoRA through peft,
builds the (cached) dataset and aspect-ratio batches, and computes the loss. Everything that
differs between SD1, SDXL, SD3 and FLUX.1 (captions, latents, noise, target, previews,
names) is asked of the model's family (:mod:`lorakit_sd.families`). Every random draw of a step (caption dropout, tag order, flips, the latent sample, the
noise, the timesteps) comes from torch's global generator, whose state the engine saves in
each checkpoint: a resumed run continues exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lorakit.api import (
    CONTROL_SEPARATOR,
    Backend,
    ConfigError,
    LossOutput,
    TrainContext,
    UsageError,
    loading_whole,
    unsafe_pickle_allowed,
)
from lorakit_sd import families
from lorakit_sd.config import SDSection
from lorakit_sd.data.buckets import BucketBatchSampler
from lorakit_sd.data.cache import build_latent_cache, build_text_cache
from lorakit_sd.data.control import (
    caption_entries,
    check_family,
    control_pictures,
    entry_caption,
)
from lorakit_sd.data.dataset import SDDataset, build_items, fingerprint, section_buckets
from lorakit_sd.data.video import check_frames
from lorakit_sd.lorafiles.clients import warn_unsupported
from lorakit_sd.lorafiles.export_view import adapter_export
from lorakit_sd.lorafiles.names import LoraModule
from lorakit_sd.models import load_base, peek_family, quiet_libraries
from lorakit_sd.networks import PLAIN
from lorakit_sd.sampling import render_and_save
from lorakit_sd.step.adapt import adapt_models
from lorakit_sd.step.devices import modules_elsewhere, use_channels_last
from lorakit_sd.step.loss import augment_captions, cached_text, caption_dropout_mask, denoising_loss


def model_resolution(pipe: Any) -> int | None:
    """The side the pipeline generates at by default (``default_sample_size`` latents times
    the VAE's scale, as diffusers' pipelines compute it): the size the model was trained
    at, and a tiny stand-in's own size. None when the pipeline does not say."""
    size = getattr(pipe, "default_sample_size", None)
    unet = getattr(pipe, "unet", None)
    if size is None and unet is not None:  # some pipelines read the UNet's config instead
        size = getattr(unet.config, "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    return size * scale if isinstance(size, int) and isinstance(scale, int) else None


def per_item(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` flags shaped to broadcast over ``like``'s other dimensions (images or clips)."""
    return flags.view(-1, *([1] * (like.ndim - 1)))


class SDBackend(Backend):
    """Image-model LoRA training (SD1.x, SDXL, SD3 / SD3.5, FLUX.1)."""

    throughput_unit = "samples"
    default_export_formats = ("kohya", "diffusers")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.section: SDSection = config.section or SDSection()
        self.started_at = time.time()
        self.items: list[Any] = []
        self.index: list[int] = []
        self._module: Any = None
        self.video = False  # a video family's (clips cut by sd.video), set once it is known

    # -- model ---------------------------------------------------------------------------
    def validate(self, ctx: TrainContext) -> None:
        """Read and check every image and caption before the model loads."""

        t, sec = self.config.train, self.section
        ctx.registries.check_model("sd", t.base_model, sec, t.model_loader)
        family = peek_family(t.base_model, sec.model_family)
        if family is not None:
            self._check_family(families.get(family))
            self.resolution = sec.resolution or families.get(family).default_resolution
            self._read_data(ctx)
            check_family(self.items, families.get(family), families.all_families())

    def _check_family(self, spec: Any) -> None:
        """The family's refusals of sd.* keys; for a video family its frame counts."""
        spec.check_section(self.section)
        self.video = spec.frame_multiple > 0
        if self.video:
            check_frames(self.section.video.frames, spec.frame_multiple, spec.label)

    def _read_data(self, ctx: TrainContext) -> None:

        buckets = section_buckets(self.section, self.resolution)
        self.items, self.index = build_items(
            self.config, ctx.registries, buckets, self.resolution, ctx.log, self.video
        )

    def setup(self, ctx: TrainContext) -> None:

        t, sec = self.config.train, self.section
        # Whole also under ZeRO-3: the VAE and cached text encoders stay outside the trained
        # module (no gather hooks); prepare partitions what is inside it.
        with loading_whole():
            self.model = load_base(
                t.base_model,
                base_config=sec.base_config,
                model_family=sec.model_family,
                allow_unsafe_pickle=unsafe_pickle_allowed(),
                loader=t.model_loader,
                registries=ctx.registries,
            )
        self.family = self.model.family
        self.spec = spec = self.model.spec
        self._check_family(spec)
        if sec.base_quantization:  # GPU only (refused above otherwise)
            from lorakit_sd.step.quantize import quantize_transformer

            quantize_transformer(self.model, sec, t.base_model, ctx.weight_dtype)
        self.clip_skip = spec.clip_skip(sec, ctx.log)
        pipe = self.model.pipe
        self.unet = self.model.denoiser  # the UNet or the transformer
        read_at = getattr(self, "resolution", None)  # set by validate when it read the data
        default = families.get(self.family).default_resolution
        self.resolution = sec.resolution or model_resolution(pipe) or default
        if self.items and self.resolution != read_at:  # read again at the model's own size
            self.items, self.index = [], []
        self.factor = spec.pixel_multiple(pipe)
        step = sec.bucket_step if sec.bucket else self.resolution
        if step % self.factor:
            key = "sd.bucket_step" if sec.bucket else "sd.resolution"
            raise ConfigError(f"must be a multiple of {self.factor} for this model", key=key)
        self.device = ctx.accelerator.device
        self.weight_dtype = ctx.weight_dtype
        self.vae_dtype = spec.vae_dtype(self.weight_dtype)
        self.objective = spec.objective(pipe, sec)
        self.prediction_type = self.objective.prediction_type
        self.latents_cached = sec.latent_cache_enabled()
        self.text_cached = sec.text_cache_enabled()  # the train module encodes captions if not
        self.train_text = sec.train_text_encoder
        with quiet_libraries():
            if not getattr(self.unet, "is_quantized", False):  # GGUF: its own dtypes
                self.unet.to(self.weight_dtype)
            for encoder in spec.all_text_encoders(pipe):
                encoder.to(self.weight_dtype)
        self.unet_targets = adapt_models(
            self.unet,
            self.model.text_encoders,
            spec=spec,
            config=self.config,
            section=sec,
            checkpointing=t.gradient_checkpointing,
        )

        if sec.group_offload:  # GPU only (refused above otherwise)
            from lorakit_sd.step.offload import offload_blocks

            offload_blocks(self.unet, self.device)
        warn_unsupported(self.unet, spec, ctx.log)
        if use_channels_last(sec.channels_last, self.device, spec.denoiser_attr == "unet"):
            self.unet.to(memory_format=torch.channels_last)
        self.unet.train()
        if self.train_text:
            for encoder in self.model.text_encoders:
                encoder.train()

    @property
    def text_encoders(self) -> list[Any]:
        return self.model.text_encoders

    def optimizer_param_groups(self, learning_rate: float) -> list[dict[str, Any]] | None:
        """The UNet at learning_rate, the text encoders at sd.text_encoder_lr when set."""
        te_lr = self.section.text_encoder_lr
        if not self.train_text or te_lr is None or te_lr == learning_rate:
            return None
        unet = [p for p in self.unet.parameters() if p.requires_grad]
        text = [p for e in self.model.text_encoders for p in e.parameters() if p.requires_grad]
        return [{"params": unet, "lr": learning_rate}, {"params": text, "lr": te_lr}]

    def trainable_module(self) -> torch.nn.Module:
        if self._module is None:
            encoders = None if self.text_cached else self.model.text_encoders
            self._module = self.spec.train_module(self, encoders)
        return self._module

    # -- data ----------------------------------------------------------------------------
    def dataset(self, ctx: TrainContext) -> Any:

        sec = self.section
        if not self.items:
            self._read_data(ctx)
        check_family(self.items, self.spec, families.all_families())
        self.max_tokens = self.spec.max_tokens(self.items, self.model.pipe, sec, ctx.log)
        if sec.random_crop and sec.cache_latents is None:
            ctx.log("note: sd.random_crop encodes every image each step (no latent cache)")
        root = ctx.cache_dir if sec.cache_to_disk else None
        vae = self.model.pipe.vae
        latents = text = None
        captions: list[str] = []
        caption_ids: list[int] = []
        with ctx.accelerator.main_process_first():
            with quiet_libraries():
                vae.to(self.device, self.vae_dtype)
            if self.latents_cached:
                latents = build_latent_cache(
                    self.items,
                    vae,
                    flip=sec.flip_aug,
                    batch_size=sec.vae_batch_size,
                    directory=root / "latents" if root else None,
                    log=ctx.log,
                    encode=self.spec.encode_moments,
                )
                vae.to("cpu")
            all_encoders = self.spec.all_text_encoders(self.model.pipe)
            if sec.group_offload and not self.train_text:  # the 24B encoders stream too
                from lorakit_sd.step.offload import offload_blocks

                for encoder in all_encoders:
                    offload_blocks(encoder, self.device, checkpointing=False)
            for encoder in all_encoders:
                encoder.to(self.device)
            if self.text_cached:
                with_control = self.spec.captions_see_control
                captions, caption_ids = caption_entries(self.items, with_control)
                text = build_text_cache(
                    captions,
                    self.model.tokenizers,
                    all_encoders,
                    self.family,
                    max_tokens=self.max_tokens,
                    clip_skip=self.clip_skip,
                    encode=self._caption_encoder(captions, caption_ids),
                    batch_size=sec.vae_batch_size * 4,
                    directory=root / "text" if root else None,
                    log=ctx.log,
                )
                self.empty = {k: v.to(self.device) for k, v in text.get(len(captions) - 1).items()}
                for encoder in all_encoders:
                    encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return SDDataset(
            self.items,
            self.index,
            self.family,
            latents,
            text,
            caption_ids,
            reg_weight=sec.prior_loss_weight,
            random_crop=sec.random_crop,
        )

    def _caption_encoder(self, entries: list[str], ids: list[int]) -> Any:
        """The text cache's encoder of a chunk of entries: the family's ``encode_captions``,
        with each entry's control images for a family whose captions see them."""
        pipe, spec, max_tokens = self.model.pipe, self.spec, self.max_tokens
        if not spec.captions_see_control:
            return lambda chunk: spec.encode_captions(pipe, chunk, max_tokens, self.clip_skip)
        first = {entries[i]: item for item, i in zip(self.items, ids, strict=True)}

        def encode(chunk: list[str]) -> dict[str, Any]:
            texts = [entry_caption(entry) for entry in chunk]
            images = [control_pictures(first[e]) if e in first else [] for e in chunk]
            return spec.encode_captions(pipe, texts, max_tokens, self.clip_skip, controls=images)

        return encode

    def batch_sampler(self, dataset: Any, batch_size: int, seed: int) -> Any:

        return BucketBatchSampler(dataset.buckets(), batch_size, seed)

    def dataset_fingerprint(self) -> str:

        return fingerprint(self.items, self.index)

    # -- loss ----------------------------------------------------------------------------
    def loss(self, module: torch.nn.Module, batch: Any) -> LossOutput:
        sec, dev, wd = self.section, self.device, self.weight_dtype
        n = self.count(batch)
        drop = caption_dropout_mask(n, sec.caption_dropout)
        kwargs: dict[str, Any] = {}
        if self.text_cached:
            kwargs.update(cached_text(batch, self.empty, drop, dev, wd))
        else:
            captions = augment_captions(list(batch["caption"]), sec, drop)
            kwargs.update(self.spec.text_inputs(self.model.pipe, captions, self.max_tokens))
        flip = torch.rand(n) < 0.5 if sec.flip_aug else None
        if self.latents_cached:
            moments = batch["moments"]
            if flip is not None:
                moments = torch.where(per_item(flip, moments), batch["moments_flip"], moments)
        else:
            pixels = batch["pixels"]
            if flip is not None:
                pixels = torch.where(per_item(flip, pixels), pixels.flip(-1), pixels)
            moments = self.spec.encode_moments(self.model.pipe.vae, pixels)
        # contiguous: randn_like-style draws follow memory order, and the VAE's output may not
        # be in row-major order; explicit shapes keep cached and uncached runs identical.
        moments = moments.to(dev, torch.float32).contiguous()
        latents = self.spec.latents_from_moments(moments)
        latents = self.spec.normalize(latents, self.model.pipe.vae.config)
        kwargs.update(self.spec.extra_inputs(batch, flip, dev, wd))
        control = self._control(batch, flip)
        if control is not None:
            kwargs["control"] = control.to(dev, wd)
        per_sample = denoising_loss(module, self.objective, latents, kwargs, wd, batch, flip)
        return LossOutput(per_sample.sum(), samples=n)

    def _control(self, batch: Any, flip: torch.Tensor | None) -> torch.Tensor | None:
        """The batch's control latents (``[B, K, C, h, w]``), mirrored with their targets."""
        if "control_moments" in batch:
            moments = batch["control_moments"]
            if flip is not None:
                where = flip[:, None, None, None, None]
                moments = torch.where(where, batch["control_moments_flip"], moments)
        elif "control_pixels" in batch:
            pixels = batch["control_pixels"]
            if flip is not None:
                pixels = torch.where(flip[:, None, None, None, None], pixels.flip(-1), pixels)
            vae = self.model.pipe.vae
            moments = self.spec.encode_moments(vae, pixels.flatten(0, 1))
            moments = moments.unflatten(0, tuple(pixels.shape[:2]))
        else:
            return None
        moments = moments.to(self.device, torch.float32).contiguous()
        return self.spec.control_latents(moments, self.model.pipe.vae.config)

    # -- previews ------------------------------------------------------------------------
    def sample(self, ctx: TrainContext, step: int, directory: Path) -> list[Path]:

        prompts = self.config.train.sample_prompts
        if not prompts:
            return []
        sec = self.section
        encoders = self.spec.all_text_encoders(self.model.pipe)
        parked = modules_elsewhere((self.model.pipe.vae, *encoders), self.device)
        for module in parked:
            module.to(self.device)
        was_training = self.unet.training
        self.unet.eval()
        try:
            return render_and_save(
                self.model.pipe,
                self.family,
                prompts,
                Path(directory),
                f"step-{step:06d}",
                sec=sec,
                seed=sec.sample_seed if sec.sample_seed is not None else self.config.train.seed,
                width=sec.sample_width or self.resolution,
                height=sec.sample_height or self.resolution,
                steps=sec.sample_steps,
                prediction_type=self.prediction_type,
                dtype=self.weight_dtype,
                max_tokens=sec.max_token_length,
                clip_skip=self.clip_skip,
                control=self._preview_control(),
            )
        finally:
            self.unet.train(was_training)
            for module in parked:
                module.to("cpu")

    def _preview_control(self) -> list[str]:
        """Edit models' preview inputs: ``sd.sample_control``, else the first training
        image's control images."""
        if self.section.sample_control or not self.spec.takes_control:
            return list(self.section.sample_control)
        first = next((item for item in self.items if item.control), None)
        return [CONTROL_SEPARATOR.join(first.control)] if first is not None else []

    # -- export --------------------------------------------------------------------------
    @property
    def save_dtype(self) -> torch.dtype:
        return getattr(torch, self.section.save_dtype)

    def adapted_parts(self) -> list[tuple[str, Any]]:
        """(component, model) of every adapted model: the denoiser, the trained encoders."""
        parts = [(self.spec.denoiser_attr, self.unet)]
        if self.train_text:
            parts += list(zip(("te1", "te2"), self.text_encoders, strict=False))
        return parts

    def lora_modules(self) -> list[Any]:
        """The trained LoRA as :class:`lorakit_sd.lorafiles.names.LoraModule` objects."""
        from peft.utils import get_peft_model_state_dict

        if self.section.network not in PLAIN:
            raise UsageError(
                f"sd.network {self.section.network} is not a plain LoRA: "
                "it is written in LyCORIS's kohya layout only"
            )
        modules = []
        for component, model in self.adapted_parts():
            config = model.peft_config["default"]
            state = get_peft_model_state_dict(model)
            paths = sorted({k.rsplit(".lora_", 1)[0] for k in state})
            for path in paths:
                down = state[f"{path}.lora_A.weight"].detach()
                up = state[f"{path}.lora_B.weight"].detach()
                alpha = float(config.alpha_pattern.get(path, config.lora_alpha))
                modules.append(LoraModule(component, path, down, up, alpha))
        return modules

    def adapter_export(self, step: int) -> Any:
        """The exporters' view (:func:`lorakit_sd.lorafiles.export_view.adapter_export`)."""

        return adapter_export(self, step)

    def teardown(self) -> None:
        self._module = None
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def create(config: Any) -> SDBackend:
    """The backend factory registered as ``sd``."""
    return SDBackend(config)
