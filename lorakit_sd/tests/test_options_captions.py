"""Caption and image augmentations, judged by what reaches diffusers' and transformers' models.

``sd.caption_dropout`` and ``sd.flip_aug`` are read at the models' inputs during a real run:
the UNet's ``encoder_hidden_states`` (compared with diffusers' own ``encode_prompt`` of the
caption and of ""), the VAE encoder's pixels (compared with numpy's ``fliplr`` of the image
file) and the text encoder's token ids (decoded by the tokenizer). Rates are checked against
binomial bounds written here: ``|k - n p| <= 5 sqrt(n p (1 - p))``, which a correct sampler
misses with probability below 1e-6.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations
from typing import Any

import numpy as np
import torch
from sd_helpers import train_tiny

import lorakit


def within_binomial(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 5 * math.sqrt(n * p * (1 - p))


class Inputs:
    """Records what the models of a run receive, step by step."""

    def __init__(self) -> None:
        self.hidden: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.pipe: Any = None

    @lorakit.hookimpl
    def on_train_start(self, run: Any) -> None:
        pipe = run.backend.model.pipe
        self.pipe = pipe

        def unet(module: Any, args: Any, kwargs: Any) -> None:
            hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            self.hidden.append(hidden.detach().float().clone())

        def vae(module: Any, args: Any) -> None:
            self.pixels.append(args[0].detach().float().clone())

        def text(module: Any, args: Any, kwargs: Any) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.ids.append(ids.detach().clone())

        run.backend.unet.register_forward_pre_hook(unet, with_kwargs=True)
        pipe.vae.encoder.register_forward_pre_hook(vae)
        pipe.text_encoder.register_forward_pre_hook(text, with_kwargs=True)


def _run(tmp_path: Any, model: Any, data: Any, steps: int, **sd: Any) -> Inputs:
    import sd_helpers

    seen = Inputs()
    original = sd_helpers.Capture
    sd_helpers.Capture = lambda: seen  # type: ignore[assignment,misc]
    try:
        result, _ = train_tiny(
            tmp_path,
            model,
            data,
            capture=True,
            max_steps=steps,
            batch_size=8,
            learning_rate=1e-4,
            trackers=[],
            export_formats=["kohya"],
            sd=sd,
        )
    finally:
        sd_helpers.Capture = original
    assert result.steps == steps
    return seen


def _image_pixels(path: Any, flip: bool) -> torch.Tensor:
    """The image file as the VAE takes it: RGB in [-1, 1], channels first; numpy's fliplr."""
    from PIL import Image

    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    if flip:
        array = np.fliplr(array)
    return torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1


def test_caption_dropout_and_flips_at_their_rates(tiny_models, tmp_path):
    from lorakit_sd.testing import write_tiny_images

    model = tiny_models["sd1"]
    data = write_tiny_images(tmp_path / "data", 8)
    steps, p = 25, 0.25
    seen = _run(tmp_path, model, data, steps, caption_dropout=p, flip_aug=True, cache_latents=False)
    pipe = seen.pipe
    with torch.no_grad():  # diffusers' own prompt encoding, the judge of what the UNet got
        empty = pipe.encode_prompt("", "cpu", 1, False)[0][0].float()
        rows = (data / "metadata.csv").read_text().splitlines()[1:]
        captions = sorted({row.split(",", 1)[1].strip('"') for row in rows})
        encoded = [pipe.encode_prompt(c, "cpu", 1, False)[0][0].float() for c in captions]
    samples = torch.cat(seen.hidden)
    assert samples.shape[0] == steps * 8
    dropped = 0
    for hidden in samples:
        is_empty = torch.allclose(hidden, empty, atol=1e-5)
        is_caption = any(torch.allclose(hidden, e, atol=1e-5) for e in encoded)
        assert is_empty != is_caption  # each sample carries its caption or the empty one
        dropped += is_empty
    assert within_binomial(dropped, len(samples), p), (dropped, len(samples))

    # flips: every encoded image is an image file, as is or mirrored by numpy
    images = sorted(data.glob("*.png"))
    plain = [_image_pixels(path, False) for path in images]
    mirrored = [_image_pixels(path, True) for path in images]
    pixels = torch.cat(seen.pixels)
    assert pixels.shape[0] == steps * 8
    flips = 0
    for sample in pixels:
        as_is = [k for k, x in enumerate(plain) if torch.allclose(sample, x, atol=1e-6)]
        flipped = [k for k, x in enumerate(mirrored) if torch.allclose(sample, x, atol=1e-6)]
        assert len(as_is) + len(flipped) == 1, (as_is, flipped)
        flips += bool(flipped)
    assert within_binomial(flips, len(pixels), 0.5), (flips, len(pixels))


def test_shuffle_tags_keeps_the_first_tags_and_permutes_the_rest(tiny_models, tmp_path):
    from lorakit_sd.testing import write_tiny_images

    model = tiny_models["sd1"]
    head, tail = ["sks", "mascot"], ["red", "blue", "green"]
    caption = ", ".join(head + tail)
    data = write_tiny_images(tmp_path / "data", 8, captions=[caption])
    steps = 25
    seen = _run(tmp_path, model, data, steps, shuffle_tags=True, keep_tokens=len(head))
    tokenizer = seen.pipe.tokenizer
    ids = torch.cat(seen.ids)
    assert ids.shape[0] == steps * 8
    orders: Counter[tuple[str, ...]] = Counter()
    for row in ids:
        text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
        tags = [t.strip() for t in text.split(",")]
        assert tags[: len(head)] == head, tags  # kept in place
        assert sorted(tags[len(head) :]) == sorted(tail), tags  # the rest, each once
        orders[tuple(tags[len(head) :])] += 1
    every = set(permutations(tail))
    assert set(orders) == every  # all 3! orders are reached
    n = sum(orders.values())
    assert all(within_binomial(k, n, 1 / len(every)) for k in orders.values()), orders


def test_keep_tokens_separator_keeps_the_ends_and_shuffles_the_middle(tiny_models, tmp_path):
    """kohya's ``keep_tokens_separator`` (sd-scripts' ``process_caption``): before the first
    separator fixed, after a second one fixed, in order; the middle shuffled; ``keep_tokens``
    only for captions without it. A third separator only ends a tag of the fixed end."""
    from lorakit_sd.testing import write_tiny_images

    captions = [
        "sks, mascot ||| red, blue, green ||| best quality, smile",
        "alpha, beta, gamma, delta",
        "cat ||| dog, bird ||| tree ||| sky",
    ]
    data = write_tiny_images(tmp_path / "data", 6, captions=captions)
    steps = 20
    seen = _run(
        tmp_path,
        tiny_models["sd1"],
        data,
        steps,
        shuffle_tags=True,
        keep_tokens=1,
        keep_tokens_separator="|||",
    )
    tokenizer = seen.pipe.tokenizer
    ids = torch.cat(seen.ids)
    assert ids.shape[0] == steps * 6
    expected = {  # head, shuffled middle, tail
        "sks": (["sks", "mascot"], ["red", "blue", "green"], ["best quality", "smile"]),
        "alpha": (["alpha"], ["beta", "gamma", "delta"], []),
        "cat": (["cat"], ["dog", "bird"], ["tree", "sky"]),
    }
    orders: dict[str, Counter[tuple[str, ...]]] = {k: Counter() for k in expected}
    for row in ids:
        text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
        tags = [t.strip() for t in text.split(",")]
        head, middle, tail = expected[tags[0]]
        assert "|||" not in text, text
        assert tags[: len(head)] == head, tags
        assert tags[len(tags) - len(tail) :] == tail, tags
        shuffled = tags[len(head) : len(tags) - len(tail)]
        assert sorted(shuffled) == sorted(middle), tags
        orders[tags[0]][tuple(shuffled)] += 1
    for first, (_, middle, _) in expected.items():
        every = set(permutations(middle))
        assert set(orders[first]) == every, (first, orders[first])
        n = sum(orders[first].values())
        assert all(within_binomial(k, n, 1 / len(every)) for k in orders[first].values())
