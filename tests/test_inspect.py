"""``lorakit inspect``: kohya, diffusers, PEFT-folder and lorakit files, and broken ones.

The files are written by the real writers where one exists: diffusers'
``save_lora_weights``, PEFT's ``save_pretrained`` and lorakit's own exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from conftest import toy_config

from lorakit import __version__
from lorakit.diagnostics.inspect import inspect_path, kohya_target, read_file
from lorakit.errors import UsageError
from lorakit.testing import run_cli


@pytest.fixture(autouse=True)
def _installed_backends() -> Any:
    """inspect asks the installed backends (sd, llm) to identify each file."""
    from lorakit.plugins import set_plugins

    set_plugins(None)
    yield
    set_plugins(None)


KOHYA_MODULES = [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
]


@pytest.fixture(scope="module")
def kohya_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kohya/A1111 file: rank 4, alpha 2 (one module stores alpha as bf16), ss_* metadata."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for i, module in enumerate(KOHYA_MODULES):
        tensors[f"{module}.lora_down.weight"] = torch.randn(4, 32, dtype=torch.float16)
        tensors[f"{module}.lora_up.weight"] = torch.zeros(32, 4, dtype=torch.float16)
        dtype = torch.bfloat16 if i == 0 else torch.float32
        tensors[f"{module}.alpha"] = torch.tensor(2.0, dtype=dtype)
    path = tmp_path_factory.mktemp("kohya") / "mascot.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={
            "ss_network_dim": "4",
            "ss_network_alpha": "2",
            "ss_base_model_version": "sd_v1",
            "ss_training_started_at": "1767225600",
            "modelspec.architecture": "stable-diffusion-v1/lora",
        },
    )
    return path


def test_kohya_file(kohya_file, capsys):
    report = inspect_path(kohya_file)
    assert report.format == "kohya / A1111 LoRA"
    assert report.modules == 4 and report.groups == {"unet": 3, "text_encoder": 1}
    assert report.ranks == [4] and report.alphas == [2.0]
    assert report.alpha_source == ".alpha tensors"
    assert report.targets == ["attn1_to_q", "ff_net_0_proj", "proj_in", "self_attn_q_proj"]
    assert report.base_model == "sd_v1"
    assert report.made_by.startswith("kohya sd-scripts-style trainer")
    code, out, _ = run_cli(capsys, "inspect", str(kohya_file))
    assert code == 0
    assert "rank:        4" in out and "alpha:       2 (scale alpha/rank = 0.5)" in out
    assert "ss_network_dim: 4" in out


def test_kohya_target_names():
    assert (
        kohya_target("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k") == "attn2_to_k"
    )
    assert kohya_target("lora_unet_input_blocks_1_0_in_layers_2") == "in_layers_2"
    assert kohya_target("lora_te2_text_model_encoder_layers_11_mlp_fc1") == "mlp_fc1"


@pytest.fixture(scope="module")
def peft_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT adapter folder: rank 8, alpha 16 on q_proj/v_proj, one layer at rank 2."""
    import torch
    from peft import LoraConfig, get_peft_model

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(16, 16)
            self.v_proj = torch.nn.Linear(16, 16)
            self.o_proj = torch.nn.Linear(16, 16)

    model = torch.nn.Sequential(Block(), Block())
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], rank_pattern={"1.v_proj": 2}
    )
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


def test_peft_adapter_folder(peft_folder, capsys):
    report = inspect_path(peft_folder)
    assert report.format.startswith("PEFT adapter (LORA")
    assert report.modules == 4 and report.ranks == [2, 8]
    assert report.alphas == [16.0] and report.alpha_source == "adapter_config.json"
    assert report.targets == ["q_proj", "v_proj"]
    assert report.made_by.startswith("PEFT ")
    assert any("rank_pattern" in n for n in report.notes)
    assert inspect_path(peft_folder / "adapter_config.json").ranks == [2, 8]
    code, out, _ = run_cli(capsys, "inspect", str(peft_folder), "--json")
    assert code == 0 and json.loads(out)["adapter_config"]["r"] == 8


def test_adapter_folder_inside_a_run_reads_run_json(peft_folder, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(peft_folder, run_dir / "adapter")
    record = {
        "lorakit": "0.1.0",
        "plugins": {"lorakit-llm": "0.1.0"},
        "backend": "llm",
        "config_hash": "abcdef0123456789",
        "steps": 30,
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    report = inspect_path(run_dir / "adapter")
    assert report.made_by == (
        "lorakit 0.1.0 with lorakit-llm 0.1.0 (backend llm, config hash abcdef0123456789, step 30)"
    )


def test_diffusers_file(tmp_path):
    import torch
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    layers = {}
    for name in (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    ):
        layers[f"{name}.lora_A.weight"] = torch.randn(4, 32)
        layers[f"{name}.lora_B.weight"] = torch.zeros(32, 4)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(tmp_path),
        unet_lora_layers=layers,
        unet_lora_adapter_metadata={"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k"]},
        weight_name="style.diffusers.safetensors",
    )
    report = inspect_path(tmp_path / "style.diffusers.safetensors")
    assert report.format == "diffusers (PEFT keys)"
    assert report.groups == {"unet": 2} and report.ranks == [4]
    assert report.alphas == [8.0] and report.alpha_source == "diffusers lora_adapter_metadata"
    assert report.targets == ["to_k", "to_q"]
    assert report.made_by == "diffusers save_lora_weights"


def test_lorakit_file(toy_plugins, tmp_path, capsys):
    """lorakit's own exporter, with the provenance the engine hands it."""
    import toy_backend

    from lorakit.builtins.exporters import export_safetensors
    from lorakit.config import load_config
    from lorakit.provenance import file_metadata

    config = load_config(data=toy_config(tmp_path, lora_rank=3, lora_alpha=6), check_paths=False)
    backend = toy_backend.ToyBackend(config)
    backend.setup(types.SimpleNamespace(registries=toy_plugins.registries))
    metadata = {**file_metadata(config, plugins=toy_plugins), "lorakit.step": "12"}
    [path] = export_safetensors(backend.adapter_export(12), tmp_path, "toy", metadata)
    assert path.name == "toy.lorakit.safetensors"
    report = inspect_path(path)
    assert report.format == "lorakit (raw PEFT module names)"
    assert report.modules == 2 and report.ranks == [3]
    assert report.alphas == [6.0] and report.alpha_source == "lorakit.config metadata"
    assert report.targets == ["model.0", "model.2"]  # a numbered module keeps its container
    assert report.made_by.startswith(f"lorakit {__version__} with toy {__version__}")
    assert f"config hash {config.semantic_hash()}" in report.made_by and "step 12" in report.made_by
    code, out, _ = run_cli(capsys, "inspect", str(path))
    assert code == 0 and "--metadata shows all" in out  # the long lorakit.config value
    code, out, _ = run_cli(capsys, "inspect", str(path), "--metadata")
    assert '"lora_rank": 3' in out


# -- broken files: one line, exit 2 ------------------------------------------------


def _write(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def broken_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    raw = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) - 100])
    head_cut = tmp_path / "headcut.safetensors"
    head_cut.write_bytes(raw[:50])
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    return {
        "truncated data": (cut, "truncated: "),
        "truncated header": (head_cut, "truncated: the header runs past the end"),
        "tiny": (_tiny(tmp_path), "too short"),
        "huge header": (_huge(tmp_path), "header claims more than 100 MB"),
        "not json": (_write(tmp_path / "nj.safetensors", b"{not json"), "invalid JSON"),
        "not object": (_write(tmp_path / "arr.safetensors", b"[1, 2]"), "invalid type: sequence"),
        "bad offsets": (
            _write(tmp_path / "off.safetensors", json.dumps({"w": entry}).encode(), b"\0" * 8),
            "truncated: tensor w claims 16 bytes (F32 [2, 2]) but the file holds 8 bytes",
        ),
        "size mismatch": (
            _write(
                tmp_path / "size.safetensors",
                json.dumps({"w": {**entry, "shape": [3, 3]}}).encode(),
                b"\0" * 16,
            ),
            "invalid shape, data type, or offset for tensor",
        ),
        "bad shape": (
            _write(
                tmp_path / "shape.safetensors", json.dumps({"w": {**entry, "shape": "2"}}).encode()
            ),
            'invalid type: string "2"',
        ),
        "pickle": (_pickle(tmp_path), "does not open pickles"),
        "missing": (tmp_path / "nope.safetensors", "no such file"),
    }


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    return path


def _huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return path


def _pickle(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04not really")
    return path


def test_broken_files_are_one_line_errors(kohya_file, tmp_path, capsys):
    for label, (path, message) in broken_files(tmp_path, kohya_file).items():
        with pytest.raises(UsageError) as caught:
            read_file(path) if label != "missing" else inspect_path(path)
        assert message in str(caught.value), label
        code, out, err = run_cli(capsys, "inspect", str(path))
        assert code == 2, label
        assert err.count("\n") == 1 and message in err and str(path) in err, (label, err)


def test_not_an_adapter_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "inspect", str(tmp_path))
    assert code == 2 and "not a PEFT adapter folder (no adapter_config.json)" in err


def test_inspect_reads_only_the_header(kohya_file):
    """A subprocess: the command never imports torch or safetensors' loaders."""
    code = (
        "import sys\nfrom lorakit.cli import main\n"
        f"main(['inspect', {str(kohya_file)!r}])\n"
        "heavy = ('torch', 'safetensors.torch', 'transformers', 'diffusers')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
    assert "kohya / A1111 LoRA" in done.stdout


def test_adapter_sidecar_lorakit_json(peft_folder, tmp_path):
    """lorakit-llm's adapter folders carry a lorakit.json next to adapter_config.json."""
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(peft_folder, folder)
    record = {
        "lorakit": "0.1.0",
        "config_hash": "0123456789abcdef",
        "step": "40",
        "plugins": {"lorakit-llm": "0.1.0"},
    }
    (folder / "lorakit.json").write_text(json.dumps(record))
    report = inspect_path(folder)
    assert report.made_by == (
        "lorakit 0.1.0 with lorakit-llm 0.1.0 (config hash 0123456789abcdef, step 40)"
    )
    assert report.provenance["source"] == str(folder / "lorakit.json")


def test_diffusers_keys_with_lorakit_metadata(tmp_path):
    """lorakit-sd's <name>.diffusers.safetensors: diffusers keys, lorakit provenance."""
    import torch
    from safetensors.torch import save_file

    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    config = {"lora_rank": 4, "lora_alpha": None, "base_model": "./v1-5.safetensors"}
    path = tmp_path / "style.diffusers.safetensors"
    save_file(
        {f"{name}.lora_A.weight": torch.zeros(4, 8), f"{name}.lora_B.weight": torch.zeros(8, 4)},
        str(path),
        metadata={
            "lorakit.version": "0.1.0",
            "lorakit.backend": "sd",
            "lorakit.config": json.dumps(config),
            "lorakit.plugins": "{}",
        },
    )
    report = inspect_path(path)
    assert report.format == "diffusers (PEFT keys)"
    assert report.made_by == "lorakit 0.1.0 (backend sd)"
    assert report.alphas == [4.0] and "alpha = rank" in report.alpha_source
    assert report.base_model == "./v1-5.safetensors" and report.targets == ["to_v"]


def test_inspect_asks_the_installed_backends(kohya_file, tmp_path, capsys):
    """The core holds no backend's key layout: without lorakit-sd a kohya file is only LoRA
    pairs; a backend's ``identify`` (here a plugin's, through the public API) names it."""
    import lorakit.diagnostics.inspect as core
    from lorakit.api import BackendPlugin, FileKind, FileProbe, hookimpl
    from lorakit.plugins import build_plugins, set_plugins

    source = Path(core.__file__).read_text()
    for literal in ('"lora_unet_', '"lora_te', '"text_encoder', '"unet'):
        assert literal not in source, literal  # no backend's prefixes in the core's code

    set_plugins(build_plugins(entry_points=False))
    bare = inspect_path(kohya_file)
    assert bare.format == "PEFT keys" and bare.groups == {"model": 4} and bare.ranks == [4]

    seen: list[FileProbe] = []

    def identify(probe: FileProbe) -> FileKind | None:
        seen.append(probe)
        if probe.tensor_names and all(n.startswith("lora_") for n in probe.tensor_names):
            return FileKind(
                "probe layout",
                groups={"lora_unet_": "u", "lora_te_": "t"},
                kohya_names=True,
                notes=("identified by the probe backend",),
            )
        return None

    class ProbeBackend(BackendPlugin):
        name, task_types = "probe", ("probe",)

        def identify(self, probe: FileProbe) -> FileKind | None:
            return identify(probe)

    class Probe:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            register(ProbeBackend())

    set_plugins(build_plugins(entry_points=False, extra=[("probe", Probe())]))
    report = inspect_path(kohya_file)
    assert seen[0].path == kohya_file and seen[0].metadata["ss_network_dim"] == "4"
    assert report.format == "probe layout" and report.groups == {"u": 3, "t": 1}
    assert report.targets == ["attn1_to_q", "ff_net_0_proj", "proj_in", "self_attn_q_proj"]
    assert "identified by the probe backend" in report.notes
