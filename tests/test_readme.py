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
    namespace = {"teacher_logits": torch.randn(8, 5), "labels": torch.randint(0, 5, (8,)),
                 "teacher_probs": torch.softmax(torch.randn(8, 5), 1), "epoch": 3, "epochs": 10}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["right"].dtype == torch.bool and 0 <= namespace["beta"] <= 1
