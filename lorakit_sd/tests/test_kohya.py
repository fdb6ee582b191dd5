"""What kohya users bring: N_name folders, regularisation images, long captions, clip skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lorakit_sd.testing import CORPUS, tiny_image
from sd_helpers import first_losses, lora_keys, train_tiny

from lorakit.testing import write_config


def _kohya_folder(
    root: Path, name: str, n: int, *, ext: str | None = ".txt", size=(32, 32)
) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tiny_image(i + len(name), size).save(folder / f"{i:02d}.png")
        if ext:
            (folder / f"{i:02d}{ext}").write_text(CORPUS[i % len(CORPUS)] + "\n")
    return folder


def _config(tiny_models, data: Path, tmp: Path, **sd):
    from lorakit_sd.testing import tiny_config

    from lorakit.config import load_config

    raw = tiny_config(tiny_models["sd1"], data, tmp / "out", sd=sd)
    return load_config(data=raw)


def test_kohya_folders_give_repeats_class_tokens_and_balanced_reg(
    tiny_models, tmp_path, sd_plugins
):
    from lorakit_sd.data.dataset import build_items

    img, reg = tmp_path / "img", tmp_path / "reg"
    _kohya_folder(img, "10_mascot", 2)
    (img / "10_mascot" / "02.png").write_bytes((img / "10_mascot" / "00.png").read_bytes())
    _kohya_folder(img, "5_style", 2, ext=".caption")
    _kohya_folder(reg, "1_person", 3, ext=None)
    config = _config(tiny_models, img, tmp_path, reg_data_dir=str(reg), prior_loss_weight=0.5)
    logs: list[str] = []
    items, index = build_items(config, sd_plugins.registries, None, 32, logs.append)
    by_folder = {}
    for k in index:
        by_folder.setdefault(Path(items[k].folder).name, []).append(k)
    assert {name: len(ks) for name, ks in by_folder.items()} == {
        "10_mascot": 30,
        "5_style": 10,
        "1_person": 40,
    }
    captions = {Path(it.image).relative_to(tmp_path).as_posix(): it.caption for it in items}
    assert captions["img/10_mascot/00.png"] == CORPUS[0]
    assert captions["img/10_mascot/02.png"] == "mascot"  # no caption file: the class token
    assert captions["img/5_style/01.png"] == CORPUS[1]  # a .caption sidecar
    assert captions["reg/1_person/00.png"] == "person"
    assert all(it.reg == it.image.startswith(str(reg)) for it in items)
    # 40 reg samples for 40 training samples: each of the 3 reg images 13 or 14 times
    assert sorted(index.count(k) for k in set(by_folder["1_person"])) == [13, 13, 14]


def test_prior_loss_weight_scales_the_loss_of_regularisation_samples(tiny_models, tmp_path):
    """Train and reg images in different buckets: one batch of each per epoch."""
    img, reg = tmp_path / "img", tmp_path / "reg"
    _kohya_folder(img, "1_mascot", 2, size=(32, 32))
    _kohya_folder(reg, "1_person", 2, ext=None, size=(48, 24))
    losses = []
    for weight in (1.0, 0.25):
        train_tiny(
            tmp_path,
            tiny_models["sd1"],
            img,
            output_dir=tmp_path / f"w{weight}",
            learning_rate=1e-12,
            max_steps=2,
            sd={"reg_data_dir": str(reg), "prior_loss_weight": weight},
        )
        losses.append(first_losses(tmp_path / f"w{weight}"))
    ratios = sorted(b / a for a, b in zip(*losses, strict=True))
    assert ratios == pytest.approx([0.25, 1.0], rel=1e-4)


def test_long_captions_are_encoded_in_75_token_windows():
    from lorakit_sd.families.clip import encode_ids, tokenize
    from lorakit_sd.families.unet_standin import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    tok, encoder = pipe.tokenizer, pipe.text_encoder
    caption = ", ".join(["red cat"] * 30)
    body = tok(caption, add_special_tokens=False).input_ids
    assert 75 < len(body) <= 150
    # one window: exactly the tokenizer's own padded, truncated ids
    want = tok([caption], padding="max_length", max_length=77, truncation=True).input_ids
    assert tokenize([tok], [caption], 75)[0].tolist() == want
    ids = tokenize([tok], [caption], 150)[0]
    assert ids.shape == (1, 154)
    with torch.no_grad():
        hidden, _ = encode_ids([ids], [encoder], "sd1")
        first = encoder(ids[:, :77])[0]
        second = encoder(ids[:, 77:])[0]
    assert hidden.shape[1] == 2 + 150  # BOS, 75 + 75 tokens, EOS
    torch.testing.assert_close(hidden[:, :76], first[:, :76])  # BOS + the first 75
    torch.testing.assert_close(hidden[:, 76:151], second[:, 1:76])  # the next 75
    torch.testing.assert_close(hidden[:, 151:], second[:, 76:])  # the last window's end
    assert ids[0, 77:].tolist()[: 1 + len(body) - 75] == [tok.bos_token_id, *body[75:]]


def test_clip_skip_reads_an_earlier_layer_through_the_final_norm():
    from lorakit_sd.families.clip import encode_ids, tokenize
    from lorakit_sd.families.unet_standin import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    ids = tokenize([pipe.tokenizer], ["a red cat"])
    with torch.no_grad():
        plain, _ = encode_ids(ids, [pipe.text_encoder], "sd1")
        skipped, _ = encode_ids(ids, [pipe.text_encoder], "sd1", clip_skip=2)
        # A1111 / kohya: the penultimate layer's states through the final layer norm
        # (diffusers' encode_prompt(clip_skip=1) computes the same, but reaches for
        # text_model., which transformers 5's CLIPTextModel no longer has)
        out = pipe.text_encoder(ids[0], output_hidden_states=True)
        reference = pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(skipped, reference)
    assert not torch.allclose(out.hidden_states[-2], skipped)
    assert not torch.allclose(plain, skipped)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_long_captions_train_and_clip_skip_is_recorded(tiny_models, tmp_path, family):
    from lorakit_sd.testing import write_tiny_images

    long = ", ".join(["a mascot character with a big smile"] * 6)
    data = write_tiny_images(tmp_path / "data", 2, captions=[long, "a red cat"])
    result, _ = train_tiny(
        tmp_path,
        tiny_models[family],
        data,
        max_steps=2,
        sd={"clip_skip": 2, "cache_text_encoder_outputs": family == "sd1"},
    )
    _, meta = lora_keys(tmp_path / "run" / "run.safetensors")
    assert meta["ss_clip_skip"] == ("2" if family == "sd1" else "None")
    assert meta["ss_max_token_length"] in ("150", "225")


def test_a_kohya_folder_trains_from_a_config_with_only_the_seed_keys(tiny_models, tmp_path):
    """The mascot run (80 images x 10, rank 16, 15 epochs), scaled down for CI."""
    from lorakit_sd.testing import write_tiny_images

    from lorakit.plugins import set_plugins

    folder = tmp_path / "img" / "10_mascot"
    write_tiny_images(folder, 8, layout="txt", sizes=[(32, 32), (40, 32)])
    config = write_config(
        tmp_path / "mascot.yaml",
        {
            "task_type": "image-generation",
            "base_model": str(tiny_models["sd1"].diffusers_dir),
            "train_data_dir": str(tmp_path / "img"),
            "output_dir": str(tmp_path / "out"),
            "lora_rank": 16,
            "batch_size": 4,
            "epochs": 1,
            "learning_rate": "2e-4",
            "save_steps": 10,
        },
    )
    from lorakit.cli import main

    set_plugins(None)
    try:
        code = main(
            [
                "train",
                "--config",
                str(config),
                "--no-progress",
                "--set",
                "sd.resolution=32",
                "--set",
                "sd.bucket_step=8",
            ]
        )
    except SystemExit as exc:
        code = exc.code
    finally:
        set_plugins(None)
    assert not code
    out = tmp_path / "out"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 20  # 8 images x 10 repeats / batch 4
    keys, meta = lora_keys(
        next(p for p in out.glob("*.safetensors") if ".diffusers." not in p.name)
    )
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_mascot": {"n_repeats": 10, "img_count": 8}}
    assert meta["ss_network_dim"] == "16" and meta["ss_num_train_images"] == "80"
    assert all(k.startswith("lora_unet_") for k in keys)


def test_previews_encode_long_prompts_and_use_clip_skip(tiny_models):
    import numpy as np
    from lorakit_sd.families.unet_sampling import prompt_embeds, render, sampling_pipeline

    sampler = sampling_pipeline(tiny_models["sd1"].load(), "sd1", "epsilon")
    long = ", ".join(["a red cat"] * 30)
    embeds = prompt_embeds(sampler, long, "", None, 1)
    assert embeds["prompt_embeds"].shape[1] > 77
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape

    def image(skip):
        kwargs = {"seed": 0, "steps": 2, "guidance": 3.0, "width": 32, "height": 32}
        return np.asarray(render(sampler, [long], clip_skip=skip, **kwargs)[0], dtype=int)

    assert np.abs(image(1) - image(2)).max() > 0


def test_dataset_dirs_record_each_folders_repeats_as_sd_scripts(tiny_models, tmp_path, sd_plugins):
    """sd-scripts writes ``n_repeats`` = the subset's num_repeats (1 for ``1_woman``), also
    for regularisation folders, whose samples are cycled to balance the training ones."""
    from types import SimpleNamespace

    from lorakit_sd.data.dataset import build_items
    from lorakit_sd.lorafiles.export_view import run_metadata

    from lorakit_sd import families

    img, reg = tmp_path / "img", tmp_path / "reg"
    _kohya_folder(img, "12_mascot", 2)
    _kohya_folder(reg, "1_woman", 3, ext=None)
    config = _config(tiny_models, img, tmp_path, reg_data_dir=str(reg))
    items, index = build_items(config, sd_plugins.registries, None, 32, lambda _: None)
    backend = SimpleNamespace(
        config=config,
        section=config.section,
        items=items,
        index=index,
        family="sd1",
        started_at=0,
        resolution=32,
        latents_cached=False,
        max_tokens=75,
        prediction_type="epsilon",
        spec=families.get("sd1"),
        objective=SimpleNamespace(metadata=dict),
        unet=None,
    )
    meta = run_metadata(backend, 1)
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_woman": {"n_repeats": 1, "img_count": 3}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"12_mascot": {"n_repeats": 12, "img_count": 2}}
    assert meta["ss_num_reg_images"] == "24"  # 24 reg samples per epoch, each image ~8 times
