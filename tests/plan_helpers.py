"""Helpers of tests/test_plan.py: configs for tiny models, and the real step's peak."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorakit.testing import write_config  # noqa: F401 (the tests import it from here)

LLAMA = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


@pytest.fixture
def real_plugins() -> Any:
    """The built-ins, lorakit-sd and lorakit-llm, without other entry points."""
    import lorakit_llm.plugin
    import lorakit_sd.plugin

    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(
        entry_points=False, extra=[("sd", lorakit_sd.plugin), ("llm", lorakit_llm.plugin)]
    )
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


def llm_config(
    tmp: Path, base: str, *, words: int = 60, rows: int = 48, **keys: Any
) -> dict[str, Any]:
    """A text-generation config of ``rows`` rows of ``words`` words each (under ``tmp``)."""
    data = tmp / "text"
    if not data.exists():
        data.mkdir(parents=True)
        # Rows of one length: a batch is batch_size examples, each as long as the longest.
        text = [" ".join(f"word{(i * 7 + j) % 97}" for j in range(words)) for i in range(rows)]
        (data / "train.jsonl").write_text(
            "".join(json.dumps({"text": row}) + "\n" for row in text), encoding="utf-8"
        )
    section = {"max_seq_len": 256, "train_on_inputs": True, "dataset_format": "text"}
    section.update(keys.pop("llm", {}))
    return {
        "task_type": "text-generation",
        "base_model": base,
        "train_data_dir": str(data / "train.jsonl"),
        "output_dir": str(tmp / "run"),
        "lora_rank": 8,
        "batch_size": 4,
        "mixed_precision": "no",
        "trackers": [],
        "llm": section,
        **keys,
    }


def real_peak(config: Any, tmp: Path) -> int:
    """Peak bytes of a real optimizer step (the second: Adam's state exists), measured with
    the planner's own memory tracker on real tensors (tests/test_plan_rss.py measures
    without it): the backend's own setup, data, batch and loss."""
    import torch
    from accelerate import Accelerator

    from lorakit.api import TrainContext, get_registries
    from lorakit.planning.estimate import memory_tracker, peak_of

    registries = get_registries()
    backend = registries.backends.get(config.backend).create(config)
    ctx = TrainContext(
        config=config,
        accelerator=Accelerator(cpu=True),
        output_dir=tmp / "out",
        cache_dir=tmp / "cache",
        registries=registries,
        weight_dtype=torch.float32,
        log=lambda *a, **k: None,
    )
    backend.validate(ctx)
    backend.setup(ctx)
    dataset = backend.dataset(ctx)
    module = backend.trainable_module()
    module.train()  # as the engine does
    size = config.train.batch_size
    sampler = backend.batch_sampler(dataset, size, 0)
    indices = next(iter(sampler)) if sampler is not None else list(range(size))
    assert len(indices) == size
    batch = backend.collate([dataset[i] for i in indices])
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    backend.loss(module, batch).loss_sum.backward()  # the first step makes Adam's state
    optimizer.step()
    optimizer.zero_grad()
    tracker = memory_tracker()
    tracker.track_external(module, optimizer)
    with tracker:
        backend.loss(module, batch).loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad()
    backend.teardown()
    return int(peak_of(tracker)[0])


# -- the two cases of docs/will-it-fit.md: the real models' configs ----------------------

#: meta-llama/Llama-2-7b-hf config.json (the keys that shape the model).
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float16",
}

#: stable-diffusion-v1-5: model_index.json and the configs of unet/, vae/, text_encoder/.
SD15 = {
    "model_index.json": {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.6.0",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
    },
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "scaling_factor": 0.18215,
    },
    "text_encoder/config.json": {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "projection_dim": 768,
        "layer_norm_eps": 1e-05,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
}


def template(package: str, name: str) -> dict[str, Any]:
    from importlib import resources

    return yaml.safe_load(resources.files(package).joinpath(name).read_text("utf-8"))
