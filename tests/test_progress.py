"""Progress: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from lorakit.engine.progress import TrainProgress


def test_a_terminal_gets_a_bar_with_loss_and_rate():
    out = io.StringIO()
    progress = TrainProgress(10, 0, console=Console(file=out, force_terminal=True, width=120))
    assert progress.bar is not None
    for step in range(1, 11):
        progress.update(step, {"loss": 0.5, "lr": 1e-4})
    progress.close()
    text = out.getvalue()
    assert "10/10" in text and "loss 0.5000" in text and "it/s" in text


def test_a_pipe_gets_plain_lines(capsys):
    progress = TrainProgress(40, 0, console=Console(file=io.StringIO(), force_terminal=False))
    assert progress.bar is None
    for step in range(1, 41):
        progress.update(step, {"loss": 1.0, "lr": 1e-4})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20 and lines[-1].startswith("step 40/40  loss 1.0000")
    assert "\x1b[" not in "".join(lines)  # no escape codes in a log file
