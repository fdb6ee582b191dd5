"""The clip and blip labelers end to end through ``lorakit label``, on tiny random-weight
models built offline and loaded through from_pretrained like the real ones."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lorakit_labelers.clip import read_vocabulary
from PIL import Image

from lorakit.labeling import find_images


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["file_name", "text"]
        return list(reader)


def test_clip_tags_every_image_deterministically(tiny_clip, images, cli):
    args = ["label", images, "-l", "clip", "-o", f"model={tiny_clip}", "-o", "threshold=-1"]
    code, out, err = cli(*args, "-o", "top_k=3", "--prefix", "mascot_v2")
    assert code == 0, err
    first = (images / "metadata.csv").read_bytes()
    rows = read_rows(images)
    assert [r["file_name"] for r in rows] == find_images(images)
    vocabulary = set(read_vocabulary())
    for row in rows:
        trigger, *tags = row["text"].split(", ")
        assert trigger == "mascot_v2" and len(tags) == 3 and set(tags) <= vocabulary
    assert len({r["text"] for r in rows}) > 1, "every image got the same tags"
    # Same inputs, same bytes; the batch size does not change the result.
    code, _, err = cli(*args, "-o", "top_k=3", "--prefix", "mascot_v2", "--overwrite")
    assert code == 0, err
    assert (images / "metadata.csv").read_bytes() == first
    code, _, err = cli(
        *args, "-o", "top_k=3", "--prefix", "mascot_v2", "--overwrite", "--batch-size", "2"
    )
    assert code == 0, err
    assert (images / "metadata.csv").read_bytes() == first


def test_clip_ranks_tags_as_clip_model_scores_them(tiny_clip, images, tmp_path, cli):
    from transformers import CLIPModel, CLIPProcessor

    tags = ["red", "blue", "square", "circle", "dog", "cat"]
    tag_file = tmp_path / "tags.txt"
    tag_file.write_text("# my tags\n" + "\n".join(tags + ["red"]) + "\n\n")
    code, _, err = cli(
        "label",
        images,
        "-l",
        "clip",
        "-o",
        f"model={tiny_clip}",
        "-o",
        f"tags={tag_file}",
        "-o",
        "threshold=-1",
        "-o",
        "top_k=6",
        "-o",
        "template=a {} thing",
    )
    assert code == 0, err
    rows = read_rows(images)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    pictures = [Image.open(images / r["file_name"]).convert("RGB") for r in rows]
    inputs = processor(
        text=[f"a {t} thing" for t in tags], images=pictures, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    for row, scores in zip(rows, logits, strict=True):
        expected = [tags[i] for i in torch.argsort(scores, descending=True).tolist()]
        assert row["text"].split(", ") == expected


def test_clip_threshold_drops_tags(tiny_clip, images, cli):
    code, _, err = cli(
        "label", images, "-l", "clip", "-o", f"model={tiny_clip}", "-o", "threshold=1"
    )
    assert code == 0, err
    assert {r["text"] for r in read_rows(images)} == {""}
    assert "5 image(s) got an empty caption from clip" in err


def test_blip_captions_every_image_deterministically(tiny_blip, images, cli):
    args = ["label", images, "-l", "blip", "-o", f"model={tiny_blip}", "-o", "max_new_tokens=8"]
    code, _, err = cli(*args)
    assert code == 0, err
    first = (images / "metadata.csv").read_bytes()
    rows = read_rows(images)
    assert [r["file_name"] for r in rows] == find_images(images)
    assert all(r["text"] for r in rows)
    assert len({r["text"] for r in rows}) > 1, "every image got the same caption"
    code, _, err = cli(*args, "--overwrite", "--batch-size", "2")
    assert code == 0, err
    assert (images / "metadata.csv").read_bytes() == first

    # The captions are what BLIP itself generates for each image.
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    processor = BlipProcessor.from_pretrained(tiny_blip)
    for row in rows:
        image = Image.open(images / row["file_name"]).convert("RGB")
        with torch.no_grad():
            ids = model.generate(
                **processor(images=image, return_tensors="pt"), max_new_tokens=8, num_beams=3
            )
        assert row["text"] == processor.decode(ids[0], skip_special_tokens=True).strip()


def test_blip_prompt_starts_each_caption(tiny_blip, images, cli):
    code, out, err = cli(
        "label",
        images,
        "-l",
        "blip",
        "-o",
        f"model={tiny_blip}",
        "-o",
        "prompt=a photo of",
        "-o",
        "max_new_tokens=4",
        "-o",
        "num_beams=1",
        "--dry-run",
    )
    assert code == 0, err
    texts = [r["text"] for r in csv.DictReader(out.splitlines())]
    assert len(texts) == 5 and all(t.startswith("a photo of") for t in texts)
    assert not (images / "metadata.csv").exists()


@pytest.mark.parametrize("labeler", ["clip", "blip", "florence2", "qwen-vl"])
def test_missing_model_offline_is_one_line(labeler, images, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("label", images, "-l", labeler, "-o", "model=nobody/no-such-model")
    assert code == 2 and err.count("\n") == 1
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in err
    code, _, err = cli("label", images, "-l", labeler, "-o", "model=./no/such/folder")
    assert code == 2 and "model folder ./no/such/folder does not exist" in err
    assert not (images / "metadata.csv").exists()


def test_wrong_kind_of_model_is_one_line(tiny_blip, images, cli):
    code, _, err = cli("label", images, "-l", "clip", "-o", f"model={tiny_blip}")
    assert code == 2 and "is a 'blip' model, not a CLIP model" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_gpu_is_one_line(tiny_clip, images, cli):
    code, _, err = cli(
        "label", images, "-l", "clip", "-o", f"model={tiny_clip}", "-o", "device=cuda"
    )
    assert code == 2 and "no CUDA GPU is visible" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("labeler", ["clip", "blip"])
def test_model_labelers_on_gpu(labeler, tiny_clip, tiny_blip, images, cli):
    model = tiny_clip if labeler == "clip" else tiny_blip
    code, _, err = cli("label", images, "-l", labeler, "-o", f"model={model}", "-o", "device=cuda")
    assert code == 0, err
    assert len(read_rows(images)) == 5
