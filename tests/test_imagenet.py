"""The built-in ImageNet configs: the recipe, mdistiller's loss settings, and one tiny end-to-end run of a
config on a JPEG tree with a teacher in torchvision's published checkpoint layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from btkd import BTKD, Distill
from btkd.config import builtin_configs, load_config
from btkd.engine import Trainer
from btkd.engine.build import make_loss
from btkd.models import MODELS

IMAGENET = sorted(n for n in builtin_configs() if n.startswith("imagenet/"))
PAIRS = {"res34_res18": ("resnet34", "resnet18"), "res50_mv1": ("resnet50", "MobileNetV1")}
METHODS = ("ce", "kd", "kd_btkd", "dkd", "dkd_btkd")


def test_every_pair_has_every_method():
    assert IMAGENET == sorted(f"imagenet/{m}/{p}" for m in METHODS for p in PAIRS)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_config_loads_with_the_standard_recipe_and_builds_its_loss(name):
    cfg = load_config(name)
    method, pair = name.split("/")[1:]
    teacher, student = PAIRS[pair]
    d, o = cfg.data, cfg.optim
    assert (d.name, d.root, d.global_batch_size, d.image_size) == ("imagefolder", None, 512, 224)
    assert d.options["mean"] == [0.485, 0.456, 0.406] and d.options["std"] == [0.229, 0.224, 0.225]
    assert (o.epochs, o.lr, o.momentum, o.weight_decay, o.lr_schedule, o.milestones, o.gamma) == \
        (100, 0.2, 0.9, 1e-4, "multistep", [30, 60, 90], 0.1)
    assert cfg.model.student == student and student in MODELS and cfg.name == f"imagenet_{method}_{pair}"
    loss = make_loss(cfg)
    if method == "ce":
        assert loss is None and cfg.model.teacher is None
        return
    assert cfg.model.teacher == teacher and teacher in MODELS
    assert cfg.model.teacher_checkpoint == f"weights/imagenet/{teacher}.pth"
    assert isinstance(loss, BTKD if method.endswith("_btkd") else Distill)
    assert cfg.distill.btkd.enabled == method.endswith("_btkd")
    if method.startswith("kd"):  # mdistiller configs/imagenet/*/kd.yaml
        assert (cfg.distill.ce_weight, cfg.distill.kd_weight, cfg.distill.options) == (0.5, 0.5, {"tau": 1.0})
    else:  # mdistiller configs/imagenet/*/dkd.yaml (ALPHA left at its default 1.0)
        beta = 0.5 if pair == "res34_res18" else 2.0
        assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == (1.0, 1.0)
        assert cfg.distill.options == {"alpha": 1.0, "beta": beta, "tau": 1.0, "warmup": 1}


def test_global_batch_is_kept_on_any_number_of_processes():
    from btkd.engine.build import per_process_batch

    cfg = load_config("imagenet/kd/res34_res18")
    assert [per_process_batch(cfg, w) for w in (1, 2, 4, 8)] == [512, 256, 128, 64]


def test_imagenet_config_runs_on_a_jpeg_tree_with_a_torchvision_layout_teacher(tmp_path):
    # A torchvision resnet34 file: a plain state dict without BN's num_batches_tracked.
    from PIL import Image

    layout = json.loads((Path(__file__).parent / "fixtures" / "imagenet_model_keys.json").read_text())["resnet34"]
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.rand(s, generator=g) + 0.5 if k.endswith("running_var") else torch.randn(s, generator=g) * 0.05)
             for k, s in layout.items()}
    weights = tmp_path / "resnet34-b627a593.pth"
    torch.save(state, weights)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 1)):
        for cls in ("c0", "c1"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", "JPEG")
    # 2 classes: the teacher's head is 1000-way, so the tree's class count must match it or the load fails
    cfg = load_config("imagenet/kd_btkd/res34_res18", [
        f"data.root={tmp_path / 'imagenet'}", f"model.teacher_checkpoint={weights}", "data.image_size=32",
        "data.global_batch_size=4", "data.eval_batch_size=2", "data.workers=0", "optim.epochs=1",
        "optim.milestones=[]", f"output_dir={tmp_path / 'runs'}", "runtime.progress=false"])
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \[1000, 512\] vs model \[2, 512\]"):
        Trainer(cfg)
    # with 1000 classes' worth of head (the real case), it loads unchanged; here: cut the head to 2 classes
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:2], state["fc.bias"][:2]
    torch.save(state, weights)
    trainer = Trainer(cfg)
    assert trainer.num_classes == 2 and trainer.train_size == 8
    summary = trainer.fit()
    assert summary["last_acc"] is not None


def test_a_missing_imagenet_teacher_says_where_to_download_it(tmp_path):
    # The configs' teacher is torchvision's published weights: no `btkd train` recipe makes it.
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 2, "val": 1}, size=(12, 12))
    for pair, published in (("res34_res18", "resnet34-b627a593.pth"), ("res50_mv1", "resnet50-0676ba61.pth")):
        cfg = load_config(f"imagenet/kd_btkd/{pair}", [
            f"data.root={tmp_path / 'tree'}", "data.image_size=8", "data.global_batch_size=2", "data.workers=0",
            f"output_dir={tmp_path / 'runs'}", "runtime.progress=false"])
        with pytest.raises(FileNotFoundError, match=rf"no file at weights/imagenet/.*download torchvision's published "
                                                    rf".*https://download.pytorch.org/models/{published}"):
            Trainer(cfg)
