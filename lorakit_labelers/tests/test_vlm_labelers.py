"""The florence2 and qwen-vl labelers end to end through ``lorakit label``, on tiny
random-weight Florence-2, Qwen2-VL, Qwen2.5-VL and Qwen3-VL models built here, saved like
hub repositories and loaded through the real processors.

The judge of every caption is transformers itself: the model's own ``generate`` and the
tokenizer's ``batch_decode``, one image at a time, on inputs built here without lorakit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lorakit_labelers.testing import write_sample_images
from lorakit_labelers.testing_vlm import (
    QWEN_VL_ARCHITECTURES,
    build_tiny_florence2,
    build_tiny_qwen_vl,
)
from PIL import Image

from lorakit.metadata_csv import read_metadata

TOKENS = 8
TRIGGER = "mascot_v2"


@pytest.fixture(scope="module")
def tiny_florence2(tmp_path_factory) -> Path:
    return build_tiny_florence2(tmp_path_factory.mktemp("models") / "florence2")


@pytest.fixture(scope="module", params=QWEN_VL_ARCHITECTURES)
def tiny_qwen_vl(request, tmp_path_factory) -> Path:
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("models") / request.param, request.param)


@pytest.fixture
def mixed(tmp_path, monkeypatch) -> Path:
    """Four 48-pixel squares, two images of other shapes, a file that is no image and
    one over the pixel budget (lowered here to 3000 pixels)."""
    folder = tmp_path / "data"
    write_sample_images(folder, 4)
    Image.new("RGB", (40, 72), (200, 40, 40)).save(folder / "tall.png")
    Image.new("RGB", (56, 24), (40, 40, 200)).save(folder / "wide.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "poster.png")
    monkeypatch.setenv("LORAKIT_MAX_IMAGE_PIXELS", "3000")
    return folder


def label_twice(cli, folder: Path, labeler: str, model: Path, *options: str) -> list[dict]:
    """Label ``folder`` batched (the default batch size) and then one image at a time;
    both tables must be the same bytes. Returns the rows."""
    args = ["label", folder, "-l", labeler, "-o", f"model={model}", "--prefix", TRIGGER]
    for option in (f"max_new_tokens={TOKENS}", *options):
        args += ["-o", option]
    code, out, err = cli(*args)
    assert code == 0, err
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 2, err
    assert "broken.png: cannot read it" in skipped[0]
    assert "poster.png: cannot read it" in skipped[1] and "pixel budget" in skipped[1]
    batched = (folder / "metadata.csv").read_bytes()
    code, _, err = cli(*args, "--overwrite", "--batch-size", "1")
    assert code == 0, err
    assert (folder / "metadata.csv").read_bytes() == batched
    _, rows = read_metadata(folder / "metadata.csv")
    names = [r["file_name"] for r in rows]
    assert sorted(names) == sorted(
        ["square_yellow_01.png", "circle_red_02.png", "square_white_03.png"]
        + ["circle_yellow_04.png", "tall.png", "wide.png"]
    )
    assert len({r["text"] for r in rows}) > 1, "every image got the same caption"
    return rows


def copy_model(source: Path, target: Path, leave_out: str = "") -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name != leave_out:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def expected(answer: str) -> str:
    """The table's text for a generated ``answer``: one line, the trigger word first."""
    text = " ".join(answer.split())
    return f"{TRIGGER}, {text}" if text else TRIGGER


def test_florence2_captions_are_what_the_model_generates(tiny_florence2, mixed, cli):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    task = "<MORE_DETAILED_CAPTION>"
    rows = label_twice(cli, mixed, "florence2", tiny_florence2, f"prompt={task}")

    model = Florence2ForConditionalGeneration.from_pretrained(tiny_florence2).eval()
    processor = AutoProcessor.from_pretrained(tiny_florence2)
    for row in rows:
        image = Image.open(mixed / row["file_name"]).convert("RGB")
        inputs = processor(images=image, text=task, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        answer = processor.batch_decode(ids, skip_special_tokens=True)[0]
        assert row["text"] == expected(answer), row["file_name"]


def test_qwen_vl_captions_are_what_the_model_generates(tiny_qwen_vl, mixed, cli):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    question = "Describe this image."
    # Below the 48x48 squares: they are scaled down, as a large photo would be.
    budget = 2048
    rows = label_twice(
        cli, mixed, "qwen-vl", tiny_qwen_vl, f"prompt={question}", f"max_pixels={budget}"
    )

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_vl).eval()
    images = AutoImageProcessor.from_pretrained(tiny_qwen_vl)
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_vl)
    size = {"shortest_edge": images.size["shortest_edge"], "longest_edge": budget}
    lengths = set()
    for row in rows:
        image = Image.open(mixed / row["file_name"]).convert("RGB")
        pixels = images(images=[image], size=size, return_tensors="pt")
        # Qwen-VL's rule: one <|image_pad|> per merged patch, in the chat turn.
        count = int(pixels["image_grid_thw"][0].prod()) // images.merge_size**2
        prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{'<|image_pad|>' * count}<|vision_end|>{question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        text = tokenizer(prompt, return_tensors="pt")
        # Which tokens are image tokens (1), for the model's multimodal rotary positions.
        image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        text["mm_token_type_ids"] = (text["input_ids"] == image_token).int()
        lengths.add(text["input_ids"].shape[1])
        with torch.no_grad():
            ids = model.generate(**text, **pixels, max_new_tokens=TOKENS, do_sample=False)
        new = ids[:, text["input_ids"].shape[1] :]
        answer = tokenizer.batch_decode(new, skip_special_tokens=True)[0]
        assert row["text"] == expected(answer), row["file_name"]
    assert len(lengths) == 3, "the batch needed no padding: the test proves less than it says"


def test_wrong_model_or_prompt_is_one_line(tiny_florence2, tmp_path, cli):
    folder = tmp_path / "data"
    write_sample_images(folder, 2)
    code, _, err = cli("label", folder, "-l", "qwen-vl", "-o", f"model={tiny_florence2}")
    assert code == 2 and err.count("\n") == 1
    assert "is a 'florence2' model, not a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model" in err
    code, _, err = cli("label", folder, "-l", "florence2", "-o", "prompt=<OD>")
    assert code == 2 and err.count("\n") == 1
    assert "option prompt" in err and "<DETAILED_CAPTION>" in err
    assert not (folder / "metadata.csv").exists()


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("models") / "qwen2_vl")


def test_qwen_vl_names_an_image_it_cannot_read(tiny_qwen2_vl, tmp_path, cli):
    """A banner over Qwen-VL's 200:1 aspect limit is one line naming it, nothing written."""
    model = tiny_qwen2_vl
    folder = tmp_path / "data"
    write_sample_images(folder, 2)
    Image.new("RGB", (402, 2), (10, 10, 10)).save(folder / "banner.png")
    code, _, err = cli("label", folder, "-l", "qwen-vl", "-o", f"model={model}")
    assert code == 2 and err.count("\n") == 1
    assert "banner.png: 402x2: its long side is 201 times its short side" in err
    assert not (folder / "metadata.csv").exists()


def test_qwen_vl_without_chat_template_is_one_line(tiny_qwen2_vl, tmp_path, cli):
    model = copy_model(tiny_qwen2_vl, tmp_path / "base-model", leave_out="chat_template.jinja")
    folder = tmp_path / "data"
    write_sample_images(folder, 1)
    code, _, err = cli("label", folder, "-l", "qwen-vl", "-o", f"model={model}")
    assert code == 2 and err.count("\n") == 1
    assert f"{model} has no chat template (a base model?" in err


def test_weights_of_another_layout_are_refused(tiny_florence2, tmp_path, cli):
    """A checkpoint that leaves weights unset (another layout of the same model) would
    caption with random weights: it is one line instead."""
    from safetensors.torch import load_file, save_file

    model = copy_model(tiny_florence2, tmp_path / "other-layout")
    weights = load_file(model / "model.safetensors")
    renamed = {f"legacy.{k}" if "vision" in k else k: v for k, v in weights.items()}
    save_file(renamed, model / "model.safetensors", metadata={"format": "pt"})
    folder = tmp_path / "data"
    write_sample_images(folder, 1)
    code, _, err = cli("label", folder, "-l", "florence2", "-o", f"model={model}")
    assert code == 2 and err.count("\n") == 1
    assert f"{model} does not hold the weights Florence2ForConditionalGeneration needs" in err
    assert not (folder / "metadata.csv").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vlm_labelers_on_gpu(tiny_florence2, tiny_qwen_vl, images, cli):
    for labeler, model in (("florence2", tiny_florence2), ("qwen-vl", tiny_qwen_vl)):
        code, _, err = cli("label", images, "-l", labeler, "-o", f"model={model}", "--overwrite")
        assert code == 0, err
        _, rows = read_metadata(images / "metadata.csv")
        assert len(rows) == 5
