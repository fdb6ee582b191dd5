"""The text demo must visibly learn: most training questions answered exactly afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_text_lora_learns_its_questions(tmp_path: Path) -> None:
    from lorakit_llm.demo import demo_command, demo_score

    from lorakit.config import load_config
    from lorakit.engine import train

    config_path = demo_command(tmp_path / "llm")
    before = demo_score(config_path, None)
    result = train(load_config(config_path), progress=False)
    after = demo_score(config_path, result.output_dir)
    right_before = int(before.split("/")[0])
    right_after, total = (int(x) for x in after.split()[0].split("/"))
    assert total == 150 and right_before == 0
    print(f"demo: {before} → {after}")
    assert right_after > total // 2, after  # most of them
