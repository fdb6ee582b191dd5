"""What SD3 and FLUX.1 share: a transformer denoiser, CLIP + T5 captions, flow matching.

Captions go through the pipeline's own ``encode_prompt`` (the embeddings its inference
uses); the text cache stores ``hidden`` (the T5 or joint sequence) and ``pooled`` (CLIP).
Only the CLIP encoders take LoRA; T5 never does. Previews are the pipeline's own sampling
(``FlowMatchEulerDiscreteScheduler``), seeded per prompt.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lorakit.api import ConfigError
from lorakit_sd.families.base import ModelFamily, Objective
from lorakit_sd.families.flow import FlowMatchObjective
from lorakit_sd.families.transformer_module import FlowTrainModule
from lorakit_sd.families.transformer_plan import flow_planner
from lorakit_sd.families.transformer_standin import build_tiny_flow
from lorakit_sd.step.quantize import check


def traced(tensor: Any) -> bool:
    """Whether ``tensor`` is a fake (``lorakit plan``'s trace) or meta tensor, whose values
    cannot be read: a step that depends on them (a caption's length) takes its longest form."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor) or tensor.device.type == "meta"


class FlowFamily(ModelFamily):
    denoiser_attr = "transformer"
    denoiser_prefix = "transformer"
    refused_options = ("min_snr_gamma", "noise_offset", "prediction_type", "conv_rank")
    #: T5 tokens per caption when sd.max_sequence_length is null
    default_sequence_length: ClassVar[int] = 256
    #: the encoder of the caption sequence, and every caption encoder, as ``plan`` names them
    sequence_encoder: ClassVar[str] = "T5"
    caption_encoders: ClassVar[str] = "T5 and CLIP"
    #: how a merged transformer file names its tensors (``lorakit merge``'s message)
    transformer_file_layout: ClassVar[str] = "diffusers' names"
    #: whether ``lorakit merge`` keeps a diffusers base's names (else: always the file layout)
    merge_keeps_base_layout: ClassVar[bool] = False
    #: class names in model_index.json
    pipeline_names: ClassVar[tuple[str, ...]] = ()
    transformer_names: ClassVar[tuple[str, ...]] = ()

    def claims_index(self, index: dict[str, Any]) -> bool:
        transformer = index.get("transformer") or [None, None]
        return (
            index.get("_class_name") in self.pipeline_names
            or transformer[1] in self.transformer_names
        )

    def check_section(self, sec: Any) -> None:

        check(sec, self.label, True)
        for key in self.refused_options:
            if getattr(sec, key) not in (None, 0, 0.0):
                raise ConfigError(
                    f"{self.label} trains with flow matching; sd.{key} applies to SD1/SDXL "
                    "only (remove it)",
                    key=f"sd.{key}",
                )

    def network_stem(self, component: str, path: str, layout: Any) -> str:
        """Transformer modules under ``lycoris_`` + their diffusers path (the names LyCORIS
        trainers write for diffusers models, and ComfyUI maps to the transformer's weights):
        exact for every network type, where BFL's fused layers are not."""
        if component == "transformer":
            return "lycoris_" + path.replace(".", "_")
        return super().network_stem(component, path, layout)

    def transformer_file_state(self, state: dict[str, Any], config: Any) -> dict[str, Any]:
        """A merged transformer's tensors in the layout this family's files use."""
        return state

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        """(T5 tokenizer, T5 encoder)."""
        raise NotImplementedError  # pragma: no cover - interface

    def all_text_encoders(self, pipe: Any) -> list[Any]:
        return [e for e in [*self.text_encoders(pipe), self.t5(pipe)[1]] if e is not None]

    def sequence_length(self, pipe: Any, sec: Any) -> int:
        return int(sec.max_sequence_length or self.default_sequence_length)

    def max_tokens(self, items: list[Any], pipe: Any, sec: Any, log: Any) -> int:
        """T5 tokens per caption (``sd.max_sequence_length``); counts the captions cut."""
        length = self.sequence_length(pipe, sec)
        tokenizer = self.t5(pipe)[0]
        if tokenizer is None:
            return length
        long = [
            item.where or item.image
            for item in items
            if len(tokenizer(item.caption, verbose=False).input_ids) > length
        ]
        if long:
            log(
                f"warning: {len(long)} caption(s) are longer than {length} T5 tokens and are "
                f"cut (sd.max_sequence_length): {', '.join(long[:3])}"
            )
        return length

    def encode_captions(
        self, pipe: Any, captions: list[str], max_tokens: int, clip_skip: int = 1
    ) -> dict[str, Any]:
        hidden, pooled = self.encode(pipe, captions, max_tokens)
        return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        raise NotImplementedError  # pragma: no cover - interface

    def denoise(
        self, transformer: Any, noisy: Any, timesteps: Any, hidden: Any, pooled: Any, guidance: Any
    ) -> Any:
        """The transformer's prediction, by keyword as the pipelines call it (the pooled
        embedding only where the family has one)."""
        extra = {} if pooled is None else {"pooled_projections": pooled}
        return transformer(
            hidden_states=noisy,
            timestep=timesteps.to(noisy.dtype),
            encoder_hidden_states=hidden,
            return_dict=False,
            **extra,
        )[0]

    def train_module(self, backend: Any, encoders: list[Any] | None) -> Any:
        guidance = backend.section.guidance if self.uses_guidance(backend.unet) else None
        return FlowTrainModule(
            self,
            backend.model.pipe,
            backend.unet,
            encoders,
            backend.train_text,
            backend.max_tokens,
            guidance,
        )

    def uses_guidance(self, transformer: Any) -> bool:
        return False

    def objective(self, pipe: Any, sec: Any) -> Objective:

        return FlowMatchObjective(pipe, sec)

    def standin(self, directory: Any, seed: int = 0) -> Any:

        return build_tiny_flow(directory, self.name, seed)

    def vae_factor(self, vae_config: Any) -> int:
        """How many pixels one latent pixel covers, from the VAE's config."""
        return int(2 ** (len(vae_config["block_out_channels"]) - 1))

    def latent_channels(self, vae_config: Any) -> int:
        """Channels of a latent, from the VAE's config."""
        return int(vae_config["latent_channels"])

    def latent_layout(self, vae_config: Any, resolution: int) -> tuple[int, int]:
        """(channels, side) of the latent the objective draws on, for ``lorakit plan``."""
        return self.latent_channels(vae_config), resolution // self.vae_factor(vae_config)

    def plan_text_inputs(self, t_config: Any, batch: int, tokens: int) -> dict[str, Any]:
        """Fake cached caption embeddings of a batch for ``lorakit plan`` (the sequence and
        the pooled CLIP embedding the transformer reads)."""
        return {
            "hidden": torch.randn(batch, tokens, int(t_config["joint_attention_dim"])),
            "pooled": torch.randn(batch, int(t_config["pooled_projection_dim"])),
        }

    def plan_latents(self, batch: int, channels: int, side: int, section: Any) -> Any:
        """A fake batch of latents for ``lorakit plan`` (a video family's have frames)."""
        return torch.randn(batch, channels, side, side)

    def plan_step(self, batch: int, resolution: int, section: Any) -> str:
        """What one step trains on, in words."""
        return f"{batch} image{'s' if batch > 1 else ''} of {resolution}×{resolution}"

    def plan_multiple(self, t_config: Any, vae_config: Any) -> int:
        """Sides the ladder's smaller resolutions must be multiples of."""
        return 1

    def plan_rungs(self, section: Any) -> tuple[tuple[dict[str, Any], str], ...]:
        """The family's own ladder rows (after the shared ones)."""
        return ()

    def planner(self, config: Any, folder: Any, section: Any) -> Any:

        return flow_planner(config, folder, self, section)

    def render(self, pipe: Any, prompts: list[str], **kwargs: Any) -> list[Any]:
        """The pipeline's own flow-matching sampler, seeded per prompt, under fork_rng."""
        device = next(self.denoiser(pipe).parameters()).device
        sampler = type(pipe)(**pipe.components)
        sampler.set_progress_bar_config(
            disable=not kwargs.get("progress"), desc=f"{len(prompts)} prompt(s)"
        )
        length = kwargs.get("max_tokens") or self.default_sequence_length
        images = []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for i, prompt in enumerate(prompts):
                generator = torch.Generator("cpu").manual_seed(kwargs["seed"] + i)
                images.append(
                    sampler(
                        prompt=prompt,
                        num_inference_steps=kwargs["steps"],
                        **self.render_guidance(kwargs),
                        width=kwargs["width"],
                        height=kwargs["height"],
                        generator=generator,
                        max_sequence_length=length,
                        **self.render_extras({**kwargs, "prompt_index": i}),
                    ).images[0]
                )
        return images

    def render_guidance(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's guidance arguments for ``sd.sample_guidance_scale``."""
        return {"guidance_scale": kwargs["guidance"]}

    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {}
