"""What every image model family tells the ``sd`` backend: one small typed interface.

A family (``sd1``, ``sdxl``, ``sd3``, ``flux1``) knows how it is recognised (a single file's
keys, a diffusers folder's ``model_index.json``), how its parts load, how captions are
encoded, how latents are normalised and laid out, which noise, target and loss weighting it
trains with, which pipeline renders previews, and how its LoRA files are named. The backend,
the exporters, ``plan``, ``export``, ``merge`` and ``sample`` ask the family and hold no
``if family == ...`` chains. Nothing heavy is imported at module import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lorakit.api import ConfigError


@dataclass(frozen=True)
class PartialClient:
    """A client that loads a family's LoRA files but applies only some of their modules,
    dropping the others without a word: facts about that client, for the run's warning.

    ``applies`` matches the denoiser module paths (diffusers names) it applies; ``applies_what``
    says which in words; ``loads_all`` names the clients that apply every module."""

    name: str
    applies: str
    applies_what: str
    loads_all: str


@dataclass
class Draw:
    """One step's random draw: the noisy input, its timesteps, the target, per-sample weight.

    ``weight`` multiplies the squared error elementwise before the per-sample mean (flow
    matching's loss weighting, broadcast over the latent); None: no weighting.
    """

    noisy: Any
    timesteps: Any
    target: Any
    weight: Any = None
    sigmas: Any = None


class Objective:
    """Noise, target and loss of a training step (DDPM noise prediction or flow matching)."""

    prediction_type: str = "epsilon"
    name: str = "ddpm"

    def draw(self, latents: Any) -> Draw:  # pragma: no cover - interface
        raise NotImplementedError

    def per_sample_loss(self, pred: Any, draw: Draw) -> Any:
        """Mean squared error per sample (weighted elementwise when the draw says so)."""

        err = (pred.float() - draw.target.float()) ** 2
        if draw.weight is not None:
            err = draw.weight.float() * err
        return err.reshape(err.shape[0], -1).mean(dim=1) if err.ndim > 1 else err

    def weigh(self, per_sample: Any, draw: Draw) -> Any:
        """Per-sample loss weighting after the mean (min-SNR for DDPM); default none."""
        return per_sample

    def metadata(self) -> dict[str, str]:
        """``ss_*`` / ``modelspec.*`` keys describing the objective."""
        return {"modelspec.prediction_type": self.prediction_type}


class ModelFamily:
    """The interface; one subclass per family in :mod:`lorakit_sd.families`."""

    name: ClassVar[str]
    label: ClassVar[str]
    default_resolution: ClassVar[int]
    #: the pipeline attribute holding the denoiser (``unet`` or ``transformer``)
    denoiser_attr: ClassVar[str] = "unet"
    #: diffusers LoRA prefix of the denoiser's keys
    denoiser_prefix: ClassVar[str] = "unet"
    #: where single files take their configs by default (a hub id), or None
    default_config_repo: ClassVar[str | None] = None
    #: kohya metadata and modelspec names
    base_model_version: ClassVar[str]
    architecture: ClassVar[str]
    implementation: ClassVar[str] = "diffusers"
    #: ``ss_network_module``: the sd-scripts network that trains this family's LoRAs
    network_module: ClassVar[str] = "networks.lora"
    #: ``component -> kohya prefix`` of the text encoders that take LoRA
    kohya_text_prefixes: ClassVar[dict[str, str]] = {}
    #: ``component -> diffusers prefix`` of the text encoders that take LoRA
    diffusers_text_prefixes: ClassVar[dict[str, str]] = {"te1": "text_encoder"}
    #: sd.* options this family refuses (key -> why), checked in :meth:`check_section`
    refused_options: ClassVar[tuple[str, ...]] = ()
    #: bucket sides must be a multiple of this many latent pixels' worth of pixels
    latent_multiple: ClassVar[int] = 1
    #: video families: the VAE compresses this many frames into one, so clips are cut to
    #: ``k · frame_multiple + 1`` frames (``sd.video``); 0: an image family
    frame_multiple: ClassVar[int] = 0
    #: whether kohya keys name the UNet by its original (SGM) module paths (SDXL)
    kohya_unet_original_names: ClassVar[bool] = False
    #: whether the denoiser takes the pooled text embedding and size ids (SDXL)
    size_conditioned: ClassVar[bool] = False
    #: whether sd.clip_skip means something (SD1)
    clip_skip_applies: ClassVar[bool] = False
    #: the LoRA target presets (``attn``, ``all-linear``...) and the default
    target_presets: ClassVar[dict[str, list[str]]] = {}
    default_targets: ClassVar[list[str]] = []
    #: clients that drop some of this family's adapted modules (the run warns per client)
    partial_clients: ClassVar[tuple[PartialClient, ...]] = ()
    #: edit models: whether the denoiser takes control images (the images an instruction
    #: edits), and how many per sample at most. Their latents reach the train module as
    #: ``control`` (``[B, K, C, h, w]``, normalised); a family that takes none refuses a
    #: dataset that has them.
    takes_control: ClassVar[bool] = False
    max_control_images: ClassVar[int] = 0
    #: whether the caption encoder reads the control images with the instruction (a
    #: vision-language encoder): the text cache then keeps one entry per (caption, control
    #: images) and :meth:`encode_captions` gets ``controls`` (PIL images per caption)
    captions_see_control: ClassVar[bool] = False
    #: the family whose files (single files, folders) this family's look like, or None: an
    #: edit model on its base's architecture loads from them when sd.model_family names it
    file_family: ClassVar[str | None] = None
    #: whether a diffusers base loads in the dtype its weights are stored in (bf16 for the
    #: 20B+ models) rather than float32: the backend casts to the run's dtype afterwards
    load_in_stored_dtype: ClassVar[bool] = False

    # -- detection -------------------------------------------------------------------------
    def claims_keys(self, keys: set[str]) -> bool:
        """Whether a single file with these tensor names is this family's."""
        return False

    def claims_index(self, index: dict[str, Any]) -> bool:
        """Whether a diffusers ``model_index.json`` describes this family."""
        return False

    # -- loading ---------------------------------------------------------------------------
    def pipeline_class(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (SD1: no safety checker)."""
        return {}

    def denoiser(self, pipe: Any) -> Any:
        return getattr(pipe, self.denoiser_attr)

    def text_encoders(self, pipe: Any) -> list[Any]:
        """The text encoders LoRA may adapt (CLIPs), in component order te1, te2."""
        return [pipe.text_encoder]

    def all_text_encoders(self, pipe: Any) -> list[Any]:
        """Every text encoder the captions go through (T5 included)."""
        return [e for e in self.text_encoders(pipe) if e is not None]

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer]

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """The pipeline of a single-file checkpoint, configs from ``config``."""
        return self.pipeline_class().from_single_file(
            str(path), config=config, local_files_only=local
        )

    def finish(self, pipe: Any) -> None:
        """Attention through torch's SDPA (where the model has a choice)."""

    # -- training --------------------------------------------------------------------------
    def check_section(self, sec: Any) -> None:
        """Refuse, in one line naming the family, sd.* options that do not apply to it."""
        from lorakit_sd.step.quantize import check

        check(sec, self.label, self.denoiser_attr == "transformer")
        for key in self.refused_options:
            value = getattr(sec, key)
            if value not in (None, False, 0, 0.0):
                raise ConfigError(
                    f"{self.label} trains with flow matching; sd.{key} does not apply to it "
                    "(remove it)",
                    key=f"sd.{key}",
                )

    def expand_targets(self, names: list[str] | None) -> list[str]:
        """``target_modules`` with this family's presets expanded; default its attention."""
        if not names:
            return list(self.default_targets)
        out: list[str] = []
        for name in names:
            for item in self.target_presets.get(name, [name]):
                if item not in out:
                    out.append(item)
        return out

    def objective(self, pipe: Any, sec: Any) -> Objective:  # pragma: no cover - interface
        raise NotImplementedError

    def normalize(self, latents: Any, vae_config: Any) -> Any:
        """VAE latents as the denoiser sees them: ``(z - shift_factor) * scaling_factor``."""
        shift = getattr(vae_config, "shift_factor", None) or 0.0
        return (latents - shift) * vae_config.scaling_factor

    def encode_moments(self, vae: Any, pixels: Any) -> Any:
        """What the latent cache stores for a pixel batch in [-1, 1]: the VAE posterior's
        parameters (mean ‖ log-variance), drawn from each step by :meth:`latents_from_moments`."""
        from lorakit_sd.data.cache import encode_moments

        return encode_moments(vae, pixels)

    def latents_from_moments(self, moments: Any) -> Any:
        """One step's latents from the cached moments: a sample of the diagonal Gaussian."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments).sample()

    def control_latents(self, moments: Any, vae_config: Any) -> Any:
        """Control images' latents from their moments (``[B, K, 2C, h, w]``): the posterior's
        mode, normalised, as edit pipelines encode their input image (``argmax``)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        b, k = moments.shape[:2]
        mode = DiagonalGaussianDistribution(moments.flatten(0, 1)).mode()
        return self.normalize(mode, vae_config).unflatten(0, (b, k))

    def max_tokens(self, items: list[Any], pipe: Any, sec: Any, log: Any) -> int:
        """The caption length encoded (CLIP windows for SD1/SDXL, T5 tokens otherwise)."""
        from lorakit_sd.data.dataset import choose_max_tokens

        return choose_max_tokens(
            [(item.caption, item.where or item.image) for item in items],
            self.tokenizers(pipe)[0],
            sec.max_token_length,
            log,
        )

    def encode_captions(
        self, pipe: Any, captions: list[str], max_tokens: int, clip_skip: int = 1
    ) -> dict[str, Any]:  # pragma: no cover - interface
        """``{"hidden": [B, T, D], "pooled": [B, P]?}``: what the text cache stores."""
        raise NotImplementedError

    def text_inputs(self, pipe: Any, captions: list[str], max_tokens: int) -> dict[str, Any]:
        """The train module's arguments for captions encoded each step."""
        return {"captions": captions}

    def extra_inputs(self, batch: dict[str, Any], flip: Any, device: Any, dtype: Any) -> dict:
        """Other conditioning of a batch (SDXL's size ids, FLUX.1-dev's guidance)."""
        return {}

    def train_module(self, backend: Any, encoders: list[Any] | None) -> Any:
        raise NotImplementedError  # pragma: no cover - interface

    def clip_skip(self, sec: Any, log: Any) -> int:
        if sec.clip_skip > 1:
            log(f"warning: sd.clip_skip is ignored for {self.label}")
        return 1

    def vae_dtype(self, weight_dtype: Any) -> Any:
        return weight_dtype

    def skips_last_layer(self, index: int) -> bool:
        """Whether text encoder ``index``'s last layer never reaches the output (no LoRA)."""
        return False

    def pixel_multiple(self, pipe: Any) -> int:
        """Image sides must be a multiple of this (VAE downsampling times the denoiser's)."""
        vae = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return vae * self.latent_multiple

    def sample_extras(self, item: Any, crop: tuple[int, int]) -> dict[str, Any]:
        """Per-sample tensors the dataset adds (SDXL's size ids)."""
        return {}

    # -- templates and stand-in -----------------------------------------------------------
    #: whether ``lorakit demo`` trains this family's stand-in (one family says so)
    demo: ClassVar[bool] = False

    def standin(self, directory: Any, seed: int = 0) -> Any:
        """A tiny random-weight model of this family saved under ``directory`` (tests, the
        demo): an object with ``diffusers_dir`` and ``resolution``."""
        raise NotImplementedError(f"{self.name} has no stand-in model")

    # -- plan ------------------------------------------------------------------------------
    def planner(self, config: Any, folder: Any, section: Any) -> Any:
        """The ``lorakit.api.PlanModel`` of a run on the model whose configs are in ``folder``
        (built on the meta device, no weights read); None: ``lorakit plan`` cannot plan it."""
        return None

    # -- previews --------------------------------------------------------------------------
    def render(self, pipe: Any, prompts: list[str], **kwargs: Any) -> list[Any]:
        raise NotImplementedError  # pragma: no cover - interface

    # -- LoRA files read back ----------------------------------------------------------------
    #: families are asked in this order (highest first) whose a LoRA file's keys are; the
    #: lowest is the answer when none claims them
    lora_key_priority: ClassVar[int] = 0

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        """Whether ``ss_base_model_version`` / ``modelspec.architecture`` name this family."""
        return version == self.base_model_version or architecture == self.architecture

    def claims_lora_keys(self, keys: Any) -> bool:
        """Whether a LoRA file's tensor names (a dict: with shapes) are this family's."""
        return False

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        """A kohya-format file's entries under the names :func:`to_kohya` writes (SDXL: SGM
        UNet names; FLUX.1: BFL's fused layers split into diffusers' modules)."""
        return entries

    # -- files -----------------------------------------------------------------------------
    def standard_structure(
        self, entries: dict[str, Any] | None = None
    ) -> tuple[Any, list[Any]] | None:
        """The released denoiser (and LoRA-taking text encoders) a LoRA file with these
        entries was made for, on the meta device, when ``export`` has no ``--base`` (it checks
        keys against it); None: the structure lorakit-sd keeps for the family in
        ``data/standard_models.json``."""
        return None

    def kohya_prefix(self, component: str) -> str:
        prefix = self.kohya_text_prefixes.get(component)
        if prefix is None:
            raise ValueError(f"{self.name} has no text encoder {component}")
        return prefix

    def network_stem(self, component: str, path: str, layout: Any) -> str:
        """The key stem of a LoHa / LoKr / DoRA module in the LyCORIS-format file (kohya's
        names: ``lora_unet_...``, ``lora_te1_...``)."""
        from lorakit_sd.lorafiles.names import kohya_name

        return kohya_name(component, path, self.name, layout)

    def file_parts(self, modules: list[Any]) -> list[tuple[str, list[Any]]]:
        """``(file name suffix, modules)`` of each file a LoRA is written as (a model with
        several denoisers: one file each); default one file."""
        return [("", modules)]

    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:
        """The kohya-format tensors of a LoRA, or None where the family has no such layout."""
        return None

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        """The family's own ``ss_*`` training keys (as sd-scripts' trainer for it writes)."""
        return {}

    def format_metadata_for(self, denoiser: Any) -> dict[str, str]:
        """:meth:`format_metadata` for this model (FLUX.1: dev or schnell; SD3: which one)."""
        return self.format_metadata()

    def format_metadata(self) -> dict[str, str]:
        """kohya keys naming the base model (``ss_base_model_version``, modelspec)."""
        return {
            "ss_base_model_version": self.base_model_version,
            "modelspec.architecture": self.architecture,
            "modelspec.implementation": self.implementation,
        }
