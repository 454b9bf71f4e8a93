"""benchmarks/plain_loop.py: the plain PyTorch loop that reruns a committed bench's recipe.

Its losses are written apart from btkd's, so they are checked here against btkd's (two
implementations of one formula must agree) and against hand values; the script itself runs for one
epoch on 1,000 Fashion-MNIST images against the committed bench."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from btkd import BTKD, Distill

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import plain_loop  # noqa: E402


def _batch(seed: int, n: int = 16, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, c, (n,), generator=g)
    labels[: n // 2] = teacher[: n // 2].argmax(dim=1)  # at least half right, the rest mostly wrong
    return student, teacher, labels


def test_kd_loss_by_hand():
    # one row, two classes, tau 2: p = softmax([2, 0] / 2), q = softmax([0, 0] / 2) = [.5, .5]
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    p1 = math.exp(1) / (math.exp(1) + 1)
    p = [p1, 1 - p1]
    kl = sum(pi * math.log(pi / 0.5) for pi in p)
    assert plain_loop.kd_loss(student, teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_kd_loss_agrees_with_btkd(seed):
    student, teacher, labels = _batch(seed)
    ours = Distill("kd", tau=4.0, ce_weight=0.0, kd_weight=1.0)(student, teacher, labels, epoch=0, epochs=10)
    assert plain_loop.kd_loss(student, teacher, 4.0).item() == pytest.approx(ours["total"].item(), rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("epoch", [0, 3, 9])
def test_btkd_loss_agrees_with_btkd(seed, epoch):
    student, teacher, labels = _batch(seed)
    epochs = 10
    beta = math.cos(math.pi / 2 * epoch / epochs) ** 2
    term, n_wrong = plain_loop.btkd_kd_loss(student, teacher, labels, 4.0, beta)
    ours = BTKD("kd", tau=4.0, ce_weight=0.0, kd_weight=1.0)(student, teacher, labels, epoch=epoch, epochs=epochs)
    assert 0 < n_wrong < len(labels)  # both parts present in these batches
    assert n_wrong == int(ours["n_wrong"])
    assert ours["beta"].item() == pytest.approx(beta)
    assert term.item() == pytest.approx(ours["total"].item(), rel=1e-10)


def test_btkd_loss_with_one_part_empty():
    student, teacher, _ = _batch(0)
    right_labels = teacher.argmax(dim=1)
    term, n_wrong = plain_loop.btkd_kd_loss(student, teacher, right_labels, 4.0, 0.25)
    assert n_wrong == 0
    # every row right: 0.25 of plain KD and nothing from the (empty) rectified part
    assert term.item() == pytest.approx(0.25 * plain_loop.kd_loss(student, teacher, 4.0).item(), rel=1e-12)
    wrong_labels = (right_labels + 1) % teacher.shape[1]
    term, n_wrong = plain_loop.btkd_kd_loss(student, teacher, wrong_labels, 4.0, 1.0)
    assert n_wrong == len(wrong_labels) and term.item() == 0.0


def test_the_swap_makes_the_label_the_top_class_and_keeps_the_rest():
    student = torch.zeros(1, 4, dtype=torch.float64)
    teacher = torch.tensor([[1.0, 5.0, 2.0, 0.5]], dtype=torch.float64)
    label = torch.tensor([2])
    swapped = torch.tensor([[1.0, 2.0, 5.0, 0.5]], dtype=torch.float64)
    term, n_wrong = plain_loop.btkd_kd_loss(student, teacher, label, 1.0, 0.0)
    assert n_wrong == 1
    assert term.item() == pytest.approx(plain_loop.kd_loss(student, swapped, 1.0).item(), rel=1e-12)


def test_welch_by_hand():
    # means 2 and 1, variance 1 each (n = 3): se = sqrt(1/3 + 1/3), df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    from scipy.stats import t

    out = plain_loop.welch([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    se = math.sqrt(1 / 3 + 1 / 3)
    assert out["mean"] == pytest.approx(1.0)
    assert out["df"] == pytest.approx(4.0)  # equal variances and sizes: df = 2 (n - 1)
    half = t.ppf(0.975, 4) * se
    assert out["ci"] == pytest.approx([1 - half, 1 + half])


def test_a_bench_member_with_options_the_loop_lacks_is_refused(tmp_path):
    import shutil

    import yaml

    bench = tmp_path / "bench"
    src = plain_loop.SETTINGS["fashion_mnist"]["bench"] / "runs"
    for m in plain_loop.METHODS:
        shutil.copytree(src / f"{m}-s0", bench / "runs" / f"{m}-s0")
    assert plain_loop.recipe(bench, 0)["tau"] == 4.0
    path = bench / "runs" / "kd_btkd-s0" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["distill"]["btkd"]["rectify"] = "reweight"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match="does not implement"):
        plain_loop.recipe(bench, 0)
    with pytest.raises(SystemExit, match="no member ce-s1"):
        plain_loop.recipe(bench, 1)


@pytest.mark.parametrize("setting", sorted(plain_loop.SETTINGS))
def test_every_setting_reads_its_committed_bench(setting):
    bench = plain_loop.SETTINGS[setting]["bench"]
    r = plain_loop.recipe(bench, 0)
    assert r["tau"] == 4.0 and (r["ce_weight"], r["kd_weight"]) == (0.1, 0.9)
    assert r["student"] == ("mlp" if setting in ("fashion_mnist", "cifar100_cpu") else "convnet")
    assert plain_loop.SETTINGS[setting]["teacher"].is_file()


def _fashion_mnist_root():
    try:
        return plain_loop.find_root("fashion_mnist", None)
    except SystemExit:
        return None


@pytest.mark.skipif(_fashion_mnist_root() is None, reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")
def test_smoke_run_against_the_committed_bench(tmp_path):
    out = tmp_path / "plain.json"
    result = plain_loop.main(["--setting", "fashion_mnist", "--smoke", "--seeds", "0", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["complete"] and not out.with_name(out.name + ".tmp").exists()
    assert result["epochs"] == 1 and result["seeds"] == [0, 1]
    # the committed teacher on the first 500 test images, read by the plain loop's own code
    assert 80 < result["teacher_test_acc"] <= 100
    for run in result["runs"]:
        assert set(run["last"]) == set(plain_loop.METHODS)
        assert all(0 <= v <= 100 for v in run["last"].values())
        # the teacher is wrong on about a tenth of its own training images (the bench logs 0.099)
        assert 0.03 < run["frac_wrong"][0] < 0.2
    comparison = result["comparison"]
    # the bench's own figures are read from its results.json, by seed
    assert comparison["bench_values"]["ce"] == [82.21, 82.06]
    assert set(comparison["differences"]) == {"KD - alone", "KD+BTKD - KD"}
