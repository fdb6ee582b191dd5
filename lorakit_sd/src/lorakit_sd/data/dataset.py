"""The training set: records from the dataset readers, checked, bucketed, maybe cached.

Every folder (``train_data_dir`` and each of ``sd.subsets``) is read by a registered dataset
reader, every listed image is decoded once, and every problem (missing file, missing caption,
a path that leaves the folder, an unreadable image) is collected: the run stops with one line
that names the files, or skips them and says which when ``sd.skip_bad_images`` is on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.api import DataError, is_image_name
from lorakit_sd import families
from lorakit_sd.data.buckets import (
    bucket_sizes,
    fit,
    nearest_bucket,
    no_upscale_bucket,
    random_crop,
)
from lorakit_sd.data.control import check_counts, control_folder, control_pixels, find_controls
from lorakit_sd.data.images import check_image, file_hash
from lorakit_sd.data.masks import find_mask, load_mask, mask_size
from lorakit_sd.data.readers import (
    detect_format,
    format_problems,
    image_files,
    kohya_subfolders,
    unlisted_images,
)
from lorakit_sd.data.video import clip_samples, is_clip_name, item_pixels
from lorakit_sd.families.clip import MAX_TOKEN_LENGTHS, token_count


@dataclass
class Item:
    """One distinct training image and how it is fitted."""

    image: str
    caption: str
    folder: str
    size: tuple[int, int]
    bucket: tuple[int, int]
    crop: tuple[int, int]  # (left, top) after resizing
    resized: tuple[int, int]
    content_hash: str
    where: str = ""  # the captions file and line (or the caption file) it came from
    reg: bool = False  # a regularisation image (sd.reg_data_dir)
    repeats: int = 1  # its folder's repeats (kohya N_name, sd.repeats), before reg balancing
    mask: str = ""  # masked loss: a mask file, "alpha:<image>", or "" (none)
    mask_hash: str = ""  # what the mask is, for cache keys and the fingerprint
    #: video families: the source frames of this sample (a still image: ``(0,)``); images: ()
    frames: tuple[int, ...] = ()
    control: tuple[str, ...] = ()  # edit datasets: the control images, in order
    control_hash: str = ""  # what they are, for cache keys and the fingerprint

    @property
    def group(self) -> tuple[int, ...]:
        """What a batch shares: the bucket, and for a video family the frame count too."""
        return (len(self.frames), *self.bucket) if self.frames else self.bucket


@dataclass
class Folder:
    path: Path
    metadata_path: str | None
    repeats: int
    caption_extension: str
    class_token: str | None = None  # kohya N_name folders: the caption of uncaptioned images
    reg: bool = False
    mask_dir: Path | None = None  # masked loss: the folder of this folder's masks
    control_dir: Path | None = None  # edit datasets: sd.control_dir (default folder/control)


def _has_data(folder: Folder) -> bool:
    path = folder.path
    return bool(folder.metadata_path) or (
        path.is_dir()
        and bool(
            image_files(path)
            or (path / "metadata.csv").is_file()
            or (path / "metadata.jsonl").is_file()
        )
    )


def _kohya(folder: Folder) -> list[Folder]:
    """A parent of kohya ``N_name`` subfolders as those subfolders, else the folder itself."""
    subs = [] if _has_data(folder) else kohya_subfolders(folder.path)
    if not subs:
        return [folder]
    return [
        Folder(
            sub,
            None,
            repeats,
            folder.caption_extension,
            token,
            folder.reg,
            folder.mask_dir / sub.name if folder.mask_dir else None,
            folder.control_dir / sub.name if folder.control_dir else None,
        )
        for sub, repeats, token in subs
    ]


def folders(config: Any) -> list[Folder]:
    """``train_data_dir`` (unless subsets are given and it holds nothing) and the subsets.

    A ``train_data_dir`` (or ``sd.reg_data_dir``) that holds kohya ``N_name`` subfolders
    stands for those subfolders: ``10_mascot`` is repeated 10 times and its images without a
    caption file are captioned ``mascot``.
    """
    train, section = config.train, config.section
    main = Folder(
        Path(train.train_data_dir),
        section.metadata_path,
        section.repeats,
        section.caption_extension,
        mask_dir=_path(section.conditioning_data_dir),
        control_dir=_path(section.control_dir),
    )
    out = []
    main_kohya = _kohya(main)
    if _has_data(main) or main_kohya != [main] or not section.subsets:
        out += main_kohya
    for sub in section.subsets:
        out.append(
            Folder(
                Path(sub.image_dir),
                sub.metadata_path,
                sub.repeats,
                sub.caption_extension,
                mask_dir=_path(sub.conditioning_data_dir),
                control_dir=_path(sub.control_dir),
            )
        )
    if section.reg_data_dir:
        reg = Folder(Path(section.reg_data_dir), None, 1, section.caption_extension, reg=True)
        out += _kohya(reg)
    return out


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def read_folder(folder: Folder, fmt: str, registries: Any) -> tuple[list[dict[str, Any]], str]:
    """Records of one folder through the registered reader; returns (records, reader)."""
    if not folder.path.is_dir():
        raise DataError(f"image folder not found: {folder.path}")
    name = detect_format(folder.path, folder.metadata_path) if fmt == "auto" else fmt
    spec = registries.dataset_readers.get(name)
    if name == "caption_files" and folder.class_token:
        records = spec.factory(
            folder.path,
            caption_extension=folder.caption_extension,
            default_caption=folder.class_token,
        )
    elif name == "caption_files":
        records = spec.factory(folder.path, caption_extension=folder.caption_extension)
    else:
        records = spec.factory(folder.path, metadata_path=folder.metadata_path)
    return records, name


def section_buckets(section: Any, resolution: int) -> list[tuple[int, int]] | None:
    """The buckets of a run at ``resolution`` (None when ``sd.bucket`` is off)."""
    if not section.bucket:
        return None
    return bucket_sizes(
        resolution,
        section.bucket_step,
        section.min_bucket_resolution,
        section.max_bucket_resolution,
    )


def bucket_of(
    size: tuple[int, int], buckets: list[tuple[int, int]] | None, resolution: int, section: Any
) -> tuple[int, int]:
    """The bucket an image of ``size`` trains at (``buckets`` None: bucketing is off)."""
    if buckets and section.bucket_no_upscale:
        return no_upscale_bucket(size, resolution, section.bucket_step)
    if buckets:
        return nearest_bucket(size, buckets)
    return (resolution, resolution)


def build_items(
    config: Any,
    registries: Any,
    buckets: list[tuple[int, int]] | None,
    resolution: int,
    log: Any = print,
    video: bool = False,
) -> tuple[list[Item], list[int]]:
    """Checked, bucketed items and the epoch index (item ids, each ``repeats`` times).

    ``video``: a video family's data: clips are cut into samples (``sd.video``), a still image
    is a one-frame sample; otherwise a clip is a problem (the family trains on images)."""

    section = config.section
    if video and (section.alpha_mask or any(f.mask_dir for f in folders(config))):
        raise DataError("masked loss (sd.conditioning_data_dir / sd.alpha_mask) is for images")
    items: list[Item] = []
    index: list[int] = []
    reg_index: list[int] = []
    problems: list[str] = []
    for folder in folders(config):
        records, reader = read_folder(folder, section.dataset_format, registries)
        if folder.mask_dir is not None and not folder.mask_dir.is_dir():
            raise DataError(f"mask folder not found: {folder.mask_dir} (conditioning_data_dir)")
        controls_in = None if folder.reg else control_folder(folder.path, folder.control_dir)
        if reader != "caption_files":
            extra = unlisted_images(folder.path, records)
            if extra:
                names = ", ".join(p.name for p in extra[:5])
                more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
                log(
                    f"warning: {len(extra)} image(s) in {folder.path} are not listed in its "
                    f"captions file and are not trained on: {names}{more}"
                )
        for record in records:
            if record["error"]:
                problems.append(f"{record['where']}: {record['error']}")
                continue
            size, samples, problem = media_samples(record["image"], video, section)
            if size is None:
                problems.append(problem)
                continue
            bucket = bucket_of(size, buckets, resolution, section)
            mask, problem = item_mask(record["image"], size, folder, section.alpha_mask)
            control = record.get("control") or []
            if not control and controls_in is not None:
                control = find_controls(record["image"], folder.path, controls_in)
                if not control:
                    problem = problem or (
                        f"{record['image']}: no control image with its name in {controls_in}"
                    )
            for path in control:
                problem = problem or _control_problem(path)
            if problem:
                problems.append(problem)
                continue
            rw, rh, left, top = fit(size, bucket)
            content = file_hash(record["image"])
            for frames in samples:
                items.append(
                    Item(
                        image=record["image"],
                        caption=record["caption"],
                        folder=str(folder.path),
                        size=size,
                        bucket=bucket,
                        crop=(left, top),
                        resized=(rw, rh),
                        content_hash=content,
                        where=record["where"],
                        reg=folder.reg,
                        repeats=folder.repeats,
                        mask=mask,
                        mask_hash=mask and ("alpha" if section.alpha_mask else file_hash(mask)),
                        frames=frames,
                        control=tuple(control),
                        control_hash="|".join(file_hash(p) for p in control),
                    )
                )
                (reg_index if folder.reg else index).extend([len(items) - 1] * folder.repeats)
    if problems:
        if not section.skip_bad_images:
            raise DataError(
                f"{len(problems)} problem(s) in the training data: {format_problems(problems)}; "
                "fix them, or set sd.skip_bad_images: true to train without those images"
            )
        log(f"warning: skipping {len(problems)} image(s): {format_problems(problems, limit=10)}")
    if not index:
        raise DataError(f"no usable images in {', '.join(str(f.path) for f in folders(config))}")
    check_counts(items)
    return items, index + balance_reg(reg_index, len(index), log)


def media_samples(
    path: str, video: bool, section: Any
) -> tuple[tuple[int, int] | None, list[tuple[int, ...]], str]:
    """``(size, samples' frame indices, problem)`` of one listed file: an image is one sample
    (of one frame in a video family); a clip is cut by ``sd.video`` (video families only)."""

    if is_clip_name(path) and (video or not is_image_name(path)):
        if not video:
            return None, [], f"{path}: a video clip (this model family trains on images)"
        return clip_samples(path, section.video)
    size, error = check_image(path)
    if size is None:
        return None, [], f"{path}: {error}"
    return size, [(0,)] if video else [()], ""


def _control_problem(path: str) -> str:
    """Why a control image cannot be trained on (one line naming it), or ""."""
    size, error = check_image(path)
    return "" if size is not None else f"{path}: control image {error}"


def item_mask(image: str, size: tuple[int, int], folder: Folder, alpha: bool) -> tuple[str, str]:
    """(the image's mask source or "", a problem or ""): its file in the folder's mask
    folder (the image's size), or its own alpha channel with ``sd.alpha_mask``."""

    if alpha:
        return f"alpha:{image}", ""
    if folder.mask_dir is None:
        return "", ""
    found = find_mask(image, folder.path, folder.mask_dir)
    if found is None:
        return "", f"{image}: no mask with its name in {folder.mask_dir}"
    if mask_size(str(found)) != size:
        return "", f"{found}: the mask is {mask_size(str(found))}, its image {size}"
    return str(found), ""


def balance_reg(reg_index: list[int], train_count: int, log: Any) -> list[int]:
    """As many regularisation samples per epoch as training samples (kohya's rule).

    Fewer reg samples are cycled; more are cut, with a note that some are not used.
    """
    if not reg_index:
        return []
    if len(reg_index) > train_count:
        log(
            f"note: {len(reg_index)} regularisation samples for {train_count} training samples: "
            f"each epoch uses the first {train_count}"
        )
    return [reg_index[i % len(reg_index)] for i in range(train_count)]


def choose_max_tokens(
    captions: list[tuple[str, str]], tokenizer: Any, configured: int | None, log: Any
) -> int:
    """The caption length to encode (75, 150 or 225 tokens); counts and names what is cut.

    ``captions`` are ``(caption, where)`` pairs. ``configured`` None picks the smallest length
    that holds the longest caption (up to 225, the most kohya and A1111 read).
    """

    lengths = [token_count(tokenizer, caption) for caption, _ in captions]
    longest = max(lengths, default=0)
    if configured is None:
        chosen = next((n for n in MAX_TOKEN_LENGTHS if n >= longest), MAX_TOKEN_LENGTHS[-1])
        if chosen > MAX_TOKEN_LENGTHS[0]:
            log(f"captions up to {longest} tokens: encoding {chosen} tokens (sd.max_token_length)")
    else:
        chosen = configured
    long = [
        f"{where}: {n} tokens"
        for (_, where), n in zip(captions, lengths, strict=True)
        if n > chosen
    ]
    if long:
        log(
            f"warning: {len(long)} caption(s) are longer than {chosen} tokens and are cut "
            f"(sd.max_token_length): {format_problems(long)}"
        )
    return chosen


def fingerprint(items: list[Item], index: list[int]) -> str:
    """A short hash of the images' bytes, captions and repeats."""
    digest = hashlib.sha256()
    for item in items:
        reg = "|reg" if item.reg else ""
        mask = f"|mask:{item.mask_hash}" if item.mask_hash else ""
        mask += f"|control:{item.control_hash}" if item.control_hash else ""
        frames = f"|frames:{','.join(map(str, item.frames))}" if item.frames else ""
        line = f"{item.content_hash}|{item.caption}|{item.bucket}{reg}{mask}{frames}\n"
        digest.update(line.encode())
    digest.update(str(len(index)).encode())
    return digest.hexdigest()[:16]


class SDDataset(torch.utils.data.Dataset):
    """Index → one sample: cached moments or pixels, cached embeddings or the caption."""

    def __init__(
        self,
        items: list[Item],
        index: list[int],
        family: str,
        latents: Any = None,
        text: Any = None,
        caption_ids: list[int] | None = None,
        reg_weight: float | None = None,
        random_crop: bool = False,
    ) -> None:
        self.items = items
        self.index = index
        self.family = family
        self.latents = latents
        self.text = text
        self.caption_ids = caption_ids or []
        self.random_crop = random_crop
        # with regularisation images each sample carries its loss weight
        self.reg_weight = reg_weight if any(item.reg for item in items) else None
        # with masked loss every sample carries a mask (all ones for an image without)
        self.masked = any(item.mask for item in items)

    def __len__(self) -> int:
        return len(self.index)

    def buckets(self) -> list[tuple[int, ...]]:
        return [self.items[k].group for k in self.index]

    def __getitem__(self, i: int) -> dict[str, Any]:

        k = self.index[i]
        item = self.items[k]
        out: dict[str, Any] = {}
        crop = item.crop
        if self.latents is not None:
            out.update(self.latents.get(k))
        else:
            if self.random_crop:
                crop = random_crop(item.resized, item.bucket)
            out["pixels"] = item_pixels(item, crop)
            if self.masked:
                out["mask"] = pixel_mask(item, crop)
            if item.control:
                out["control_pixels"] = control_pixels(item, crop)
        if self.text is not None:
            out.update(self.text.get(self.caption_ids[k]))
        else:
            out["caption"] = item.caption
        if self.reg_weight is not None:
            out["loss_weight"] = torch.tensor(self.reg_weight if item.reg else 1.0)
        out.update(families.get(self.family).sample_extras(item, crop))
        return out


def pixel_mask(item: Item, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """The item's mask fitted to its bucket (``[1, h, w]``), all ones when it has none."""

    if not item.mask:
        return torch.ones(1, item.bucket[1], item.bucket[0])
    return load_mask(item.mask, item.bucket, crop)
