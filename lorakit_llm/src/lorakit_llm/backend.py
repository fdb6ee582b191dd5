"""The causal-LM backend: a transformers model with PEFT LoRA, trained on token rows.

The engine drives it (see :class:`lorakit.backend.Backend`): ``setup`` loads the base
(folder, hub id or GGUF; 4-bit for QLoRA) and injects LoRA; ``dataset`` reads, tokenizes
(once, cached) and packs the data; ``count`` is the number of target tokens of a batch and
``loss`` their summed cross-entropy, so the engine's normalisation gives every target token
the same weight however they fall into micro-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from lorakit.api import Backend, Config, DataError, LossOutput, TrainContext, UsageError
from lorakit_llm import speed
from lorakit_llm.chat_templates import resolve_template
from lorakit_llm.data import Collator, LengthGroupedBatchSampler, TokenDataset, split_rows
from lorakit_llm.data import target_count as _target_count
from lorakit_llm.loading import loader_for, torch_dtype
from lorakit_llm.loss import causal_lm_loss
from lorakit_llm.packing import LAYOUT_WORDS, batch_layout, packing_supported
from lorakit_llm.preference.method import PreferenceMethod, check_method_data
from lorakit_llm.schedule import schedule_warnings
from lorakit_llm.section import LLMSection
from lorakit_llm.tokenize import (
    cache_key,
    cache_path,
    files_fingerprint,
    load_cached,
    save_cached,
    tokenize_records,
    tokenizer_fingerprint,
)

#: PEFT's default for LLaMA-style attention.
DEFAULT_TARGETS = ("q_proj", "v_proj")


def lora_config(config: Config, section: LLMSection) -> Any:
    """The peft LoraConfig for the core LoRA keys and the llm section's options."""
    from peft import LoraConfig

    train = config.train
    targets: Any = list(train.target_modules or DEFAULT_TARGETS)
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=train.lora_rank,
        lora_alpha=cast(Any, train.alpha),  # peft accepts a float alpha
        lora_dropout=train.lora_dropout,
        target_modules=targets,
        use_rslora=section.use_rslora,
        use_dora=section.use_dora,
        modules_to_save=section.modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _data_files(path: Path) -> list[Path]:
    """Every visible file the data may come from (whatever reader reads it)."""
    path = path.expanduser()
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


class LLMBackend(Backend):
    """LoRA for transformers causal LMs (LLaMA, Mistral, Qwen, GPT-2 style)."""

    throughput_unit = "tokens"
    default_export_formats = ("peft",)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        section = config.section if isinstance(config.section, LLMSection) else LLMSection()
        self.section = section
        self.loader: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.template = ""
        self.template_name = ""
        self.packing = section.packing
        self.layout = "padded"
        self.data_hash = ""
        self.stats: dict[str, Any] = {}
        self.reader_name = ""
        self.records: list[Any] | None = None
        self.eval_records: list[Any] | None = None
        self.eval_set: TokenDataset | None = None
        self.train_module: Any = None
        self.accelerator: Any = None
        self.method: Any = None  # the training method when it is not sft
        if section.method == "grpo":
            from lorakit_llm.grpo.method import GRPOMethod

            self.method = GRPOMethod(self)
        elif section.method != "sft":
            self.method = PreferenceMethod(self)

    # -- model --------------------------------------------------------------------------
    def _dtype(self, ctx: TrainContext) -> torch.dtype:
        if self.section.torch_dtype != "auto":
            return torch_dtype(self.section.torch_dtype)
        if self.section.load_in_4bit:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if bf16 else torch.float16
        return ctx.weight_dtype

    def _loader(self, registries: Any) -> Any:
        """The model loader for ``base_model``; it refuses a GGML file, an adapter folder, a
        stray weights file ... here, before anything loads."""
        if self.loader is None:
            base = self.config.train.base_model
            loader = loader_for(base, self.config.train.model_loader, registries)
            loader.load(base, check=True)
            self.loader = loader
        return self.loader

    def validate(self, ctx: TrainContext) -> None:
        """Check the base and read the data before the model loads: a broken line fails in a
        second."""
        train, section = self.config.train, self.section
        strategy = train.distributed.strategy
        if section.load_in_4bit and strategy in ("deepspeed_zero3", "fsdp"):
            # bitsandbytes' 4-bit weights shard only with a matching quant storage dtype,
            # which lorakit does not set up: refused before anything loads.
            raise UsageError(
                f"llm.load_in_4bit cannot be sharded by distributed.strategy {strategy}: "
                "use strategy ddp (every process holds the 4-bit base), or load_in_4bit: false"
            )
        speed.check(section, ctx.accelerator.device.type == "cuda")
        self._loader(ctx.registries)
        if train.init_adapter:
            from lorakit_llm.init_adapter import adapter_folder

            adapter_folder(train.init_adapter)
        self.reader_name, reader = self._reader(ctx.registries)
        check_method_data(section.method, self.reader_name)
        self.records = reader.factory(
            train.train_data_dir, system_prompt=self.section.system_prompt
        )
        if not self.records:
            raise DataError("no rows to train on", where=train.train_data_dir)
        if self.section.eval_data:
            self.eval_records = reader.factory(
                self.section.eval_data, system_prompt=self.section.system_prompt
            )
            if not self.eval_records:
                raise DataError("no eval rows", where=self.section.eval_data)

    def setup(self, ctx: TrainContext) -> None:
        from peft import get_peft_model

        from lorakit.api import gathered_parameters

        section, train = self.section, self.config.train
        model, self.tokenizer = self._loader(ctx.registries).load(
            train.base_model,
            dtype=self._dtype(ctx),
            load_in_4bit=section.load_in_4bit,
            attn_implementation=section.attn_implementation,
            device=ctx.accelerator.device,
        )
        applied = speed.apply_kernels(model, section.kernels)
        if applied:
            ctx.log(f"llm: {applied}")
        self.template, self.template_name = resolve_template(section.chat_template, self.tokenizer)
        self.tokenizer.chat_template = self.template
        model.config.use_cache = False
        gc_kwargs = {"use_reentrant": False}
        if section.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=train.gradient_checkpointing,
                gradient_checkpointing_kwargs=gc_kwargs,
            )
        elif train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        device = ctx.accelerator.device
        if (
            device.type != "cpu"
            and not section.load_in_4bit
            and train.distributed.strategy == "ddp"
        ):
            model.to(device)  # accelerate would move it anyway; the probe below runs there
        self.layout = batch_layout(model, self.packing)
        # Under ZeRO-3 transformers loaded the model partitioned: the probe needs it whole.
        with gathered_parameters(model):
            supported = not self.packing or packing_supported(model, self.layout)
        if not supported:
            ctx.log(
                f"llm: this model lets {self.layout} examples attend to each other; "
                f"using padded batches"
            )
            self.packing, self.layout = False, "padded"
        try:
            if train.init_adapter:
                from lorakit_llm.init_adapter import load_init_adapter

                reference = self.method is not None and self.method.needs_reference
                self.model = load_init_adapter(
                    model, train.init_adapter, reference=reference, log=ctx.log
                )
            else:
                self.model = get_peft_model(model, lora_config(self.config, section))
        except ValueError as exc:
            text = str(exc).splitlines()[0]
            raise UsageError(f"target_modules: {text} (try target_modules: all-linear)") from None
        trainable, total = self.model.get_nb_trainable_parameters()
        ctx.log(
            f"llm: {trainable:,} trainable of {total:,} parameters ({train.base_model}, "
            f"loader {self.loader.name})"
        )

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    # -- data ---------------------------------------------------------------------------
    def _reader(self, registries: Any) -> tuple[str, Any]:
        from lorakit_llm.formats import choose_reader

        return choose_reader(
            self.config.train.train_data_dir,
            registries.dataset_readers,
            self.section.dataset_format,
        )

    def dataset(self, ctx: TrainContext) -> TokenDataset:
        section, train = self.section, self.config.train
        if self.records is None:
            self.validate(ctx)
        self.data_hash = files_fingerprint(_data_files(Path(train.train_data_dir)))
        key = cache_key(
            reader=self.reader_name,
            data=self.data_hash,
            tokenizer=tokenizer_fingerprint(self.tokenizer, self.template),
            max_seq_len=section.max_seq_len,
            train_on_inputs=section.train_on_inputs,
            system_prompt=section.system_prompt,
        )
        path = cache_path(ctx.cache_dir, key)
        if section.eval_data:
            self.data_hash = files_fingerprint(
                [*_data_files(Path(train.train_data_dir)), *_data_files(Path(section.eval_data))]
            )
        if self.method is not None:
            self.accelerator = ctx.accelerator
            rows = self.method.dataset(ctx, key)
            for line in schedule_warnings(self.config, len(rows), ctx.accelerator.num_processes):
                ctx.log(f"warning: {line}")
            return rows
        with ctx.accelerator.main_process_first():
            data = load_cached(path)
            cached = data is not None
            if data is None:
                assert self.records is not None  # validate() read them or refused the run
                data = tokenize_records(
                    self.records,
                    self.tokenizer,
                    self.template,
                    max_seq_len=section.max_seq_len,
                    train_on_inputs=section.train_on_inputs,
                )
                if ctx.accelerator.is_main_process:
                    save_cached(data, path)
        if len(data) == 0:
            raise DataError(
                f"none of the {data.records} rows has a token to learn from",
                where=train.train_data_dir,
            )
        train_rows, eval_rows = split_rows(len(data), section.eval_split, train.seed)
        dataset = TokenDataset(data, packed=self.packing, rows=train_rows)
        self.accelerator = ctx.accelerator
        if eval_rows:
            self.eval_set = TokenDataset(data, packed=self.packing, rows=eval_rows)
        elif self.eval_records is not None:
            held = tokenize_records(
                self.eval_records,
                self.tokenizer,
                self.template,
                max_seq_len=section.max_seq_len,
                train_on_inputs=section.train_on_inputs,
            )
            if len(held) == 0:
                raise DataError("no eval row has a token to score", where=section.eval_data)
            self.eval_set = TokenDataset(held, packed=self.packing)
        self.stats = {
            "format": self.reader_name,
            "records": data.records,
            "rows": len(data),
            "truncated": data.truncated,
            "dropped": data.dropped,
            "target_tokens": data.target_tokens(),
            "tokens": int(data.offsets[-1]),
            "packed": self.packing,
            "layout": self.layout,
            "cached": cached,
            "train_rows": len(dataset),
            "eval_rows": len(self.eval_set or ()),
        }
        ctx.log(
            f"llm: {data.records} rows ({self.reader_name}), {self.stats['tokens']:,} tokens "
            f"({self.stats['target_tokens']:,} in answers), batches of {train.batch_size} "
            f"examples {LAYOUT_WORDS[self.layout]}"
            f"{' (tokenization cached)' if cached else ''}"
        )
        if self.eval_set is not None:
            ctx.log(f"llm: eval loss on {len(self.eval_set)} held-out rows")
        if data.truncated or data.dropped:
            ctx.log(
                f"llm: {data.truncated} of {data.records} rows were longer than max_seq_len "
                f"{section.max_seq_len} and were truncated; {data.dropped} rows had no answer "
                f"token left and were skipped"
            )
        for line in schedule_warnings(self.config, len(dataset), ctx.accelerator.num_processes):
            ctx.log(f"warning: {line}")
        self.collator = Collator(self.tokenizer.pad_token_id or 0, self.layout)
        return dataset

    def collate(self, items: list[Any]) -> Any:
        if self.method is not None:
            return self.method.collate(items)
        return self.collator(items)

    def batch_sampler(self, dataset: Any, batch_size: int, seed: int) -> Any | None:
        if self.method is not None:
            return self.method.batch_sampler(dataset, batch_size, seed)
        return LengthGroupedBatchSampler(dataset.lengths, batch_size, seed)

    def set_train_module(self, module: torch.nn.Module) -> None:
        self.train_module = module

    def step_metrics(self, step: int, total: int) -> dict[str, float]:
        """``eval_loss`` (mean per answer token) every ``eval_steps`` and at the end."""
        if self.method is not None:
            return self.method.step_metrics(step, total)
        if self.eval_set is None:
            return {}
        every = self.section.eval_steps or max(total // 10, 1)
        if step % every and step != total:
            return {}
        return {"eval_loss": self.eval_loss()}

    def eval_loss(self) -> float:
        """Mean cross-entropy per target token over the eval rows, without dropout."""
        import contextlib

        assert self.eval_set is not None
        module = self.train_module or self.model
        device = next(self.model.parameters()).device
        autocast = self.accelerator.autocast() if self.accelerator else contextlib.nullcontext()
        was_training = module.training
        module.eval()
        total = count = 0.0
        size = self.config.train.batch_size
        try:
            with torch.no_grad(), autocast:
                for a in range(0, len(self.eval_set), size):
                    items = [self.eval_set[i] for i in range(a, min(a + size, len(self.eval_set)))]
                    batch = {k: v.to(device) for k, v in self.collate(items).items()}
                    total += float(self.loss(module, batch).loss_sum)
                    count += self.count(batch)
        finally:
            module.train(was_training)
        return total / max(count, 1.0)

    # -- loss ---------------------------------------------------------------------------
    def count(self, batch: Any) -> int:
        if self.method is not None:
            return self.method.count(batch)
        return _target_count(batch)

    def loss(self, module: torch.nn.Module, batch: Any) -> LossOutput:
        if self.method is not None:
            return self.method.loss(module, batch)
        loss_sum = causal_lm_loss(module, batch)
        return LossOutput(loss_sum, samples=int(batch["num_rows"]), tokens=int(batch["num_tokens"]))

    # -- outputs --------------------------------------------------------------------------
    def sample(self, ctx: TrainContext, step: int, directory: Path) -> list[Path]:
        from lorakit_llm.generate import write_samples

        prompts = self.config.train.sample_prompts
        if not prompts or self.model is None:
            return []
        chat = self.reader_name not in ("prompt_completion", "text")
        return [
            write_samples(
                self.model,
                self.tokenizer,
                prompts,
                Path(directory) / f"step-{step}.txt",
                template=self.template if chat else None,
                max_new_tokens=self.section.sample_max_new_tokens,
                system=self.system_prompt(),
            )
        ]

    def dataset_fingerprint(self) -> str:
        return self.data_hash[:16]

    def system_prompt(self) -> str | None:
        """The system message the training rows carried (qa, alpaca and plugin readers)."""
        if self.reader_name in ("chat", "prompt_completion", "text"):
            return None
        return self.section.system_prompt

    def export_metadata(self) -> dict[str, str]:
        metadata = {
            "lorakit.llm.base_model": self.config.train.base_model,
            "lorakit.llm.chat_template": self.template_name,
            "lorakit.llm.dataset_format": self.reader_name,
        }
        if self.system_prompt():
            metadata["lorakit.llm.system_prompt"] = str(self.system_prompt())
        return metadata

    def adapter_export(self, step: int) -> Any:
        """The exporters' view (:func:`lorakit_llm.export_view.adapter_export`)."""
        from lorakit_llm.export_view import adapter_export

        return adapter_export(self, step)

    def teardown(self) -> None:
        self.model = None
