"""EMA on the llm backend (issue 27, item 2): the PEFT exporter writes the average as
``adapter/`` and the raw weights as ``adapter-raw/``, both loaded by PEFT's own loader."""

from __future__ import annotations

from typing import Any

import torch
from llm_helpers import llm_config, one_thread, probe_ids

import lorakit
from lorakit.config import load_config
from lorakit.engine import train


def test_the_adapter_holds_the_average_and_adapter_raw_the_trained_weights(
    assets, tmp_path, llm_plugins
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = probe_ids(assets["model"])
    captured: dict[str, Any] = {}

    class Capture:
        @lorakit.hookimpl
        def on_train_end(self, run: Any, outputs: list[str]) -> None:
            run.backend.model.eval()
            with torch.no_grad():
                captured["logits"] = run.backend.model(input_ids=ids).logits.clone()

    llm_plugins.add(Capture(), name="capture-ema")
    try:
        out = tmp_path / "run"
        config = load_config(data=llm_config(assets, out, max_steps=6, ema={"decay": 0.7}))
        with one_thread():
            result = train(config, plugins=llm_plugins, progress=False)
    finally:
        llm_plugins.pm.unregister(name="capture-ema")
        llm_plugins.infos.pop("capture-ema", None)
    assert {p.name for p in result.outputs} == {"adapter", "adapter-raw"}

    def logits(adapter: str) -> torch.Tensor:
        base = AutoModelForCausalLM.from_pretrained(str(assets["model"]))
        model = PeftModel.from_pretrained(base, str(out / adapter)).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits

    raw, ema = logits("adapter-raw"), logits("adapter")
    assert (raw - captured["logits"]).abs().max().item() < 1e-4  # the trained weights
    assert (ema - raw).abs().max().item() > 1e-3  # the average lags them
