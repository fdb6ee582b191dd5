"""Dataset readers, data checks and aspect-ratio buckets (no model needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from lorakit_sd.config import SDSection
from lorakit_sd.data import buckets, readers
from lorakit_sd.testing import write_tiny_images

from lorakit.errors import DataError


def _config(data, **sd):
    train = SimpleNamespace(train_data_dir=str(data))
    return SimpleNamespace(train=train, section=SDSection(**sd))


def _items(sd_plugins, data, **sd):
    from lorakit_sd.data.dataset import build_items

    logs: list[str] = []
    items, index = build_items(
        _config(data, **sd), sd_plugins.registries, None, 32, lambda m: logs.append(m)
    )
    return items, index, logs


@pytest.mark.parametrize("layout", ["csv", "jsonl", "txt"])
def test_each_layout_reads_the_same_records(sd_plugins, tmp_path, layout):
    data = write_tiny_images(tmp_path / layout, 3, layout=layout)
    items, index, logs = _items(sd_plugins, data)
    assert [it.caption for it in items] == [
        "a photo of a red cat sitting on a blue chair",
        "a painting of a green dog in the park, sunny day",
        "a drawing of a yellow bird on a tree branch",
    ]
    assert index == [0, 1, 2] and not logs
    assert all(it.size == (32, 32) and len(it.content_hash) == 64 for it in items)


def test_repeats_and_subsets(sd_plugins, tmp_path):
    first = write_tiny_images(tmp_path / "a", 2)
    second = write_tiny_images(tmp_path / "b", 1, layout="txt")
    items, index, _ = _items(
        sd_plugins, first, repeats=2, subsets=[{"image_dir": str(second), "repeats": 3}]
    )
    assert len(items) == 3 and index == [0, 0, 1, 1, 2, 2, 2]
    assert items[2].folder == str(second)


def test_metadata_path_elsewhere(sd_plugins, tmp_path):
    data = write_tiny_images(tmp_path / "data", 2, layout="jsonl")
    meta = tmp_path / "captions.jsonl"
    meta.write_text((data / "metadata.jsonl").read_text())
    (data / "metadata.jsonl").unlink()
    items, _, _ = _items(sd_plugins, data, metadata_path=str(meta))
    assert len(items) == 2


def _break(data):
    """Four kinds of bad rows in one metadata.csv."""
    (data / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    text = (data / "metadata.csv").read_text().splitlines()
    text += ["missing.png,a caption", "img_003.png,", "../outside.png,escapes"]
    (data / "metadata.csv").write_text("\n".join(text) + "\n")


def test_bad_data_is_one_error_naming_the_files(sd_plugins, tmp_path):
    data = write_tiny_images(tmp_path / "data", 4)
    lines = (data / "metadata.csv").read_text().splitlines()
    (data / "metadata.csv").write_text("\n".join(lines[:4]) + "\n")  # img_003 unlisted
    _break(data)
    with pytest.raises(DataError) as info:
        _items(sd_plugins, data)
    message = str(info.value)
    assert "\n" not in message and "4 problem(s)" in message
    assert "img_001.png: cannot decode" in message or "img_001.png: not an image" in message
    assert "metadata.csv:5: missing.png: image not found" in message
    assert "metadata.csv:6: img_003.png: missing caption" in message
    assert "(+1 more)" in message and "skip_bad_images" in message


def test_skip_bad_images_says_what_it_skips(sd_plugins, tmp_path):
    data = write_tiny_images(tmp_path / "data", 4)
    _break(data)
    items, index, logs = _items(sd_plugins, data, skip_bad_images=True)
    assert [it.image.rsplit("/", 1)[1] for it in items] == [
        "img_000.png",
        "img_002.png",
        "img_003.png",
    ]
    assert len(index) == 3
    assert any("skipping 4 image(s)" in m and "outside.png" in m for m in logs)


def test_sidecar_missing_and_unlisted_images(sd_plugins, tmp_path):
    data = write_tiny_images(tmp_path / "txt", 2, layout="txt")
    (data / "img_001.txt").unlink()
    with pytest.raises(DataError, match=r"img_001.png: no .txt caption file"):
        _items(sd_plugins, data)
    csv_data = write_tiny_images(tmp_path / "csv", 3)
    lines = (csv_data / "metadata.csv").read_text().splitlines()
    (csv_data / "metadata.csv").write_text("\n".join(lines[:2]) + "\n")
    items, _, logs = _items(sd_plugins, csv_data)
    assert len(items) == 1
    assert any("img_001.png" in m and "not trained on" in m for m in logs)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "metadata.csv",
            "image_path,label\n",
            r"metadata.csv:1: the header must name an image column",
        ),
        ("metadata.csv", "", r"metadata.csv: empty file"),
        (
            "metadata.jsonl",
            '{"file_name": "a.png", "text": "x"}\n{oops\n',
            r"metadata.jsonl:2: invalid JSON",
        ),
        ("metadata.jsonl", json.dumps({"text": "x"}) + "\n", r"metadata.jsonl:1: no file_name"),
    ],
)
def test_malformed_captions_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    reader = readers.read_metadata_csv if name.endswith(".csv") else readers.read_metadata_jsonl
    with pytest.raises(DataError, match=match):
        reader(tmp_path)


def test_absolute_paths_are_refused(tmp_path):
    data = write_tiny_images(tmp_path / "data", 1)
    (data / "metadata.csv").write_text(f"file_name,text\n{data / 'img_000.png'},x\n")
    (record,) = readers.read_metadata_csv(data)
    assert "absolute path" in record["error"]


def test_buckets_keep_the_aspect_ratio():
    sizes = buckets.bucket_sizes(512, 64)
    assert (512, 512) in sizes and (640, 384) in sizes and (384, 640) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    assert buckets.nearest_bucket((1000, 600), sizes) == (640, 384)
    assert buckets.nearest_bucket((600, 600), sizes) == (512, 512)
    rw, rh, left, top = buckets.fit((1000, 600), (640, 384))
    assert (rw, rh) == (640, 384) or (rw >= 640 and rh >= 384)
    assert left == (rw - 640) // 2 and top == (rh - 384) // 2


def test_bucket_batches_are_a_pure_function_of_seed_and_epoch():
    keys = [(64, 64)] * 5 + [(96, 64)] * 3
    sampler = buckets.BucketBatchSampler(keys, 2, seed=3)
    first = sampler.batches()
    assert sampler.batches() == first and len(first) == len(sampler) == 5
    assert sorted(i for batch in first for i in batch) == list(range(8))
    assert all(len({keys[i] for i in batch}) == 1 for batch in first)
    sampler.set_epoch(1)
    assert sampler.batches() != first
    again = buckets.BucketBatchSampler(keys, 2, seed=3)
    again.set_epoch(1)
    assert again.batches() == sampler.batches()


def test_links_out_of_the_folder_are_refused(tmp_path):
    data = write_tiny_images(tmp_path / "data", 1)
    write_tiny_images(tmp_path / "elsewhere", 1)
    (data / "link.png").symlink_to(tmp_path / "elsewhere" / "img_000.png")
    (data / "metadata.csv").write_text("file_name,text\nimg_000.png,a\nlink.png,b\n")
    good, bad = readers.read_metadata_csv(data)
    assert good["error"] is None
    assert "link.png: a link that leaves the data folder" in bad["error"]
    (data / "metadata.csv").unlink()
    (data / "img_000.txt").write_text("a")
    (data / "link.txt").write_text("b")
    records = readers.read_caption_files(data)
    assert [r["error"] is None for r in records] == [True, False]


def test_csv_commas_quotes_and_line_numbers(tmp_path):
    data = write_tiny_images(tmp_path / "data", 3)
    (data / "metadata.csv").write_text(
        'file_name,text\nimg_000.png,red, cat, sitting\nimg_001.png,"two\nlines"\nmissing.png,x\n'
    )
    first, second, third = readers.read_metadata_csv(data)
    assert first["caption"] == "red, cat, sitting"  # unquoted commas in the last column
    assert second["caption"] == "two\nlines"
    assert third["where"].endswith("metadata.csv:5") and "image not found" in third["error"]
    (data / "metadata.csv").write_text("text,file_name\na, b,img_000.png\n")
    with pytest.raises(DataError, match=r"metadata.csv:2: 3 fields but the header has 2"):
        readers.read_metadata_csv(data)


def test_long_captions_pick_a_length_and_count_what_is_cut():
    from lorakit_sd.data.dataset import choose_max_tokens
    from lorakit_sd.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    short = ("a red cat", "m.csv:2")
    tags = ", ".join(["red cat"] * 30)  # over 75 tokens, under 225
    long = (tags, "m.csv:3")
    logs: list[str] = []
    assert choose_max_tokens([short], tok, None, logs.append) == 75 and logs == []
    n = len(tok(tags, add_special_tokens=False).input_ids)
    chosen = choose_max_tokens([short, long], tok, None, logs.append)
    assert 75 < n <= 225 and chosen == next(k for k in (75, 150, 225) if k >= n)
    assert logs == [f"captions up to {n} tokens: encoding {chosen} tokens (sd.max_token_length)"]
    logs.clear()
    assert choose_max_tokens([short, long], tok, 75, logs.append) == 75
    assert len(logs) == 1 and "1 caption(s) are longer than 75 tokens" in logs[0]
    assert "m.csv:3" in logs[0] and "m.csv:2" not in logs[0]
