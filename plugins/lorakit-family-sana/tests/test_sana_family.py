"""The SANA family, added by this package alone: it trains through lorakit-sd, writes a
file SanaPipeline.load_lora_weights consumes whole, resumes exactly and is planned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

SD = {"model_family": "sana", "max_sequence_length": 16, "bucket_step": 16, "sample_steps": 2}


def config(model: Any, data: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    from lorakit_sd.testing import tiny_config

    sd = {**SD, **overrides.pop("sd", {})}
    return tiny_config(model, data, output, sd=sd, **overrides)


def train(plugins: Any, model: Any, data: Path, output: Path, resume: str | None = None, **kw):
    from lorakit.config import load_config
    from lorakit.engine import train as run

    cfg = load_config(data=config(model, data, output, **kw), registries=plugins.registries)
    return run(cfg, plugins=plugins, progress=False, resume=resume)


def losses(output: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()
    ]


def render(pipe: Any) -> Any:
    return pipe(
        prompt="a red circle",
        negative_prompt="",
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=16,
        complex_human_instruction=None,
        use_resolution_binning=False,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images


def test_the_family_is_registered_and_recognised(plugins, sana):
    from lorakit_sd.models import family_of_folder

    from lorakit_sd import families

    assert families.names()[-1] == "sana" and families.label("sana") == "SANA"
    assert family_of_folder(sana.diffusers_dir) == "sana"


def test_trains_and_sana_pipeline_loads_every_tensor_of_the_file(plugins, sana, images, tmp_path):
    from diffusers import SanaPipeline

    out = tmp_path / "run"
    result = train(
        plugins,
        sana,
        images,
        out,
        max_steps=4,
        learning_rate=1e-2,
        lora_rank=4,
        lora_alpha=8,
        export_formats=["kohya", "diffusers"],
        sample_prompts=["a red circle"],
        sample_every_n_steps=4,
    )
    assert losses(out) and all(torch.isfinite(torch.tensor(losses(out))))
    path = out / "run.diffusers.safetensors"
    assert [p.name for p in result.outputs if p.suffix == ".safetensors"] == [path.name]
    assert list((out / "samples").glob("*.png"))  # previews through SanaPipeline
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sana" and meta["modelspec.architecture"] == "sana/lora"
    assert any(".attn1.to_q.lora_A" in k for k in tensors)

    pipe = SanaPipeline.from_pretrained(sana.diffusers_dir)
    before = render(pipe)
    pipe.load_lora_weights(str(path))
    lora = {name: param for name, param in pipe.transformer.named_parameters() if "lora_" in name}
    # every tensor of the file is injected, with the trained values and alpha
    assert len(lora) == len(tensors)
    for key, value in tensors.items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        loaded = lora[f"{module}.lora_{kind.replace('.weight', '')}.default_0.weight"]
        assert torch.equal(loaded.detach(), value.to(loaded.dtype))
    assert pipe.transformer.peft_config["default_0"].lora_alpha == 8
    assert (render(pipe) - before).abs().max() > 1e-4


def test_resume_continues_exactly(plugins, sana, images, tmp_path):
    common = {
        "max_steps": 4,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "save_steps": 2,
        "export_formats": ["diffusers"],
        "sd": {"caption_dropout": 0.3, "flip_aug": True},
    }
    train(plugins, sana, images, tmp_path / "whole", **common)
    step2 = tmp_path / "whole" / "checkpoints" / "step-2"
    train(plugins, sana, images, tmp_path / "resumed", resume=str(step2), **common)
    a = load_file(str(tmp_path / "whole" / "whole.diffusers.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "resumed.diffusers.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "whole")[2:] == losses(tmp_path / "resumed")[-2:]


def test_lorakit_plan_traces_the_sana_transformer(plugins, sana, images, tmp_path, capsys):
    """``lorakit plan`` plans a SANA run; it counts exactly the LoRA a real run trains."""
    import yaml

    from lorakit.config import load_config
    from lorakit.planning import make_plan
    from lorakit.testing import run_cli

    cfg = config(sana, images, tmp_path / "p", lora_rank=4, gradient_checkpointing=True)
    path = tmp_path / "sana.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(capsys, "plan", "--config", path, "--gpu", "24GB")
    assert code == 0, err
    assert "SANA transformer" in out and "Gemma-2 off the GPU after caching" in out
    plan = make_plan(load_config(data=cfg, registries=plugins.registries), ladder=False)
    train(plugins, sana, images, tmp_path / "real", max_steps=1, lora_rank=4)
    written = load_file(str(tmp_path / "real" / "real.diffusers.safetensors"))
    trained = sum(t.numel() for t in written.values())
    assert plan.estimate.trainable_params == trained > 0
    assert plan.estimate.activations > 0


def test_the_template_is_a_valid_sana_config(plugins):
    from importlib import resources

    import yaml

    from lorakit.config import load_config
    from lorakit_sd import families

    _, package, path = families.spec("sana").template
    data = yaml.safe_load(resources.files(package).joinpath(path).read_text())
    config = load_config(data=data, registries=plugins.registries, check_paths=False)
    assert config.backend == "sd" and config.section.model_family == "sana"


def test_config_init_offers_the_family_template(plugins, capsys):
    """A family package's template is one of the sd backend's: ``lorakit config init``
    writes it, and it validates as a SANA config."""
    import yaml

    from lorakit.config import load_config
    from lorakit.testing import run_cli

    code, out, err = run_cli(capsys, "config", "init", "--backend", "sd", "--template", "sana")
    assert code == 0, err
    data = yaml.safe_load(out)
    config = load_config(data=data, registries=plugins.registries, check_paths=False)
    assert config.section.model_family == "sana"
    code, out, err = run_cli(capsys, "config", "init", "--backend", "sd", "--template", "nope")
    assert code == 2 and "sana" in err and "sd15" in err
