"""What the ``sd`` backend does for ``lorakit export``, ``merge``, ``sample``, ``demo`` and
``selftest``: each verb imports its module when called, so registering it is cheap."""

from __future__ import annotations

from pathlib import Path

from lorakit.api import BackendCommands, Config, WeightedLora


class SDCommands(BackendCommands):
    def export(
        self, source: Path, to: str, output: Path | None, base: str | None, config: Config | None
    ) -> list[Path]:
        from lorakit_sd.commands.export import export

        return export(source, to, output, base, config=config)

    def merge(
        self,
        base: str,
        loras: list[WeightedLora],
        output: Path,
        dtype: str | None,
        config: Config | None,
    ) -> Path:
        from lorakit_sd.commands.merge import merge

        return merge(base, loras, output, dtype, config=config)

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
        from lorakit_sd.commands.sample import sample

        return sample(
            base, loras, prompts, output, seed=seed, steps=steps, config=config,
            width=width, height=height,
        )  # fmt: skip

    def demo(self, folder: Path) -> Path:
        from lorakit_sd.commands.demo import demo_command

        return demo_command(folder)

    def selftest(self, output_dir: Path, config: Config) -> str:
        from lorakit_sd.commands.selftest import verify

        return verify(output_dir, config)
