"""`lorakit demo` end to end: both LoRAs train, and real clients load what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_demo_trains_both_kinds_and_the_outputs_load(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "lorakit.cli", "demo", "--output", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lorakit demo" in result.stdout and "random stand-ins" in result.stdout

    # image LoRA: the kohya file loads into the stand-in pipeline with diffusers
    sd_run = out / "sd" / "output" / "shapes"
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out / "sd" / "stand-in-sd1" / "diffusers"))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 4, 4, generator=g)
    hidden = torch.randn(1, 77, pipe.text_encoder.config.hidden_size, generator=g)

    def unet_out():
        with torch.no_grad():
            return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample

    before = unet_out()
    pipe.load_lora_weights(str(sd_run / "shapes.safetensors"))
    assert (unet_out() - before).abs().max() > 1e-4, "the LoRA did not change the UNet"
    assert len(list((sd_run / "samples").glob("*.png"))) >= 2

    # text LoRA: the adapter loads with PEFT and has learned the QA pairs
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm_run = out / "llm" / "output" / "capitals-and-sums"
    base_dir = out / "llm" / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    rows = [
        json.loads(line)
        for line in (out / "llm" / "data" / "train.jsonl").read_text().splitlines()[:16]
    ]
    chats = [
        [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        for r in rows
    ]

    def mean_loss(model) -> float:
        """Mean loss on the answer tokens, as the run trained it."""
        losses = []
        for chat in chats:
            ids = tokenizer.apply_chat_template(chat, tokenize=True)["input_ids"]
            prompt = tokenizer.apply_chat_template(
                chat[:1], tokenize=True, add_generation_prompt=True
            )
            labels = [-100] * len(prompt["input_ids"]) + ids[len(prompt["input_ids"]) :]
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            losses.append(float(out.loss))
        return sum(losses) / len(losses)

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    base_loss = mean_loss(base)
    tuned = PeftModel.from_pretrained(base, str(llm_run / "adapter"))
    assert mean_loss(tuned) < 0.7 * base_loss
    for run in (sd_run, llm_run):
        assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
