"""``lorakit demo`` for text: a stand-in Llama, 150 QA pairs and a config from the 7B template.

The base model is a tiny random-weight Llama with a tokenizer trained on the spot (see
:mod:`lorakit_llm.testing`): the run shows the machinery (packing, answer-only loss, the
PEFT adapter, samples), not the quality. The config is the shipped ``7b`` template with
the paths and the sizes changed so it finishes in seconds on a CPU.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from lorakit.api import write_text


def demo_command(folder: Path) -> Path:
    """Build the stand-in model and data in ``folder``; return the config's path."""
    from lorakit_llm.testing import build_tiny_llama, write_qa_jsonl

    folder = Path(folder)
    model = build_tiny_llama(folder / "tiny-llama")
    data = write_qa_jsonl(folder / "data" / "train.jsonl", 150)
    template = resources.files("lorakit_llm").joinpath("templates/7b.yaml").read_text("utf-8")
    config = yaml.safe_load(template)
    config.update(
        base_model=str(model),
        train_data_dir=str(data),
        output_dir=str(folder / "output" / "capitals-and-sums"),
        lora_rank=8,
        lora_alpha=16,
        target_modules="all-linear",
        batch_size=4,
        gradient_accumulation_steps=1,
        epochs=1,
        max_steps=60,
        learning_rate=1e-2,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        mixed_precision="auto",
        gradient_checkpointing=False,
        save_steps=30,
        sample_prompts=["What is the capital of France?", "What is 12 plus 7?"],
        sample_every_n_steps=30,
    )
    # A frozen random head limits what LoRA alone can learn; training it shows a real fall.
    config["llm"].update(max_seq_len=256, modules_to_save=["lm_head"])
    path = folder / "config.yaml"
    header = (
        "# lorakit demo (text): the 7b template, resized for a random stand-in model.\n"
        "# Train it again: lorakit train --config " + str(path) + "\n"
    )
    write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return path
