"""The ``sd:`` config section: everything image-specific, validated, with defaults.

Imports nothing heavy: ``lorakit config validate`` and ``lorakit --help`` read this module
without torch. Seed-style keys (base_model, train_data_dir, lora_rank, batch_size, ...) stay
top-level; only what the image backend alone understands lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lorakit_sd import families
from lorakit_sd.networks import NetworkType

#: LoRA target aliases accepted in ``target_modules``.
TARGET_ALIASES = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "ff": ["ff.net.0.proj", "ff.net.2"],
    "proj": ["proj_in", "proj_out"],
}
DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class Subset(BaseModel):
    """One image folder of a multi-folder dataset (``sd.subsets``)."""

    model_config = ConfigDict(extra="forbid")

    image_dir: str = Field(description="Folder of images.")
    metadata_path: str | None = Field(
        None,
        description="Captions file (.csv or .jsonl); default image_dir/metadata.csv, then "
        "metadata.jsonl, then .txt sidecars.",
    )
    repeats: int = Field(1, gt=0, description="How many times each image counts per epoch.")
    caption_extension: str = Field(".txt", description="Extension of caption sidecar files.")
    conditioning_data_dir: str | None = Field(
        None, description="Masks of this folder's images (see sd.conditioning_data_dir)."
    )
    control_dir: str | None = Field(
        None, description="Control images of this folder's images (see sd.control_dir)."
    )


class VideoSection(BaseModel):
    """How clips become samples for a video family (``sd.video``); see docs/video.md."""

    model_config = ConfigDict(extra="forbid")

    frames: list[int] = Field(
        default_factory=lambda: [17, 33, 49, 65, 81],
        description="Frame counts clips are cut to (the frame buckets): a clip takes the "
        "largest that it holds at sd.video.fps; each must suit the family (k times its VAE's frame factor, plus 1). A still "
        "image is one frame.",
    )
    fps: float | None = Field(
        None, gt=0, description="Frame rate clips are sampled at; null: each clip's own."
    )
    frame_stride: int | None = Field(
        None,
        gt=0,
        description="Cut a window every N frames (musubi-tuner's slide extraction); null: "
        "clips_per_video windows spread evenly.",
    )
    clips_per_video: int | None = Field(
        None,
        gt=0,
        description="Windows per clip: spread evenly from the first frame to the last "
        "(default 1: the first frames); with frame_stride, at most this many.",
    )
    sample_image: str | None = Field(
        None,
        description="Image-to-video models: the first frame previews start from (an image "
        "file); needed for previews of such a model.",
    )
    experts: Literal["both", "high_noise", "low_noise"] = Field(
        "both",
        description="Two-expert models (a high-noise and a low-noise transformer): which to "
        "train; each expert's LoRA is its own file.",
    )

    @field_validator("frames")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(f < 1 for f in value):
            raise ValueError("needs at least one frame count, each at least 1")
        return sorted(set(value))


class SDSection(BaseModel):
    """The ``sd:`` section of a lorakit config (every image model family)."""

    model_config = ConfigDict(extra="forbid")
    #: Keys a resumed run may change: they change speed, not what the run learns.
    resumable_keys: ClassVar[frozenset[str]] = frozenset({"channels_last"})

    metadata_path: str | None = Field(
        None,
        description="Captions file (.csv or .jsonl) of train_data_dir; default "
        "train_data_dir/metadata.csv. Also accepted at the top level, as the seed configs write it.",
    )

    # -- model ---------------------------------------------------------------------------
    base_config: str | None = Field(
        None,
        description="Single-file checkpoints only: a diffusers folder or hub id whose configs "
        "and tokenizers describe the checkpoint. Default: the model family's standard repo, read "
        "from the local hub cache when HF_HUB_OFFLINE is set.",
    )
    model_family: str = Field(
        "auto",
        description="auto: detected from the weights (a single file's keys, a folder's "
        "model_index.json); else the name of an installed image family (`lorakit plugins` "
        "lists them; see the model families page).",
    )
    allow_unsafe_pickle: bool = Field(
        False,
        description="No longer read: a config file cannot allow unpickling; `true` is an "
        "error. Pass --allow-unsafe-pickle on the command (or LORAKIT_ALLOW_UNSAFE_PICKLE=1).",
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="What the UNet predicts; default: the model scheduler's setting."
    )
    # -- data ----------------------------------------------------------------------------
    resolution: int | None = Field(
        None,
        gt=0,
        description="Training side length in pixels; default the base model's own (the size "
        "its pipeline generates at), else the model family's.",
    )
    bucket: bool = Field(
        True, description="Aspect-ratio bucketing: images keep their shape at about resolution²."
    )
    bucket_step: int = Field(
        64,
        gt=0,
        validate_default=True,
        description="Bucket sides are multiples of this; with bucket on, sd.resolution must be "
        "a multiple of it.",
    )
    min_bucket_resolution: int | None = Field(
        None, gt=0, description="Smallest bucket side; default resolution / 2."
    )
    max_bucket_resolution: int | None = Field(
        None, gt=0, description="Largest bucket side; default resolution * 2."
    )
    dataset_format: Literal["auto", "metadata_csv", "metadata_jsonl", "caption_files"] = Field(
        "auto",
        description="How captions are stored: auto picks metadata_path, metadata.csv, "
        "metadata.jsonl, then .txt sidecars.",
    )
    caption_extension: str = Field(".txt", description="Extension of caption sidecar files.")
    repeats: int = Field(1, gt=0, description="How many times each image counts per epoch.")
    subsets: list[Subset] = Field(
        default_factory=list,
        description="More image folders, each with its own captions and repeats "
        "(train_data_dir is the first unless it is empty).",
    )
    reg_data_dir: str | None = Field(
        None,
        description="Regularisation images, kohya style: subfolders N_class (repeats N, "
        "caption sidecars or the class token). As many reg samples as training samples per "
        "epoch.",
    )
    prior_loss_weight: float = Field(
        1.0,
        ge=0.0,
        description="Loss weight of regularisation samples (kohya's prior_loss_weight).",
    )
    bucket_no_upscale: bool = Field(
        False,
        description="Never enlarge an image to fill a bucket: a small image goes to a smaller "
        "bucket of its own size (kohya's bucket_no_upscale).",
    )
    random_crop: bool = Field(
        False,
        description="Crop each step at a random offset instead of the center (turns off the "
        "latent cache: every step sees a different crop).",
    )
    conditioning_data_dir: str | None = Field(
        None,
        description="Masked loss: a folder of mask images, one per image of train_data_dir "
        "with its stem (and subfolder), as kohya's conditioning_data_dir; the red channel "
        "weights the loss (white: learn, black: ignore).",
    )
    control_dir: str | None = Field(
        None,
        description="Edit models: a folder of control images (the images each instruction "
        "edits), one per training image with its stem (cat.png: control/cat.jpg), or several "
        "numbered (cat_0.png, cat_1.png); default train_data_dir/control when it exists. A "
        "control column in metadata.csv (a.png|b.png) names them instead.",
    )
    alpha_mask: bool = Field(
        False,
        description="Masked loss: weight the loss by each image's own alpha channel "
        "(opaque: learn, transparent: ignore), as kohya's alpha_mask.",
    )
    skip_bad_images: bool = Field(
        False,
        description="Skip unreadable images and images without captions (listed in the log) "
        "instead of stopping.",
    )
    # -- captions ------------------------------------------------------------------------
    max_token_length: Literal[75, 150, 225] | None = Field(
        None,
        description="Caption tokens the text encoders read, in 75-token windows (kohya's "
        "max_token_length); null: the smallest of 75/150/225 that holds the longest caption. "
        "Longer captions are cut, with a warning that counts them.",
    )
    clip_skip: int = Field(
        1,
        ge=1,
        le=12,
        description="Condition on the N-th text-encoder layer from the end (2 for anime bases, "
        "as A1111's 'CLIP skip'), in training and previews, for the families that read one "
        "layer; the others ignore it with a warning.",
    )
    truncate_captions: bool = Field(
        False,
        description="Kept for old configs: long captions are always cut at max_token_length "
        "now (with a counted warning).",
    )
    shuffle_tags: bool = Field(
        False, description="Shuffle comma-separated tags each step (turns off the text cache)."
    )
    keep_tokens: int = Field(
        0, ge=0, description="With shuffle_tags: keep the first N tags in place."
    )
    keep_tokens_separator: str = Field(
        "",
        description="With shuffle_tags (kohya's option of that name): in a caption holding "
        "it, the tags before it stay first and those after a second one stay last, in order; "
        "the tags between are shuffled. Captions without it use keep_tokens.",
    )
    caption_dropout: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of training a sample with an empty caption."
    )
    flip_aug: bool = Field(False, description="Random horizontal flips (cached both ways).")
    # -- loss ----------------------------------------------------------------------------
    noise_offset: float = Field(
        0.0, ge=0.0, description="Offset noise strength (e.g. 0.05) for darker/brighter images."
    )
    min_snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR loss weighting gamma (5 is usual); null: off."
    )
    # -- flow matching (the transformer families) ---------------------------------------------
    timestep_sampling: Literal["logit_normal", "sigmoid", "uniform", "mode"] = Field(
        "logit_normal",
        description="Flow matching: how σ is drawn (diffusers' compute_density_for_timestep_"
        "sampling; sigmoid is sd-scripts' sigmoid(sigmoid_scale · N(0,1))).",
    )
    logit_mean: float = Field(0.0, description="logit_normal: mean.")
    logit_std: float = Field(1.0, gt=0, description="logit_normal: standard deviation.")
    mode_scale: float = Field(1.29, description="mode: scale (Esser et al. 2024).")
    sigmoid_scale: float = Field(1.0, gt=0, description="sigmoid: scale of the normal draw.")
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none",
        description="Flow matching: loss weighting (diffusers' training_utils weighting schemes).",
    )
    flow_shift: float | None = Field(
        None,
        gt=0,
        description="Flow matching: fixed σ shift; null: the scheduler config's (its shift, "
        "or the resolution-dependent shift where it shifts dynamically).",
    )
    guidance: float = Field(
        1.0,
        ge=0.0,
        description="Guidance-distilled transformers: the guidance embedding's value during "
        "training (a model without one ignores it).",
    )
    max_sequence_length: int | None = Field(
        None,
        gt=0,
        le=512,
        description="Transformer families: text tokens per caption; null: the family's default "
        "(see the model families page).",
    )
    base_quantization: Literal["fp8", "nf4"] | None = Field(
        None,
        description="Transformer families: the frozen weights quantized through "
        "diffusers' quantization configs: fp8 (torchao float8 weight-only) or nf4 "
        "(bitsandbytes 4-bit NF4); the LoRA trains in float32 on top. Needs a CUDA GPU and "
        "the library; null: the base's dtype.",
    )
    video: VideoSection = Field(
        default_factory=VideoSection,
        description="Video families: how clips are sampled (frames, fps, frame_stride, "
        "clips_per_video) and which experts train.",
    )
    group_offload: bool = Field(
        False,
        description="Transformer families: the frozen weights of the transformer's blocks "
        "kept in CPU memory and brought to the GPU one block at a time (block-level group "
        "offloading, as diffusers' apply_group_offloading; for 20B+ models). Switches "
        "gradient checkpointing on. Needs a CUDA GPU; slower, not less exact.",
    )
    # -- caches --------------------------------------------------------------------------
    cache_latents: bool | None = Field(
        None, description="Encode images with the VAE once; default on (null: auto)."
    )
    cache_text_encoder_outputs: bool | None = Field(
        None,
        description="Encode captions once; default on when the text encoder is frozen and "
        "shuffle_tags is off (null: auto).",
    )
    cache_to_disk: bool = Field(
        False,
        description="Keep caches under output_dir/cache/, keyed by file content and settings, "
        "reused by later runs in that folder (--resume, or once checkpoints/ is removed).",
    )
    vae_batch_size: int = Field(4, gt=0, description="Images per VAE call while caching.")
    # -- text encoder --------------------------------------------------------------------
    train_text_encoder: bool = Field(False, description="Also train LoRA on the text encoder(s).")
    text_encoder_lr: float | None = Field(
        None,
        gt=0,
        description="Learning rate of the text-encoder LoRA (its own optimizer parameter "
        "group); null: learning_rate.",
    )
    network: NetworkType = Field(  # the table in lorakit_sd.networks
        "lora",
        description="Network type, built with PEFT and written in LyCORIS's key layout: lora "
        "(kohya LoRA), locon (lora with conv_rank; conv_rank alone also gives LoCon), loha "
        "(Hadamard product), lokr (Kronecker product), dora (weight-decomposed LoRA). "
        "train.lora_rank / train.alpha are their rank and alpha.",
    )
    lokr_factor: int = Field(
        -1,
        description="lokr: the Kronecker factor (LyCORIS's factor); -1: as balanced as the "
        "dimensions allow.",
    )
    lokr_decompose_both: bool = Field(
        False, description="lokr: also split the first Kronecker factor into two low-rank ones."
    )
    use_tucker: bool = Field(
        False,
        description="loha / lokr: CP-decompose the 3x3 convolutions (LyCORIS's use_tucker, "
        "PEFT's use_effective_conv2d): the file gains hada_t1/hada_t2 (loha) or lokr_t2 (lokr).",
    )
    conv_rank: int | None = Field(
        None,
        gt=0,
        description="LoCon: also adapt the UNet's 3x3 convolutions in its resnet, down- and "
        "upsampler blocks at this rank (kohya's conv_dim); null: off.",
    )
    conv_alpha: float | None = Field(
        None,
        gt=0,
        description="Alpha of the 3x3 convolution LoRA (kohya's conv_alpha); null: conv_rank.",
    )
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEXT_ENCODER_TARGETS),
        description="Text-encoder modules to adapt when train_text_encoder is on.",
    )
    channels_last: bool | None = Field(
        None,
        description="Keep the UNet's weights and activations in channels-last memory order "
        "(faster convolutions on CUDA tensor cores); null: on for UNets on a GPU, "
        "off on CPU and for transformer denoisers. Same loss and LoRA either way.",
    )
    # -- export --------------------------------------------------------------------------
    save_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the exported LoRA tensors."
    )
    # -- samples -------------------------------------------------------------------------
    sample_steps: int = Field(20, gt=0, description="Denoising steps per preview image.")
    sample_guidance_scale: float = Field(7.0, ge=0.0, description="Classifier-free guidance.")
    sample_negative_prompt: str = Field("", description="Negative prompt for previews.")
    sample_width: int | None = Field(None, gt=0, description="Preview width; default resolution.")
    sample_height: int | None = Field(None, gt=0, description="Preview height; default resolution.")
    sample_seed: int | None = Field(None, description="Seed of every preview; default seed.")
    sample_control: list[str] = Field(
        default_factory=list,
        description="Edit models: the control image(s) of the previews, one for every prompt "
        "or one per prompt (a.png|b.png for several); default the first training image's.",
    )

    @field_validator("allow_unsafe_pickle")
    @classmethod
    def _pickle_is_no_file_choice(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "a config file cannot allow unpickling (a shared file would run its .ckpt's "
                "code on your machine): remove the key and pass --allow-unsafe-pickle on the "
                "command (or set LORAKIT_ALLOW_UNSAFE_PICKLE=1) if you trust the file"
            )
        return value

    @field_validator("sample_control", mode="before")
    @classmethod
    def _one_control(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("model_family")
    @classmethod
    def _family_installed(cls, value: str) -> str:
        if value != "auto" and value not in families.names():
            raise ValueError(
                f"not an installed image family (choose auto, {', '.join(families.names())})"
            )
        return value

    @field_validator("metadata_path")
    @classmethod
    def _captions_exist(cls, value: str | None, info: ValidationInfo) -> str | None:
        check = (info.context or {}).get("check_paths", True)
        if value and check and not Path(value).expanduser().is_file():
            raise ValueError("file not found")
        return value

    @field_validator("bucket_step")
    @classmethod
    def _resolution_fits_buckets(cls, step: int, info: ValidationInfo) -> int:
        """With bucketing on, ``resolution`` must be a multiple of ``bucket_step`` (≥ it)."""
        resolution = info.data.get("resolution")
        if resolution and info.data.get("bucket", True) and resolution % step:
            raise PydanticCustomError(
                "resolution_not_multiple",
                "sd.resolution {resolution} must be a multiple of sd.bucket_step {step} "
                "and at least it: set sd.bucket_step to a divisor of it (e.g. {hint}) or "
                "sd.resolution to a multiple of {step}",
                {"resolution": resolution, "step": step, "hint": _divisor_hint(resolution)},
            )
        return step

    @model_validator(mode="after")
    def _check(self) -> SDSection:
        if self.train_text_encoder and self.cache_text_encoder_outputs:
            raise ValueError(
                "cache_text_encoder_outputs cannot be true with train_text_encoder "
                "(the text encoder's output changes as it trains)"
            )
        if self.shuffle_tags and self.cache_text_encoder_outputs:
            raise ValueError(
                "cache_text_encoder_outputs cannot be true with shuffle_tags "
                "(every step sees a different caption)"
            )
        if self.network == "locon" and self.conv_rank is None:
            raise ValueError("network locon needs conv_rank (the 3x3 convolutions' rank)")
        if self.use_tucker and self.network not in ("loha", "lokr"):
            raise ValueError("use_tucker applies to network loha or lokr")
        if self.use_tucker and self.conv_rank is None:
            raise ValueError("use_tucker needs conv_rank (it decomposes the 3x3 convolutions)")
        if self.conv_alpha is not None and self.conv_rank is None:
            raise ValueError("conv_alpha needs conv_rank (the 3x3 convolution LoRA's rank)")
        if self.alpha_mask and (
            self.conditioning_data_dir or any(s.conditioning_data_dir for s in self.subsets)
        ):
            raise ValueError("alpha_mask and conditioning_data_dir are two mask sources: use one")
        if self.bucket_no_upscale and not self.bucket:
            raise ValueError("bucket_no_upscale needs bucket: true")
        if self.random_crop and self.cache_latents:
            raise ValueError(
                "cache_latents cannot be true with random_crop (every step sees a new crop)"
            )
        if self.keep_tokens and not self.shuffle_tags:
            raise ValueError("keep_tokens only matters with shuffle_tags: true")
        if self.keep_tokens_separator and not self.shuffle_tags:
            raise ValueError("keep_tokens_separator only matters with shuffle_tags: true")
        if self.keep_tokens_separator and (
            not self.keep_tokens_separator.strip() or "," in self.keep_tokens_separator
        ):
            raise ValueError("keep_tokens_separator must not be blank or hold a comma")
        return self

    def text_cache_enabled(self) -> bool:
        """Whether caption embeddings are computed once (the default when allowed)."""
        if self.cache_text_encoder_outputs is not None:
            return self.cache_text_encoder_outputs
        return not (self.train_text_encoder or self.shuffle_tags)

    def latent_cache_enabled(self) -> bool:
        """Whether VAE latents are computed once (the default, unless random_crop)."""
        if self.cache_latents is None:
            return not self.random_crop
        return self.cache_latents


def _divisor_hint(resolution: int) -> int:
    """The largest of 64, 32, 16, 8, 4 that divides ``resolution`` (else 1)."""
    return next((d for d in (64, 32, 16, 8, 4) if resolution % d == 0), 1)


def expand_targets(names: list[str] | None) -> list[str]:
    """``target_modules`` with aliases (attn, ff, proj) expanded; default the attention."""
    if not names:
        return list(DEFAULT_UNET_TARGETS)
    out: list[str] = []
    for name in names:
        for item in TARGET_ALIASES.get(name, [name]):
            if item not in out:
                out.append(item)
    return out
