"""Every number in a config has an allowed range, checked when the config is loaded."""

import dataclasses
import typing

import pytest

from btkd.config import Config, ConfigError, load_config


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _numeric_fields(hint, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if typing.get_origin(hint) in (typing.Union, list) else hint
        if inner in (int, float):
            yield f"{prefix}{f.name}", f


def test_every_numeric_key_has_a_range():
    keys = dict(_numeric_fields(Config))
    assert {"optim.epochs", "optim.lr", "optim.milestones", "data.train_subset", "seed"} <= set(keys)
    assert [k for k, f in keys.items() if "range" not in f.metadata] == []


@pytest.mark.parametrize("override, match", [
    ("optim.epochs=0", r"optim.epochs=0 is out of range: expected an integer >= 1"),
    ("optim.lr=0", r"optim.lr=0.0 is out of range: expected a number > 0"),
    ("optim.lr=-0.1", r"optim.lr=-0.1 is out of range"),
    ("optim.lr=.inf", r"optim.lr=inf must be a finite number"),
    ("optim.lr=.nan", r"optim.lr=nan must be a finite number"),
    ("optim.momentum=1.0", r"optim.momentum=1.0 is out of range: expected a number in \[0, 1\)"),
    ("optim.momentum=-0.5", r"optim.momentum=-0.5 is out of range"),
    ("optim.weight_decay=-1e-4", r"optim.weight_decay=-0.0001 is out of range: expected a number >= 0"),
    ("optim.gamma=-5", r"optim.gamma=-5.0 is out of range: expected a number in \(0, 1\]"),
    ("optim.gamma=0", r"optim.gamma=0.0 is out of range"),
    ("optim.gamma=2", r"optim.gamma=2.0 is out of range"),
    ("optim.warmup_epochs=-1", r"optim.warmup_epochs=-1 is out of range: expected an integer >= 0"),
    ("optim.milestones=[0, 5]", r"optim.milestones\[0\]=0 is out of range: expected an integer >= 1"),
    ("data.batch_size=0", r"data.batch_size=0 is out of range: expected an integer >= 1"),
    ("data.eval_batch_size=-2", r"data.eval_batch_size=-2 is out of range"),
    ("data.train_subset=-5", r"data.train_subset=-5 is out of range: expected an integer >= 1 \(or null\)"),
    ("data.train_subset=0", r"data.train_subset=0 is out of range: expected an integer >= 1 \(or null\)"),
    ("data.test_subset=0", r"data.test_subset=0 is out of range"),
    ("data.crop_padding=-1", r"data.crop_padding=-1 is out of range: expected an integer >= 0"),
    ("data.image_size=0", r"data.image_size=0 is out of range"),
    ("data.workers=-1", r"data.workers=-1 is out of range"),
    ("runtime.threads=0", r"runtime.threads=0 is out of range: expected an integer >= 1 \(or null\)"),
    ("distill.ce_weight=-0.5", r"distill.ce_weight=-0.5 is out of range: expected a number >= 0 \(or null\)"),
    ("distill.kd_weight=-1", r"distill.kd_weight=-1.0 is out of range"),
    ("seed=-1", r"seed=-1 is out of range: expected an integer >= 0"),
])
def test_out_of_range_numbers_name_the_key_value_and_range(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override, "optim.lr_schedule=cosine"])


def test_in_range_edges_and_nulls_are_accepted():
    c = load_config(None, ["optim.lr_schedule=cosine", "optim.epochs=1", "optim.momentum=0", "optim.gamma=1",
                           "optim.weight_decay=0", "data.train_subset=1", "data.test_subset=null",
                           "data.crop_padding=0", "data.workers=0", "runtime.threads=null", "seed=0",
                           "distill.ce_weight=0", "distill.kd_weight=null", "data.options={size: -3}"])
    assert (c.optim.epochs, c.optim.momentum, c.optim.gamma, c.data.train_subset) == (1, 0.0, 1.0, 1)
    assert c.distill.ce_weight == 0.0 and c.distill.kd_weight is None
    assert c.data.options == {"size": -3}  # free-form: checked by the loader, not here


def test_milestones_must_lie_below_epochs_and_say_what_to_do():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.epochs=10"])  # the default milestones [150, 180, 210]
    msg = str(err.value)
    assert "optim.milestones=[150, 180, 210]" in msg and "optim.epochs=10" in msg
    assert "optim.milestones=[5, 8]" in msg and "optim.milestones=[]" in msg
    with pytest.raises(ConfigError, match=r"optim.milestones=\[8, 5\] must be strictly increasing"):
        load_config(None, ["optim.epochs=10", "optim.milestones=[8, 5]"])
    with pytest.raises(ConfigError, match=r"optim.milestones=\[5, 5\] must be strictly increasing"):
        load_config(None, ["optim.epochs=10", "optim.milestones=[5, 5]"])
    with pytest.raises(ConfigError, match=r"optim.milestones=\[5, 10\].*optim.epochs=10"):
        load_config(None, ["optim.epochs=10", "optim.milestones=[5, 10]"])
    assert load_config(None, ["optim.epochs=10", "optim.milestones=[5, 8]"]).optim.milestones == [5, 8]
    assert load_config(None, ["optim.epochs=10", "optim.milestones=[]"]).optim.milestones == []
    # a cosine schedule does not use them
    assert load_config(None, ["optim.epochs=10", "optim.lr_schedule=cosine"]).optim.epochs == 10


def test_warmup_must_end_before_training_does():
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs=10 must be below optim.epochs=10"):
        load_config(None, ["optim.epochs=10", "optim.warmup_epochs=10", "optim.lr_schedule=cosine"])
    assert load_config(None, ["optim.epochs=10", "optim.warmup_epochs=9",
                              "optim.lr_schedule=cosine"]).optim.warmup_epochs == 9


def test_cross_field_checks_also_apply_to_a_file(tmp_path):
    (tmp_path / "short.yaml").write_text("optim:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"optim.milestones.*optim.epochs=3"):
        load_config(tmp_path / "short.yaml")
