"""The small CPU run the fault and resume tests share: 96 synthetic 8x8 images in 5 classes,
batches of 16 (6 steps an epoch), a convnet of width 4 trained 3 epochs with cross-entropy."""

from btkd.config import load_config
from btkd.engine import Trainer

SMALL = {"data": {"name": "synthetic", "options": {"size": 96, "num_classes": 5, "image_size": 8, "prototypes": True},
                  "batch_size": 16, "eval_batch_size": 40},
         "optim": {"epochs": 3, "milestones": [2]}, "runtime": {"progress": False},
         "model": {"student": "convnet", "student_options": {"width": 4}}, "distill": {"method": "ce"}}


def cfg(tmp_path, *overrides, name="run"):
    return load_config({**SMALL, "output_dir": str(tmp_path), "name": name}, list(overrides))


def quiet(c, **kw):
    return Trainer(c, echo=lambda *_: None, **kw)
