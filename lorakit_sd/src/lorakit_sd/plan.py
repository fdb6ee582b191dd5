"""What ``lorakit plan`` needs from the sd backend: the UNet (and the text encoders a step
runs) on the meta device and a fake batch, from the model's configs alone.

The configs come from a diffusers folder (``model_index.json``, ``unet/config.json`` ...,
weights or not), a hub id (the local cache under ``HF_HUB_OFFLINE``), or, for a single-file
checkpoint, ``sd.base_config`` (default: the family's standard repo). The module is the
backend's own :class:`~lorakit_sd.conditioning.SDTrainModule` with LoRA injected the way
the backend does it; the batch is ``batch_size`` latents of ``sd.resolution`` (the area every
bucket keeps), caption embeddings (or token ids when captions are encoded each step) and,
for SDXL, the pooled embedding and size ids; the loss mirrors the backend's noise-prediction
MSE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import Config, PlanModel, UsageError, find_images
from lorakit_sd.config import SDSection, expand_targets

DTYPE_NAMES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16", "auto": "bfloat16"}
FAMILY_LABELS = {"sd1": "SD1.x", "sdxl": "SDXL", "sd3": "SD3 / SD3.5", "flux1": "FLUX.1"}


def config_folder(base: str, section: SDSection) -> Path:
    """The folder holding the model's configs (no weights are read)."""
    from lorakit_sd.models import DEFAULT_CONFIG_REPOS, offline, peek_family

    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        family = peek_family(base, section.model_family) or "sd1"
        return config_folder(section.base_config or DEFAULT_CONFIG_REPOS[family], section)
    if "/" not in base or base.startswith((".", "/", "~")):
        raise UsageError(f"base model not found: {base}")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                base, allow_patterns=["*.json", "*/*.json"], local_files_only=offline()
            )
        )
    except Exception as exc:
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline() else "the hub"
        raise UsageError(
            f"base model {base}: configs not found in {where}: {type(exc).__name__}"
        ) from None


def count_images(config: Config, section: SDSection) -> int | None:
    """Images per epoch (with repeats), from the folders' listings."""
    total = 0
    folders = [(config.train.train_data_dir, section.repeats)]
    folders += [(s.image_dir, s.repeats) for s in section.subsets]
    for folder, repeats in folders:
        if Path(folder).is_dir():
            total += len(find_images(Path(folder))) * repeats
    return total or None


def _smaller(resolution: int) -> tuple[int, ...]:
    step = 64 if resolution >= 512 else 8
    values = {resolution * 7 // 8, resolution * 3 // 4, resolution // 2}
    return tuple(
        sorted(
            {v // step * step for v in values if v // step * step > 0} - {resolution}, reverse=True
        )
    )


def planner(config: Config) -> PlanModel:
    """The :class:`PlanModel` of an sd config (registered as the backend's planner)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from lorakit_sd.backend import DEFAULT_RESOLUTION
    from lorakit_sd.models import family_of_folder, quiet_libraries

    section = config.section if isinstance(config.section, SDSection) else SDSection()
    train = config.train
    folder = config_folder(train.base_model, section)
    family = family_of_folder(folder)
    if family in ("sd3", "flux1"):
        from lorakit_sd.plan_flow import flow_planner

        return flow_planner(config, folder, family, section)
    with quiet_libraries():
        unet_config = UNet2DConditionModel.load_config(folder, subfolder="unet")
        vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
        text_configs = [CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")]
        if family == "sdxl":
            text_configs.append(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2"))
    half = train.mixed_precision != "no"
    dtype = getattr(torch, DTYPE_NAMES[train.mixed_precision])
    resolution = section.resolution or DEFAULT_RESOLUTION[family]
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    side = resolution // factor
    channels = int(unet_config["in_channels"])
    cross = unet_config["cross_attention_dim"]
    cross = int(cross if isinstance(cross, int) else cross[0])
    tokens = int(text_configs[0].max_position_embeddings)
    text_cached = section.text_cache_enabled()
    batch = train.batch_size
    caches: dict[str, int] = {}
    if not section.latent_cache_enabled():
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(vae_config)
        size = 4 if family == "sdxl" and train.mixed_precision == "fp16" else dtype.itemsize
        caches["VAE"] = sum(p.numel() for p in vae.parameters()) * size

    def build(checkpointing: bool) -> Any:
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        from lorakit_sd.backend import text_encoder_targets
        from lorakit_sd.conditioning import SDTrainModule

        def lora(targets: list[str]) -> Any:
            return LoraConfig(
                r=train.lora_rank, lora_alpha=train.alpha,  # type: ignore[arg-type]
                lora_dropout=train.lora_dropout, target_modules=targets,
                init_lora_weights="gaussian",
            )  # fmt: skip

        with torch.device("meta"), quiet_libraries():
            unet = UNet2DConditionModel.from_config(unet_config).to(dtype)
            unet.add_adapter(lora(expand_targets(train.target_modules)))
            encoders = []
            if not text_cached:
                classes = [CLIPTextModel, CLIPTextModelWithProjection][: len(text_configs)]
                for i, (cls, cfg) in enumerate(zip(classes, text_configs, strict=True)):
                    encoder = cls(cfg).to(dtype)
                    encoder.requires_grad_(False)
                    if section.train_text_encoder:
                        names = text_encoder_targets(
                            encoder, section.text_encoder_target_modules,
                            skip_last=family == "sdxl" and i == 0,
                        )  # fmt: skip
                        encoder.add_adapter(lora(names))
                    encoders.append(encoder)
        for module in (unet, *encoders):
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if checkpointing:
            unet.enable_gradient_checkpointing()
            if section.train_text_encoder:
                for encoder in encoders:
                    encoder.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False}
                    )
        module = SDTrainModule(unet, encoders or None, family, section.train_text_encoder)
        module.train()
        return module

    def fake_batch() -> dict[str, Any]:
        out: dict[str, Any] = {
            "latents": torch.randn(batch, channels, side, side),
            "noise": torch.randn(batch, channels, side, side),
            "timesteps": torch.randint(0, 1000, (batch,)),
        }
        if text_cached:
            out["hidden"] = torch.randn(batch, tokens, cross)
            if family == "sdxl":
                out["pooled"] = torch.randn(batch, int(text_configs[-1].projection_dim))
        else:
            out["input_ids"] = [torch.randint(0, 1000, (batch, tokens)) for _ in text_configs]
        if family == "sdxl":
            out["time_ids"] = torch.randn(batch, 6)
        return out

    def loss(module: Any, b: dict[str, Any]) -> Any:
        noisy = b["latents"] * 0.9 + b["noise"] * 0.1
        kwargs: dict[str, Any] = {}
        for key in ("hidden", "pooled", "time_ids"):
            if key in b:
                kwargs[key] = b[key].to(dtype)
        if "input_ids" in b:
            kwargs["input_ids"] = b["input_ids"]
        pred = module(noisy.to(dtype), b["timesteps"], **kwargs)
        per = torch.nn.functional.mse_loss(pred.float(), b["noise"].float(), reduction="none")
        return per.mean(dim=tuple(range(1, per.ndim))).sum()

    return PlanModel(
        build=build, batch=fake_batch, loss=loss,
        description=f"{FAMILY_LABELS[family]} UNet, {str(dtype).removeprefix('torch.')} weights",
        per_step=f"{batch} image{'s' if batch > 1 else ''} of {resolution}×{resolution}",
        autocast_dtype=dtype if half else None, caches=caches,
        items=count_images(config, section), resolution_key="sd.resolution",
        resolution=resolution, resolution_steps=_smaller(resolution),
    )  # fmt: skip
