"""``benchmarks/gpu_suite.py --dry-run`` runs every case of the GPU suite on CPU at tiny shapes
(issue 29, item 1), so the script that produces the GPU figures cannot rot where no GPU is."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    from lorakit.plugins import set_plugins

    out = tmp_path_factory.mktemp("suite")
    suite = _suite()
    set_plugins(None)  # the installed plugins, as `lorakit train` finds them
    try:
        suite.main(["--dry-run", "--out", str(out), "--steps", "1", "--warmup", "1"])
    finally:
        set_plugins(None)
    return suite, json.loads((out / "gpu_suite.json").read_text()), out


def test_dry_run_has_every_case_with_sane_fields(dry_run: tuple[Any, dict[str, Any], Path]) -> None:
    suite, report, _ = dry_run
    assert report["dry_run"] is True and report["peak_tflops_bf16"] is None
    assert [row["case"] for row in report["cases"]] == [c.name for c in suite.CASES]
    for row in report["cases"]:
        assert "error" not in row, row
        name = row["case"]
        assert row["steps_done"] == 2, name
        assert 0 < row["steps_per_s"] < 1e4 and 0 < row["loop_steps_per_s"] < 1e4, name
        rate = row["tokens_per_s"] if name.startswith("llama") else row["images_per_s"]
        per_step = row["size"] if name.startswith("llama") else 1
        assert rate == pytest.approx(row["steps_per_s"] * per_step, rel=1e-3), name
        assert math.isfinite(row["final_loss"]), name
        assert row["peak_kind"] == "peak_rss" and row["peak_bytes"] > 2**20, name
        assert row["plan_bytes"] and row["plan_bytes"] > 0, name
        assert row["mfu"] is None  # no peak FLOP/s is known for a CPU
        assert row["n_active"] > 0 and row["flops_per_step"] > 0, name


def test_flops_follow_the_written_formulas(dry_run: tuple[Any, dict[str, Any], Path]) -> None:
    """6·N·tokens for the transformers (N without the input embedding table), 3·F for the
    UNets with F counted by torch's flop counter; N checked against the model's config."""
    _, report, _ = dry_run
    rows = {row["case"]: row for row in report["cases"]}
    from lorakit_llm.testing import build_tokenizer

    llama = rows["llama2-7b-lora"]
    # the dry run's Llama: hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 kv heads,
    # LM head untied: q, k, v, o, gate, up, down and two norms a layer, the final norm, the
    # head; the input embedding table left out
    h, i, kv, vocab = 64, 128, 2 * 16, len(build_tokenizer())
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert llama["n_active"] == 2 * per_layer + h + vocab * h
    assert llama["flops_per_step"] == 6 * llama["n_active"] * llama["size"]
    flux = rows["flux1-dev-512"]
    assert flux["flops_per_step"] == 6 * flux["n_active"] * ((flux["size"] // 16) ** 2 + 512)
    for name in ("sd15-512", "sdxl-1024"):
        assert (
            rows[name]["flops_per_step"] % 3 == 0
            and "FlopCounterMode" in rows[name]["flops_formula"]
        )


def test_references_and_markdown(dry_run: tuple[Any, dict[str, Any], Path]) -> None:
    suite, report, out = dry_run
    table = (out / "gpu_suite.md").read_text()
    for case in suite.CASES:
        row = next(r for r in report["cases"] if r["case"] == case.name)
        assert f"| {case.name} |" in table
        if case.reference:
            ref = row["reference"]
            assert "error" not in ref, ref
            assert ref["steps_per_s"] > 0
            assert ref["ratio"] == pytest.approx(
                row["loop_steps_per_s"] / ref["steps_per_s"], rel=1e-2
            )
        else:
            assert "reference" not in row
    assert "dry run" in table and report["versions"]["torch"] in table
