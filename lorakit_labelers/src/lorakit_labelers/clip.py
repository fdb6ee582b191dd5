"""The ``clip`` labeler: tags each image with the words of a vocabulary that CLIP finds
closest to it.

Every tag is written into ``template`` ("a photo of {}") and embedded once by CLIP's text
tower; each image is embedded by its vision tower, and the tags whose cosine similarity
with the image reaches ``threshold`` are kept, best first, at most ``top_k``. With
``openai/clip-vit-base-patch32`` a fitting tag scores about 0.25-0.35 and an unrelated one
about 0.1-0.2; raise ``threshold`` for fewer, surer tags.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.api import DataError, Labeler, UsageError
from lorakit_labelers import runtime

if TYPE_CHECKING:
    from PIL import Image

#: Tags embedded per text-tower call in setup.
TEXT_BATCH = 256


def read_vocabulary(path: str | Path | None = None) -> list[str]:
    """Tags from a file, one a line; ``#`` starts a comment, blank lines and repeats are
    dropped. ``None`` reads the vocabulary shipped with lorakit-labelers."""
    if path is None:
        text = resources.files("lorakit_labelers").joinpath("data/tags.txt").read_text("utf-8")
        where: str | Path = "lorakit_labelers/data/tags.txt"
    else:
        where = Path(path)
        if not where.is_file():
            raise UsageError(f"labeler clip: tags file {where} does not exist")
        try:
            text = where.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason})", where=where) from None
    tags = (" ".join(line.split("#", 1)[0].split()) for line in text.splitlines())
    vocabulary = list(dict.fromkeys(t for t in tags if t))
    if not vocabulary:
        raise DataError("no tags in the file", where=where)
    return vocabulary


def _features(output: Any) -> Any:
    """transformers 5 returns a model output whose pooler_output is projected; 4 a tensor."""
    return getattr(output, "pooler_output", output)


class ClipTagger(Labeler):
    """Ranks a tag vocabulary by CLIP image-text similarity."""

    batch_size = 32

    def __init__(
        self,
        model: str = "openai/clip-vit-base-patch32",
        tags: Path | None = None,
        template: str = "a photo of {}",
        threshold: float = 0.2,
        top_k: int = 8,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.model_name = model
        self.vocabulary = read_vocabulary(tags)
        self.template = template
        self.threshold = threshold
        self.top_k = top_k
        self.device_option = device
        self.dtype_option = dtype
        self.model: Any = None
        self.processor: Any = None
        self.text_embeds: Any = None

    def setup(self) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        runtime.check_model("clip", self.model_name, ("clip",), "CLIP")
        self.device = runtime.pick_device("clip", self.device_option)
        dtype = runtime.pick_dtype(self.device, self.dtype_option)
        self.processor = runtime.load("clip", CLIPProcessor, self.model_name)
        model = runtime.load("clip", CLIPModel, self.model_name, dtype=dtype)
        self.model = model.to(self.device).eval()
        prompts = [self.template.format(tag) for tag in self.vocabulary]
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(prompts), TEXT_BATCH):
                inputs = self.processor(
                    text=prompts[start : start + TEXT_BATCH],
                    padding=True,
                    truncation=True,
                    return_tensors="pt",
                ).to(self.device)
                chunks.append(_features(self.model.get_text_features(**inputs)).float())
        embeds = torch.cat(chunks)
        self.text_embeds = embeds / embeds.norm(dim=-1, keepdim=True)

    def scores(self, images: list[Image.Image]) -> Any:
        """Cosine similarity of each image (rows) with each tag (columns), float32 on CPU."""
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            pixels = inputs["pixel_values"].to(self.model.dtype)
            embeds = _features(self.model.get_image_features(pixel_values=pixels)).float()
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return (embeds @ self.text_embeds.T).cpu()

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        captions = []
        for row in self.scores(images).tolist():
            # Best first; equal scores keep vocabulary order, so the output is deterministic.
            ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))
            kept = [self.vocabulary[i] for i in ranked[: self.top_k] if row[i] >= self.threshold]
            captions.append(", ".join(kept))
        return captions

    def teardown(self) -> None:
        self.model = self.processor = self.text_embeds = None
