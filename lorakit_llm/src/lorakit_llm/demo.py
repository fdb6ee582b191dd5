"""``lorakit demo`` for text: a stand-in Llama, 150 QA pairs and a config from the 7B template.

The base model is a small random-weight Llama with a tokenizer trained on the spot (see
:mod:`lorakit_llm.testing`); the config is the shipped ``7b`` template with the paths and
sizes changed so it finishes in well under a minute on a CPU. The run must visibly learn:
:func:`demo_score` asks the model every training question before and after training (greedy,
through the same prompt path as ``lorakit chat``) and counts the exact answers, which the
demo prints as a column of its table.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

from lorakit.api import write_text


def demo_command(folder: Path) -> Path:
    """Build the stand-in model and data in ``folder``; return the config's path."""
    from lorakit_llm.testing import build_tiny_llama, write_qa_jsonl

    folder = Path(folder)
    model = build_tiny_llama(folder / "tiny-llama", hidden_size=128, num_layers=2)
    data = write_qa_jsonl(folder / "data" / "train.jsonl", 150)
    template = resources.files("lorakit_llm").joinpath("templates/7b.yaml").read_text("utf-8")
    config = yaml.safe_load(template)
    config.update(
        base_model=str(model),
        train_data_dir=str(data),
        output_dir=str(folder / "output" / "capitals-and-sums"),
        lora_rank=16,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules="all-linear",
        batch_size=8,
        gradient_accumulation_steps=1,
        epochs=20,
        learning_rate=3e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=10,
        mixed_precision="auto",
        gradient_checkpointing=False,
        save_steps=200,
        sample_prompts=["What is the capital of France?", "What is 12 plus 7?"],
        sample_every_n_steps=200,
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


def demo_score(config_path: Path, run_dir: Path | None = None) -> str:
    """How many training questions the model answers exactly: ``"n/N right"``.

    ``run_dir`` None asks the base model; otherwise the run's adapter, prompted as it was
    trained (its template, format and system prompt).
    """
    from lorakit_llm.export import load_for_inference
    from lorakit_llm.generate import adapter_style, generate, with_system

    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    rows = [
        json.loads(line)
        for line in Path(config["train_data_dir"]).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    adapter = Path(run_dir) / "adapter" if run_dir is not None else None
    loras = [(str(adapter), 1.0)] if adapter is not None else []
    model, tokenizer, _ = load_for_inference(config["base_model"], loras, "float32")
    llm = config.get("llm") or {}
    style = adapter_style(adapter, tokenizer, llm.get("chat_template"), llm.get("system_prompt"))
    right = 0
    for row in rows:
        answer = generate(
            model,
            tokenizer,
            with_system(style, row["question"]),
            template=style.template,
            max_new_tokens=24,
        )
        right += answer.strip() == row["answer"].strip()
    return f"{right}/{len(rows)} right"
