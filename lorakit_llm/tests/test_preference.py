"""Preference tuning through lorakit's own path: data, masks, the engine, metrics, resume,
init_adapter. (Agreement with TRL's trainers: test_preference_trl.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import llm_config, make_backend, one_thread
from pref_helpers import preference_rows, write_jsonl

from lorakit.api import DataError, UsageError


def _run(
    assets: dict[str, Path],
    out: Path,
    data: Path,
    llm: dict[str, Any],
    resume: bool = False,
    **keys: Any,
) -> Any:
    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import get_plugins

    config = load_config(
        data=llm_config({**assets, "qa": data}, out, llm={"max_seq_len": 96, **llm}, **keys)
    )
    with one_thread():
        return train(config, plugins=get_plugins(), progress=False, resume=resume or None)


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- data ------------------------------------------------------------------------------------


def test_both_trl_forms_in_jsonl_json_and_csv_read_alike(tmp_path: Path) -> None:
    from lorakit_llm.preference.reader import detect_preference, read_preference

    rows = preference_rows(3)
    jsonl = write_jsonl(tmp_path / "a" / "p.jsonl", rows)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "p.json").write_text(json.dumps(rows))
    (tmp_path / "c").mkdir()
    csv = "prompt,chosen,rejected\n" + "".join(
        f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"\n' for r in rows
    )
    (tmp_path / "c" / "p.csv").write_text(csv)
    chat = write_jsonl(tmp_path / "d" / "p.jsonl", preference_rows(3, conversational=True))
    read = [read_preference(p) for p in (jsonl, tmp_path / "b", tmp_path / "c", chat)]
    strip = [[{k: v for k, v in r.items() if k != "source"} for r in records] for records in read]
    assert strip[0] == strip[1] == strip[2] == strip[3]
    assert strip[0][0]["prompt"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert all(detect_preference(p) for p in (jsonl, tmp_path / "c", chat))
    system = read_preference(jsonl, system_prompt="Be brief.")[0]["prompt"]
    assert system[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "missing key 'rejected'"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a string or"),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "'chosen' must be an assistant message",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            },
            "the prompt ends with an assistant message",
        ),
        ({"prompt": "q", "chosen": " ", "rejected": "b"}, "must not be empty"),
    ],
)
def test_a_bad_row_is_one_line_naming_file_and_row(
    tmp_path: Path, row: dict[str, Any], message: str
) -> None:
    from lorakit_llm.preference.reader import read_preference

    path = write_jsonl(tmp_path / "p.jsonl", [*preference_rows(2), row])
    with pytest.raises(DataError) as info:
        read_preference(path)
    text = str(info.value)
    assert f"{path}:3" in text and message in text and "\n" not in text


def test_method_and_data_must_agree(assets: dict[str, Path], tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "p" / "p.jsonl", preference_rows(4))
    with pytest.raises(UsageError, match="set llm.method to dpo, orpo or simpo"):
        make_backend({**assets, "qa": pairs}, tmp_path / "a")
    with pytest.raises(UsageError, match="trains on prompt/chosen/rejected pairs"):
        make_backend(assets, tmp_path / "b", llm={"method": "orpo"})


@pytest.mark.parametrize("shape", ["qwen", "llama2"])
def test_masks_cover_exactly_the_answer_and_its_stop_token(shape: str) -> None:
    """Token by token against the template: the targets are the answer's tokens followed by
    the stop token (<|im_end|> for the Qwen-like chatml, </s> for Llama-2 [INST]); the
    prompt, the BOS and what follows the stop token are not."""
    from lorakit_llm.chat_templates import LLAMA2
    from lorakit_llm.preference.data import tokenize_pairs
    from lorakit_llm.testing import build_llama2_like_tokenizer, build_qwen_like_tokenizer
    from lorakit_llm.tokenize import IGNORE

    tokenizer = build_qwen_like_tokenizer() if shape == "qwen" else build_llama2_like_tokenizer()
    template = tokenizer.chat_template if shape == "qwen" else LLAMA2
    stop = "<|im_end|>" if shape == "qwen" else tokenizer.eos_token
    records = [
        {
            "kind": "preference",
            "source": "x:1",
            "chosen": "500 mg every 6 h.",
            "rejected": "It depends on many things.",
            "prompt": [{"role": "user", "content": "Dose of paracetamol?"}],
        },
    ]
    data = tokenize_pairs(records, tokenizer, template, max_seq_len=256)
    for side in ("chosen", "rejected"):
        ids, labels = (t.tolist() for t in getattr(data, side).row(0))
        prompt = tokenizer.apply_chat_template(
            records[0]["prompt"],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
        full = tokenizer.apply_chat_template(
            [*records[0]["prompt"], {"role": "assistant", "content": records[0][side]}],
            chat_template=template,
            tokenize=False,
        )
        answer = full[len(prompt) : full.index(stop, len(prompt)) + len(stop)]
        assert records[0][side] in answer  # what the template adds after the prompt
        targets = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
        # The answer as the template renders it, through the stop token, nothing else.
        assert tokenizer.decode(targets).strip() == answer.strip()
        assert targets[-1] == tokenizer.convert_tokens_to_ids(stop)
        assert targets.count(targets[-1]) == 1
        assert [lab for lab in labels if lab != IGNORE] == targets
        first = labels.index(next(lab for lab in labels if lab != IGNORE))
        assert tokenizer.decode(ids[:first]).replace(" ", "") == (
            tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"]).replace(
                " ", ""
            )
        )  # everything before the answer is the rendered prompt (with its BOS)
        assert all(lab == IGNORE for lab in labels[first + len(targets) :])
        if shape == "llama2":
            assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE


# -- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DPO run on 12 pairs (3 held out), logging every step to JSONL and TensorBoard."""
    root = tmp_path_factory.mktemp("dpo")
    data = write_jsonl(root / "data" / "p.jsonl", preference_rows(12))
    out = root / "run"
    result = _run(
        assets,
        out,
        data,
        {"method": "dpo", "beta": 0.1, "eval_split": 0.25, "eval_steps": 6},
        batch_size=3,
        max_steps=12,
        learning_rate=5e-3,
        trackers=["jsonl", "tensorboard"],
        lora_dropout=0.0,
        target_modules=["all-linear"],
    )
    return {"root": root, "data": data, "out": out, "result": result}


def test_dpo_starts_at_log_2_and_logs_trl_metrics(dpo_run: dict[str, Any]) -> None:
    rows = _metrics(dpo_run["out"])
    first = rows[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference = the base
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0
    names = (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    )
    assert all(name in row for row in rows for name in names)
    assert rows[-1]["rewards/margins"] > 0 and rows[-1]["loss"] < math.log(2)
    evals = [row for row in rows if "eval_rewards/accuracies" in row]
    assert [row["step"] for row in evals] == [6, 12]
    assert evals[-1]["eval_rewards/accuracies"] == 1.0  # the held-out pairs are preferred
    assert evals[-1]["eval_loss"] < math.log(2)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(dpo_run["out"] / "tensorboard"), size_guidance={"scalars": 0})
    tags = tb.Reload().Tags()["scalars"]
    assert any(tag.endswith("rewards/accuracies") for tag in tags), tags


def test_held_out_margin_rises(assets: dict[str, Path], dpo_run: dict[str, Any]) -> None:
    """Pairs not trained on (other drugs, same styles): the log-prob margin of the short dosed
    answer over the vague one grows, measured on the trained adapter loaded with PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    held = [
        ("What is the adult dose of morphine?", "10 mg every 4 h."),
        ("What is the adult dose of tramadol?", "50 mg every 6 h."),
    ]

    def margin(model: Any) -> float:
        total = 0.0
        for prompt, good in held:
            scores = []
            for answer in (good, preference_rows(1)[0]["rejected"]):
                messages = [{"role": "user", "content": prompt}]
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                start = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                ids = tokenizer(
                    text + answer + tokenizer.eos_token,
                    add_special_tokens=False,
                    return_tensors="pt",
                )["input_ids"]
                with torch.no_grad():
                    logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
                picked = logps.gather(1, ids[0, 1:, None])[start - 1 :, 0]
                scores.append(float(picked.sum()))
            total += scores[0] - scores[1]
        return total / len(held)

    base = AutoModelForCausalLM.from_pretrained(assets["model"])
    before = margin(base)
    tuned = PeftModel.from_pretrained(base, str(dpo_run["out"] / "adapter"))
    after = margin(tuned)
    assert after > before + 1.0, (before, after)


def test_resume_is_exact(assets: dict[str, Path], dpo_run: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    out = dpo_run["root"] / "resumed"
    keys = {
        "batch_size": 3,
        "learning_rate": 5e-3,
        "lora_dropout": 0.0,
        "target_modules": ["all-linear"],
        "save_steps": 6,
    }
    llm = {"method": "dpo", "beta": 0.1, "eval_split": 0.25, "eval_steps": 6}
    _run(assets, out, dpo_run["data"], llm, max_steps=6, **keys)
    _run(assets, out, dpo_run["data"], llm, max_steps=12, resume=True, **keys)
    full = load_file(str(dpo_run["out"] / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-6, atol=1e-7)
    assert _metrics(out)[-1]["loss"] == pytest.approx(_metrics(dpo_run["out"])[-1]["loss"])


# -- init_adapter -----------------------------------------------------------------------------


def test_sft_continues_from_init_adapter(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    """The trained QA adapter as init_adapter: the first step starts at its loss, not at the
    base's, and the adapter keeps its own rank."""
    adapter = trained["output"] / "adapter"
    logged = _metrics(trained["output"])
    first, last = logged[0]["loss"], logged[-1]["loss"]
    out = tmp_path / "more"
    _run(assets, out, assets["qa"], {}, max_steps=1, init_adapter=str(adapter), lora_rank=2)
    assert first - last > 0.3
    assert _metrics(out)[0]["loss"] < last + 0.25 * (first - last)
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == json.loads((adapter / "adapter_config.json").read_text())["r"] == 8


def test_dpo_reference_is_the_frozen_init_adapter(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    """DPO from an SFT adapter: the reference is that adapter (a second slot), so the first
    loss is log 2 even though the policy is not the base; only the trained slot is saved."""
    data = write_jsonl(tmp_path / "p" / "p.jsonl", preference_rows(6))
    log: list[str] = []
    backend, _, dataset = make_backend(
        {**assets, "qa": data},
        tmp_path / "probe",
        log=log,
        batch_size=3,
        init_adapter=str(trained["output"]),
        llm={"method": "dpo"},
    )
    assert "init_adapter kept frozen in a second adapter slot" in "\n".join(log)
    assert sorted(backend.model.peft_config) == ["default", "reference"]
    trainable = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    batch = backend.collate([dataset[i] for i in range(3)])
    assert float(backend.loss(backend.model, batch).loss_sum.detach() / 3) == pytest.approx(
        math.log(2), abs=1e-6
    )
    from lorakit_llm.preference.logps import sequence_logps

    with backend.method.reference() as model:
        reference, _ = sequence_logps(model, batch)
    with torch.no_grad(), backend.model.disable_adapter():
        base, _ = sequence_logps(backend.model, batch)
    assert not torch.allclose(base, reference)  # the reference is not the base
    assert [n for n, p in backend.model.named_parameters() if p.requires_grad] == trainable

    out = tmp_path / "run"
    _run(
        assets,
        out,
        data,
        {"method": "dpo"},
        max_steps=2,
        batch_size=3,
        init_adapter=str(trained["output"]),
    )
    assert _metrics(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert not (out / "adapter" / "reference").exists()
    assert sorted(p.name for p in (out / "adapter").iterdir() if p.is_dir()) == []


def test_an_init_adapter_of_another_model_is_one_line(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    source = trained["output"] / "adapter"
    tensors = load_file(str(source / "adapter_model.safetensors"))

    def variant(name: str, change: Any) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
        save_file(change(dict(tensors)), str(folder / "adapter_model.safetensors"))
        return folder

    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    wide = variant("wide", lambda t: {**t, key: torch.zeros(8, 128)})
    deep = variant("deep", lambda t: {**t, key.replace("layers.0", "layers.7"): t[key].clone()})
    for folder, words in ((wide, "takes 64 inputs"), (deep, "model.layers.7.self_attn.q_proj")):
        with pytest.raises(UsageError) as info:
            make_backend(assets, tmp_path / f"out-{folder.name}", init_adapter=str(folder))
        text = str(info.value)
        assert words in text and str(folder) in text and "\n" not in text
    with pytest.raises(UsageError, match="not a PEFT adapter folder"):
        make_backend(assets, tmp_path / "out-none", init_adapter=str(tmp_path))


# -- reference cache, processes ----------------------------------------------------------------


def test_precomputed_reference_trains_as_the_reference_pass(
    assets: dict[str, Path], dpo_run: dict[str, Any], tmp_path: Path
) -> None:
    """precompute_ref_logps: the same losses and metrics as a reference forward every step,
    the run header says so, and the log-probs are cached."""
    keys = {
        "batch_size": 3,
        "learning_rate": 5e-3,
        "lora_dropout": 0.0,
        "target_modules": ["all-linear"],
        "max_steps": 4,
    }
    llm = {"method": "dpo", "beta": 0.1, "eval_split": 0.25, "eval_steps": 6}
    out = tmp_path / "pre"
    _run(assets, out, dpo_run["data"], {**llm, "precompute_ref_logps": True}, **keys)
    ours, every = _metrics(out), _metrics(dpo_run["out"])[:4]
    for a, b in zip(ours, every, strict=True):
        for name in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-5), name
    assert list((out / "cache").glob("*-ref-*.safetensors")) or list(
        out.rglob("tokens-*-ref-*.safetensors")
    )
    log: list[str] = []
    make_backend(
        {**assets, "qa": dpo_run["data"]},
        tmp_path / "header",
        log=log,
        llm={"method": "dpo", "precompute_ref_logps": True},
    )
    assert "log-probs precomputed once and cached" in "\n".join(log)


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_effective_batch(
    assets: dict[str, Path], dpo_run: dict[str, Any], tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    # One step = every one of the 12 pairs (12 on one process, 6 on each of two), so both runs
    # see the same pairs in every step whatever order the sampler draws them in.
    def config(name: str, batch: int) -> Path:
        data = llm_config(
            {**assets, "qa": dpo_run["data"]},
            tmp_path / name,
            batch_size=batch,
            max_steps=3,
            learning_rate=5e-3,
            lora_dropout=0.0,
            llm={"method": "dpo", "max_seq_len": 96},
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorakit.cli",
            "train",
            "--config",
            str(config("two", 6)),
            "--num-processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["num_processes"] == 2
    _run(
        assets,
        tmp_path / "one",
        dpo_run["data"],
        {"method": "dpo"},
        batch_size=12,
        max_steps=3,
        learning_rate=5e-3,
        lora_dropout=0.0,
    )
    a = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    for x, y in zip(_metrics(tmp_path / "two"), _metrics(tmp_path / "one"), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["rewards/margins"] == pytest.approx(y["rewards/margins"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["dpo", "orpo"])
def test_config_init_templates_validate(name: str, tmp_path: Path) -> None:
    from llm_helpers import cli

    from lorakit.config import load_config

    path = tmp_path / f"{name}.yaml"
    assert cli("config", "init", "--backend", "llm", "--template", name, "-o", path) == 0
    config = load_config(path, check_paths=False)
    assert config.section.method == name and config.section.preference_beta() == 0.1
    assert config.train.batch_size == 2 and config.train.gradient_accumulation_steps == 4


def test_label_smoothing_is_conservative_dpo() -> None:
    """cDPO (Mitchell 2023; TRL 1.x no longer applies it to its sigmoid loss): with flip rate
    ε the loss is the expected DPO loss under flipped labels, written here from the note."""
    from lorakit_llm.preference.losses import dpo, simpo

    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    beta, eps = 0.5, 0.2
    h = (c - r) - (rc - rr)
    sig = torch.sigmoid
    expected = -(1 - eps) * torch.log(sig(beta * h)) - eps * torch.log(sig(-beta * h))
    torch.testing.assert_close(dpo(c, r, rc, rr, beta, eps)[0], expected)
    z = beta * (c - r) - 0.3
    expected = -(1 - eps) * torch.log(sig(z)) - eps * torch.log(sig(-z))
    torch.testing.assert_close(simpo(c, r, beta, 0.3, eps)[0], expected)
