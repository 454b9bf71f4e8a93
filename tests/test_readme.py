"""The README's Python example runs as written, so it can never rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_training_loop_example_runs(capsys):
    example = python_blocks()[0]
    assert "BTKD(host=\"kd\"" in example
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[-1].startswith("2 ")
    assert namespace["terms"]["total"].item() > 0


def test_building_blocks_example_runs():
    import torch

    block = python_blocks()[1]
    namespace = {}  # as written: it runs on its own
    exec(compile(block, str(README), "exec"), namespace)
    ns = namespace
    assert ns["right"].dtype == torch.bool and 0 <= ns["beta"] <= 1
    assert torch.equal(ns["fixed"].argmax(1), ns["labels"]) and torch.equal(ns["probs"].argmax(1), ns["labels"])
