"""``lorakit ui``'s dataset view of an image run: each image as training reads it.

The folders, readers, image checks and buckets are the training's own (:mod:`.dataset`,
:mod:`.buckets`); nothing here decides differently. On top, per image: a caption that is
missing, an image that is unreadable, small (enlarged more than :data:`SMALL_SCALE` times
to cover its bucket) or a byte-for-byte duplicate of another.
"""

from __future__ import annotations

import os
from typing import Any

from lorakit.api import DataError, DataReport, DataRow
from lorakit_sd import families
from lorakit_sd.config import SDSection
from lorakit_sd.data.dataset import bucket_of, folders, read_folder, section_buckets
from lorakit_sd.data.images import check_image, file_hash
from lorakit_sd.data.readers import unlisted_images

#: An image enlarged more than this to cover its bucket is called small.
SMALL_SCALE = 2.0
#: The default resolution when the base model's family is not known yet.
FALLBACK_RESOLUTION = 512


def _resolution(config: Any, section: SDSection) -> int:
    if section.resolution:
        return int(section.resolution)
    from lorakit_sd.models import peek_family

    try:
        family = peek_family(config.train.base_model, section.model_family)
    except Exception:  # noqa: BLE001 - a base model not readable yet: the usual size
        family = None
    return families.get(family).default_resolution if family else FALLBACK_RESOLUTION


def inspect_images(config: Any, registries: Any, limit: int) -> DataReport:
    """The images of ``config``'s folders: the first ``limit`` decoded and checked (captions,
    sizes, buckets, notes), the rest only counted."""
    section: SDSection = config.section or SDSection()
    resolution = _resolution(config, section)
    buckets = section_buckets(section, resolution)
    report = DataReport(
        kind="images", source=str(config.train.train_data_dir), format="", resolution=resolution
    )
    seen: dict[str, str] = {}
    for folder in folders(config):
        records, reader = read_folder(folder, section.dataset_format, registries)
        report.format = report.format or reader
        if reader != "caption_files":
            extra = unlisted_images(folder.path, records)
            if extra:
                names = ", ".join(p.name for p in extra[:5])
                report.warnings.append(
                    f"{len(extra)} image(s) in {folder.path} are not in its captions file and "
                    f"are not trained on: {names}{' ...' if len(extra) > 5 else ''}"
                )
        for record in records:
            report.total += 1
            if len(report.rows) >= limit:  # counted, not decoded: the view shows `limit`
                continue
            row = _row(record, folder.path, buckets, resolution, section, seen)
            report.rows.append(row)
            if row.bucket is not None and not row.notes:
                key = f"{row.bucket[0]}x{row.bucket[1]}"
                report.buckets[key] = report.buckets.get(key, 0) + 1
    noted = sum(1 for row in report.rows if row.notes)
    if noted:
        report.warnings.append(f"{noted} image(s) have a problem (see their notes)")
    if not report.total:
        raise DataError(f"no images in {config.train.train_data_dir}")
    return report


def _row(
    record: dict[str, Any],
    root: Any,
    buckets: list[tuple[int, int]] | None,
    resolution: int,
    section: SDSection,
    seen: dict[str, str],
) -> DataRow:
    image = str(record["image"])
    name = os.path.relpath(image, root) if image.startswith(str(root)) else image
    row = DataRow(name=name, text=record["caption"] or "", folder=str(root))
    if record["error"]:
        row.notes.append(str(record["error"]))
    if os.path.islink(image):  # training's reader refuses one that leaves the folder
        row.notes = row.notes or ["a link: the page does not read through links"]
        return row
    if not os.path.isfile(image):
        return row
    size, error = check_image(image)
    if size is None:
        row.notes.append(f"unreadable: {error}")
        return row
    row.size = size
    row.bucket = bucket_of(size, buckets, resolution, section)
    scale = max(row.bucket[0] / size[0], row.bucket[1] / size[1])
    if scale > SMALL_SCALE:
        row.notes.append(f"small: {size[0]}x{size[1]} is enlarged {scale:.1f}x to its bucket")
    digest = file_hash(image)
    if digest in seen:
        row.notes.append(f"duplicate: the same bytes as {seen[digest]}")
    else:
        seen[digest] = name
    return row
