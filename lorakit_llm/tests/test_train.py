"""End to end through the real engine and CLI: train, export, reload, merge, sample, chat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import cli, llm_config, probe_ids

from lorakit.errors import UsageError
from lorakit.testing import one_thread, write_config


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_loss_falls_on_150_qa_pairs(trained: dict[str, Any]) -> None:
    lines = (trained["output"] / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == 40
    # LoRA on q_proj/v_proj only, over a frozen random embedding and head: a modest fall.
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses
    first = json.loads(lines[0])
    assert first["tokens_per_s"] > 0
    run = json.loads((trained["output"] / "run.json").read_text())
    assert run["status"] == "finished" and run["dataset_fingerprint"]


def test_modules_to_save_lets_it_overfit(assets: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    from lorakit.config import load_config
    from lorakit.engine import train

    # 30 steps of 16 examples: about three passes over the 150 pairs.
    data = llm_config(
        assets,
        tmp_path / "run",
        target_modules="all-linear",
        max_steps=30,
        batch_size=16,
        learning_rate=1e-2,
        llm={"modules_to_save": ["lm_head"]},
    )
    result = train(load_config(data=data), progress=False)
    losses = [json.loads(x)["loss"] for x in (result.output_dir / "metrics.jsonl").open()]
    assert sum(losses[-5:]) / 5 < 3.0 < losses[0], losses
    adapter = result.output_dir / "adapter"
    model = PeftModel.from_pretrained(base_model(assets["model"]), adapter)
    head = model.base_model.model.lm_head
    assert hasattr(head, "modules_to_save")  # the trained head came back with the adapter
    assert not torch.equal(head.modules_to_save["default"].weight, head.original_module.weight)


def test_adapter_loads_with_peft_and_reproduces_the_model(
    trained: dict[str, Any], assets: dict[str, Path]
) -> None:
    from peft import PeftModel
    from safetensors import safe_open

    adapter = trained["output"] / "adapter"
    model = PeftModel.from_pretrained(base_model(assets["model"]), adapter)
    expected = trained["logits"]
    got = logits_of(model, probe_ids(assets["model"]))
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    base = logits_of(base_model(assets["model"]), probe_ids(assets["model"]))
    assert (base - expected).abs().max() > 1e-2  # the adapter does change the model

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}  # PEFT's LLaMA default
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    config_hash = trained["config"].semantic_hash()
    assert metadata["lorakit.config_hash"] == config_hash
    assert metadata["lorakit.version"] and metadata["format"] == "pt"
    record = json.loads((adapter / "lorakit.json").read_text())
    assert record["config_hash"] == config_hash and record["llm"]["dataset_format"] == "qa"
    assert (adapter / "chat_template.jinja").is_file()
    # Every checkpoint carries its own adapter too.
    assert (
        trained["output"] / "checkpoints" / "step-40" / "adapter" / "adapter_config.json"
    ).is_file()


def test_merge_writes_a_model_with_the_same_logits(
    trained: dict[str, Any], assets: dict[str, Path], tmp_path: Path
) -> None:
    from lorakit_llm.generate import AdapterRef, load_adapters

    adapter = trained["output"] / "adapter"
    out = tmp_path / "merged"
    assert (
        cli(
            "merge",
            "--base",
            assets["model"],
            "--adapter",
            adapter,
            "-o",
            out,
            "--dtype",
            "float32",
        )
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / "lorakit.json").is_file()
    ids = probe_ids(assets["model"])
    merged = logits_of(base_model(out), ids)
    assert (merged - trained["logits"]).abs().max() < 1e-4

    # A weighted merge equals the adapter applied at that weight.
    half = tmp_path / "half"
    assert (
        cli(
            "merge",
            "--base",
            assets["model"],
            "--adapter",
            f"{adapter}:0.5",
            "-o",
            half,
            "--dtype",
            "float32",
        )
        == 0
    )
    weighted = load_adapters(base_model(assets["model"]), [AdapterRef("a", adapter, 0.5)])
    assert (logits_of(base_model(half), ids) - logits_of(weighted, ids)).abs().max() < 1e-4


def test_samples_during_training_match_lorakit_sample(
    trained: dict[str, Any], assets: dict[str, Path], tmp_path: Path
) -> None:
    samples = trained["output"] / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step-20.txt", "step-40.txt"]
    final = (samples / "step-40.txt").read_text()
    assert final.startswith("### What is the capital of France?\n")
    code = cli(
        "sample",
        "--base",
        assets["model"],
        "--adapter",
        trained["output"],
        "-p",
        "What is the capital of France?",
        "-o",
        tmp_path,
    )
    assert code == 0
    assert (tmp_path / "samples.txt").read_text() == final  # greedy: the same answer
    # After training, from the run's resolved config: its prompts and its adapter.
    code = cli("sample", "--config", trained["output"] / "config.yaml", "-o", tmp_path / "c")
    assert code == 0
    assert (tmp_path / "c" / "samples.txt").read_text() == final


@pytest.fixture(scope="session")
def gguf_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run from the GGUF file, through `lorakit train --config`."""
    out = tmp_path_factory.mktemp("gguf-run") / "from-gguf"
    data = llm_config(assets, out, base_model=str(assets["gguf"]), max_steps=3)
    config = write_config(out.parent / "gguf.yaml", data)
    with one_thread():
        assert cli("train", "--config", config, "--no-progress") == 0
    return out


def test_training_from_a_gguf_file(
    gguf_run: Path, trained: dict[str, Any], assets: dict[str, Path]
) -> None:
    from peft import PeftModel

    # The F32 GGUF holds the same weights: the first step's loss is the folder run's.
    first = json.loads((gguf_run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    folder = json.loads((trained["output"] / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first - folder["loss"]) < 1e-4
    adapter = gguf_run / "adapter"
    # The adapter names its base as standard tools load it: the folder + the GGUF file name.
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter / "adapter_config.json").read_text())
    record = json.loads((adapter / "lorakit.json").read_text())
    assert config["base_model_name_or_path"] == str(assets["gguf"].parent.resolve())
    assert record["base_gguf_file"] == assets["gguf"].name
    base = AutoModelForCausalLM.from_pretrained(
        config["base_model_name_or_path"], gguf_file=record["base_gguf_file"]
    )
    from_gguf = logits_of(PeftModel.from_pretrained(base, adapter), probe_ids(assets["model"]))
    model = PeftModel.from_pretrained(base_model(assets["model"]), adapter)
    from_folder = logits_of(model, probe_ids(assets["model"]))
    assert torch.allclose(from_gguf, from_folder, atol=1e-5)  # F32 GGUF: the same weights


def test_a_ggml_file_gets_a_clear_message(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lorakit_llm.loading import load_base
    from lorakit_llm.testing import write_ggml_stub

    data = llm_config(assets, tmp_path / "out", base_model=str(assets["ggml"]))
    config = write_config(tmp_path / "ggml.yaml", data)
    assert cli("train", "--config", config) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "GGML" in err and "not GGUF" in err and "convert_llama_ggml_to_gguf.py" in err
    assert not (tmp_path / "out").exists()
    for magic in ("ggml", "ggmf", "ggla"):
        with pytest.raises(UsageError, match=f"magic '{magic}'"):
            load_base(str(write_ggml_stub(tmp_path / f"{magic}.bin", magic)), dtype=torch.float32)


def test_chat_answers_with_two_adapters(
    trained: dict[str, Any],
    gguf_run: Path,
    assets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lorakit_llm.chat_session import ChatSession
    from lorakit_llm.generate import AdapterRef, generate, load_adapters

    a, b = trained["output"], gguf_run / "adapter"
    question = "What is the capital of France?"
    args = [
        "chat",
        "--base",
        assets["model"],
        "--adapter",
        f"capitals={a}",
        "--adapter",
        f"{b}:0.5",
        "--prompt",
        question,
        "--max-new-tokens",
        "8",
    ]
    capsys.readouterr()
    assert cli(*args, "--use", "from-gguf") == 0
    answer = capsys.readouterr().out.strip()
    only_b = load_adapters(base_model(assets["model"]), [AdapterRef("b", b, 0.5)])
    messages = [{"role": "user", "content": question}]
    expected = generate(
        only_b, _tokenizer(assets), messages, template=_template(a), max_new_tokens=8
    )
    assert answer == expected

    assert cli(*args, "--combine") == 0
    assert capsys.readouterr().out.strip()

    # The combination is the weighted sum: the same logits as merging both adapters.
    session = ChatSession.open(str(assets["model"]), [(str(a), 1.0), (str(b), 0.5)])
    session.combine()
    merged = tmp_path / "both"
    assert (
        cli(
            "merge",
            "--base",
            assets["model"],
            "--adapter",
            a,
            "--adapter",
            f"{b}:0.5",
            "-o",
            merged,
            "--dtype",
            "float32",
        )
        == 0
    )
    ids = probe_ids(assets["model"])
    diff = (logits_of(session.model, ids) - logits_of(base_model(merged), ids)).abs().max()
    assert diff < 1e-4
    session.use("capitals")
    assert torch.allclose(logits_of(session.model, ids), trained["logits"], atol=1e-6)


def _tokenizer(assets: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets["model"])


def _template(run: Path) -> str:
    return (run / "adapter" / "chat_template.jinja").read_text()


def test_4bit_needs_cuda() -> None:
    from lorakit_llm.loading import quantization_config

    if torch.cuda.is_available():
        pytest.skip("CUDA present: QLoRA is allowed here")
    with pytest.raises(UsageError, match="CUDA"):
        quantization_config(torch.bfloat16)


def test_hub_id_respects_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from lorakit_llm.loading import load_base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        load_base("lorakit-tests/no-such-model", dtype=torch.float32)


def test_broken_jsonl_line_is_reported(assets: dict[str, Path], tmp_path: Path) -> None:
    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.errors import DataError

    data = tmp_path / "data.jsonl"
    lines = assets["qa"].read_text().splitlines()
    lines[6] = '{"question": "What is 1 plus 1?", "answer": "2.}'
    data.write_text("\n".join(lines) + "\n")
    config = load_config(data=llm_config(assets, tmp_path / "out", train_data_dir=str(data)))
    with pytest.raises(DataError, match=rf"{data}:7: invalid JSON"):
        train(config, progress=False)


def test_chat_repl_switches_adapters(
    trained: dict[str, Any],
    gguf_run: Path,
    assets: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = iter(
        [
            "/adapters",
            "What is 2 plus 2?",
            "/use from-gguf",
            "/use nope",
            "/combine",
            "What is 2 plus 2?",
            "/base",
            "/reset",
            "/quit",
        ]
    )
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code = cli(
        "chat",
        "--base",
        assets["model"],
        "--adapter",
        trained["output"],
        "--adapter",
        gguf_run,
        "--max-new-tokens",
        "4",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "adapters: capitals (1), from-gguf (1); active: capitals" in out
    assert "error: no adapter named 'nope' (loaded: capitals, from-gguf)" in out
    assert next(lines, None) is None  # every line was read, up to /quit


def test_an_adapter_for_another_base_is_refused_with_the_module_names(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lorakit_llm.testing import build_tiny_llama

    other = build_tiny_llama(tmp_path / "narrow", hidden_size=32)
    capsys.readouterr()
    code = cli("chat", "--base", str(other), "--adapter", str(trained["output"]), "--prompt", "hi")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "shapes do not fit" in err and "self_attn.q_proj.lora_A" in err


def test_each_adapter_is_prompted_as_it_was_trained(
    trained: dict[str, Any],
    assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two adapters on one base: the first trained with the model's template, the second with
    chatml and a system prompt, a third on raw prompt/completion text. chat and sample prompt
    each one as it was trained, also after /use."""
    from lorakit_llm.chat_session import ChatSession
    from lorakit_llm.chat_templates import CHATML
    from lorakit_llm.generate import AdapterRef, generate, load_adapters
    from lorakit_llm.testing import write_qa_jsonl

    from lorakit.config import load_config
    from lorakit.engine import train

    system = "Answer with one word."
    chatml = train(
        load_config(
            data=llm_config(
                assets,
                tmp_path / "chatml",
                max_steps=2,
                llm={"chat_template": "chatml", "system_prompt": system},
            )
        ),
        progress=False,
    ).output_dir
    raw_data = write_qa_jsonl(tmp_path / "pc" / "train.jsonl", 20, fmt="prompt_completion")
    raw = train(
        load_config(
            data=llm_config(assets, tmp_path / "raw", max_steps=2, train_data_dir=str(raw_data))
        ),
        progress=False,
    ).output_dir
    record = json.loads((chatml / "adapter" / "lorakit.json").read_text())
    assert record["llm"]["system_prompt"] == system

    session = ChatSession.open(
        str(assets["model"]),
        [(f"own={trained['output']}", 1.0), (f"chatml={chatml}", 1.0), (f"raw={raw}", 1.0)],
        max_new_tokens=6,
    )
    own_template = _template(trained["output"])
    assert session.template == own_template and session.system is None
    session.use("chatml")
    assert session.template == CHATML and session.system == system
    question = "What is the capital of France?"
    only = load_adapters(base_model(assets["model"]), [AdapterRef("c", chatml / "adapter")])
    expected = generate(
        only,
        _tokenizer(assets),
        [{"role": "system", "content": system}, {"role": "user", "content": question}],
        template=CHATML,
        max_new_tokens=6,
    )
    assert session.ask(question) == expected
    session.use("raw")
    assert session.template is None and session.system is None and session.history == []
    session.use("own")
    assert session.template == own_template

    # lorakit sample: the chatml adapter gets its template and its system prompt.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert (
        cli(
            "sample",
            "--base",
            assets["model"],
            "--adapter",
            chatml,
            "-p",
            question,
            "-o",
            tmp_path / "s",
            "--steps",
            "6",
        )
        == 0
    )
    assert (tmp_path / "s" / "samples.txt").read_text().strip() == f"### {question}\n{expected}"


def test_eval_split_and_eval_data_log_an_eval_loss(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lorakit_llm.testing import write_qa_jsonl
    from lorakit_llm.tokenize import tokenize_records
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoTokenizer

    from lorakit.config import load_config
    from lorakit.engine import train

    # 5% of the 150 rows held out, chosen by seed; eval every 2 steps and at the end.
    config = load_config(
        data=llm_config(
            assets,
            tmp_path / "split",
            max_steps=5,
            trackers=["jsonl", "tensorboard"],
            llm={"eval_split": 0.05, "eval_steps": 2},
        )
    )
    result = train(config, progress=False)
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4, 5]
    events = EventAccumulator(str(result.output_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/eval_loss")] == [2, 4, 5]

    # A separate eval file: the last eval loss is the adapter's loss on those rows.
    held = write_qa_jsonl(tmp_path / "held" / "eval.jsonl", 12, seed=7)
    config = load_config(
        data=llm_config(assets, tmp_path / "data", max_steps=3, llm={"eval_data": str(held)})
    )
    capsys.readouterr()
    result = train(config, progress=True)  # not a terminal: plain step lines
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").open()]
    final = [r["eval_loss"] for r in rows if "eval_loss" in r][-1]
    assert rows[-1]["step"] == 3 and "eval_loss" in rows[-1]
    # The terminal shows it too: on the step line, and in the run's result (the summary).
    steps = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step 3/3")]
    assert steps and f"eval loss {final:.4f}" in steps[0], steps
    assert result.eval_loss == final
    model = PeftModel.from_pretrained(base_model(assets["model"]), result.output_dir / "adapter")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    from lorakit_llm.readers import read_qa

    data = tokenize_records(
        read_qa(held), tokenizer, tokenizer.chat_template, max_seq_len=128, train_on_inputs=False
    )
    total = count = 0.0
    for i in range(len(data)):
        ids, labels = (t.long()[None] for t in data.row(i))
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        target = labels[0, 1:]
        mask = target != -100
        total += float(
            torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
        )
        count += int(mask.sum())
    assert abs(final - total / count) < 1e-4
    assert (result.output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="eval_split or eval_data"):
        load_config(
            data=llm_config(assets, tmp_path / "x", llm={"eval_split": 0.1, "eval_data": str(held)})
        )
