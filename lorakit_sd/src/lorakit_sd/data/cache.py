"""Latent and text-encoder-output caches: computed once, in memory or on disk.

Latents are cached as the VAE's distribution parameters (mean and log-variance), not as one
sample: each step still draws a fresh latent from them with torch's global generator, exactly
as encoding every step would, so a cached run and an uncached run see the same numbers.
Caption embeddings are cached per distinct caption, plus the empty caption that
``caption_dropout`` trains with.

On disk (``sd.cache_to_disk``) each entry is a small safetensors file under
``<cache_dir>/latents/`` or ``<cache_dir>/text/``, named by a hash of the image bytes (or the
caption), the crop and bucket, and the encoder's weights: a later run with the same settings
reuses it, a changed image or model misses it. Files are read back lazily, so memory does not
grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from lorakit.api import save_safetensors
from lorakit_sd.data.control import control_pixels
from lorakit_sd.data.dataset import pixel_mask
from lorakit_sd.data.masks import to_latent
from lorakit_sd.data.video import item_pixels

CACHE_VERSION = 2  # 2: keys cover every encoder weight


def weights_id(module: torch.nn.Module) -> str:
    """A fingerprint of every weight of a module: names, dtypes, shapes and all the bytes.

    A cache key that hashed only some tensors would reuse stale latents or embeddings for a
    VAE or text encoder that differs elsewhere (a fine-tuned encoder, a fixed VAE). Only
    computed for on-disk caches; in-memory caches live for one run.
    """
    digest = hashlib.blake2b(digest_size=16)
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


class EntryStore:
    """Tensor dicts by index: in memory, or as files under a folder read back on demand."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.memory: dict[int, dict[str, torch.Tensor]] = {}
        self.files: dict[int, Path] = {}
        self.hits = 0

    def lookup(self, index: int, key: str) -> bool:
        """Register an index's on-disk entry if it exists; return whether it does."""
        if self.directory is None:
            return False
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            self.files[index] = path
            self.hits += 1
            return True
        return False

    def put(self, index: int, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        if self.directory is None:
            self.memory[index] = tensors
            return
        path = self.directory / f"{key}.safetensors"
        save_safetensors(tensors, path, metadata={"lorakit.cache": str(CACHE_VERSION)})
        self.files[index] = path

    def get(self, index: int) -> dict[str, torch.Tensor]:
        if index in self.memory:
            return self.memory[index]
        from safetensors.torch import load_file

        return load_file(str(self.files[index]))


def encode_moments(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's parameters (mean ‖ log-variance) for a pixel batch in [-1, 1]."""
    param = next(vae.parameters())
    with torch.no_grad():
        return (
            vae.encode(pixels.to(param.device, param.dtype))
            .latent_dist.parameters.float()
            .contiguous()
        )


def as_entries(encoded: Any) -> dict[str, torch.Tensor]:
    """What a family's ``encode_moments`` gave, by cache key: the moments, and whatever else
    the family keeps per sample (a first-frame condition)."""
    return dict(encoded) if isinstance(encoded, dict) else {"moments": encoded}


def build_latent_cache(
    items: list[Any],
    vae: Any,
    *,
    flip: bool,
    batch_size: int,
    directory: Path | None,
    log: Any = print,
    encode: Any = None,
) -> EntryStore:
    """Moments for every item (and its mirror image when ``flip``); with masked loss, each
    item's mask at the latent's size too (the key names the mask); in an edit dataset, the
    moments of its control images too (``control_moments``: ``[K, 2C, h, w]``, the key names
    them)."""

    encode = encode or encode_moments  # the family's (``ModelFamily.encode_moments``)
    started = time.perf_counter()
    store = EntryStore(directory)
    vae_id = weights_id(vae) if directory is not None else ""
    masked = any(it.mask for it in items)
    keys = [
        cache_key(
            "latent",
            it.content_hash,
            it.bucket,
            it.size,
            flip,
            vae_id,
            *([f"mask:{it.mask_hash}"] if masked else []),
            *([f"frames:{list(it.frames)}"] if it.frames else []),
            *([f"control:{it.control_hash}"] if it.control else []),
        )
        for it in items
    ]
    todo = [i for i in range(len(items)) if not store.lookup(i, keys[i])]
    if store.hits:
        log(f"latent cache: {store.hits} of {len(items)} images found in {directory}")
    by_bucket: dict[tuple[int, ...], list[int]] = {}
    for i in todo:
        by_bucket.setdefault(items[i].group, []).append(i)
    done = 0
    for bucket in sorted(by_bucket):
        group = by_bucket[bucket]
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            pixels = torch.stack([item_pixels(items[i]) for i in chunk])
            encoded = as_entries(encode(vae, pixels))
            flipped = as_entries(encode(vae, pixels.flip(-1))) if flip else {}
            moments = encoded["moments"]
            for j, i in enumerate(chunk):
                entry = {name: value[j] for name, value in encoded.items()}
                if masked:
                    mask = pixel_mask(items[i])[None]
                    entry["mask"] = to_latent(mask, tuple(moments.shape[-2:]))[0]
                entry.update({f"{name}_flip": value[j] for name, value in flipped.items()})
                if items[i].control:
                    entry.update(_control_entry(items[i], vae, encode, flip))
                store.put(i, keys[i], entry)
            done += len(chunk)
    if done:
        log(f"latent cache: encoded {done} images in {time.perf_counter() - started:.1f} s")
    return store


def _control_entry(item: Any, vae: Any, encode: Any, flip: bool) -> dict[str, torch.Tensor]:
    """The cached moments of an item's control images (and of their mirror images)."""
    pixels = control_pixels(item)
    entry = {"control_moments": encode(vae, pixels)}
    if flip:
        entry["control_moments_flip"] = encode(vae, pixels.flip(-1))
    return entry


def build_text_cache(
    captions: list[str],
    tokenizers: list[Any],
    text_encoders: list[Any],
    family: str,
    *,
    batch_size: int,
    directory: Path | None,
    max_tokens: int = 75,
    clip_skip: int = 1,
    log: Any = print,
    encode: Any = None,
) -> EntryStore:
    """Embeddings for each distinct caption (indexed by position in ``captions``).

    ``encode(captions) -> {"hidden": ..., "pooled": ...}`` is the model family's caption
    encoder (default: the CLIP windows of the UNet families); ``text_encoders`` are every encoder it
    runs (their weights key the on-disk entries).
    """
    if encode is None:
        from lorakit_sd.families.clip import encode_captions

        def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
            hidden, pooled = encode_captions(
                chunk, tokenizers, text_encoders, family, max_tokens, clip_skip
            )
            return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}

    started = time.perf_counter()
    store = EntryStore(directory)
    te_id = "+".join(weights_id(te) for te in text_encoders) if directory is not None else ""
    keys = [cache_key("text", family, c, te_id, max_tokens, clip_skip) for c in captions]
    todo = [i for i in range(len(captions)) if not store.lookup(i, keys[i])]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        with torch.no_grad():
            encoded = encode([captions[i] for i in chunk])
        for j, i in enumerate(chunk):
            store.put(i, keys[i], {name: value[j] for name, value in encoded.items()})
    log(
        f"text cache: {len(captions)} captions ({store.hits} from disk, {len(todo)} encoded) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return store
