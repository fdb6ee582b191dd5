"""What the ``llm`` backend does for ``lorakit export`` (to GGUF), ``merge``, ``sample``,
``demo`` and ``selftest``: each verb imports its module when called, so registering it is
cheap. ``lorakit chat`` is a command of its own (``register_commands``)."""

from __future__ import annotations

from pathlib import Path

from lorakit.api import BackendCommands, Config, WeightedLora


class LLMCommands(BackendCommands):
    def export(
        self, source: Path, to: str, output: Path | None, base: str | None, config: Config | None
    ) -> list[Path]:
        from lorakit_llm.gguf_export import export_command

        return export_command(source, to, output, base)

    def merge(
        self,
        base: str,
        loras: list[WeightedLora],
        output: Path,
        dtype: str | None,
        config: Config | None,
    ) -> Path:
        from lorakit_llm.export import merge_command

        return merge_command(base, loras, output, dtype)

    def sample(
        self,
        base: str,
        loras: list[WeightedLora],
        prompts: list[str],
        output: Path,
        seed: int,
        steps: int | None,
        config: Config | None,
        width: int | None,
        height: int | None,
    ) -> list[Path]:
        from lorakit_llm.export import sample_command

        return sample_command(base, loras, prompts, output, seed=seed, steps=steps, config=config)

    def demo(self, folder: Path) -> Path:
        from lorakit_llm.demo import demo_command

        return demo_command(folder)

    def demo_score(self, config_path: Path, run_dir: Path | None) -> str:
        from lorakit_llm.demo import demo_score

        return demo_score(config_path, run_dir)

    def selftest(self, output_dir: Path, config: Config) -> str:
        from lorakit_llm.selftest import verify

        return verify(output_dir, config)
