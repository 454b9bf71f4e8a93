"""Configs: inheritance, overrides, validation errors that name the key, the built-in files."""

import pytest

from btkd.config import Config, ConfigError, builtin_configs, load_config, parse_override


def test_defaults_are_the_standard_recipe():
    c = Config()
    assert (c.data.batch_size, c.optim.epochs, c.optim.lr, c.optim.milestones) == (64, 240, 0.05, [150, 180, 210])
    assert (c.optim.momentum, c.optim.weight_decay, c.data.crop_padding, c.data.flip) == (0.9, 5e-4, 4, True)


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.1\n  epochs: 10\ndata:\n  name: synthetic\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\noptim:\n  epochs: 20\nname: child\n")
    c = load_config(tmp_path / "child.yaml", ["optim.lr=0.2", "distill.btkd.enabled=true", "optim.milestones=[5, 8]"])
    assert (c.name, c.optim.epochs, c.optim.lr, c.data.name) == ("child", 20, 0.2, "synthetic")
    assert c.distill.btkd.enabled and c.optim.milestones == [5, 8]


def test_yaml_exponent_without_dot_is_a_float():
    assert load_config(None, ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=0.1", r"unknown config key 'optim.lrr'.*Did you mean 'optim.lr'"),
    ("optim.lr=fast", r"optim.lr='fast' must be a number"),
    ("optim.epochs=1.5", r"optim.epochs=1.5 must be an integer"),
    ("distill.btkd.rectify=flip", r"distill.btkd.rectify='flip' is not allowed; expected one of \['swap', 'reweight', 'none'\]"),
    ("runtime.precision=fp16", r"expected one of \['auto', 'fp32', 'bf16'\]"),
    ("data.flip=maybe", r"data.flip='maybe' must be true or false"),
    ("optim", r"must look like key=value"),
])
def test_bad_values_name_the_key_value_and_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path):
    (tmp_path / "loop.yaml").write_text("inherit: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("inherit: missing.yaml\n")
    with pytest.raises(ConfigError, match="inherit: 'missing.yaml' not found"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a built-in"):
        load_config("cifar100/kd/res32x4_res8")


def test_parse_override_nests():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_builtin_configs_cover_every_standard_pair_and_load():
    names = builtin_configs()
    pairs = ["res32x4_res8x4", "wrn40_2_wrn16_2", "wrn40_2_wrn40_1", "res56_res20", "res110_res32",
             "vgg13_vgg8", "res32x4_shuv2", "vgg13_mv2"]
    for method in ("kd", "dkd", "kd_btkd", "dkd_btkd"):
        for pair in pairs:
            assert f"cifar100/{method}/{pair}" in names
    for name in names:
        if "/bench/" in name:
            from btkd.bench import load_bench

            assert load_bench(name).methods
        else:
            load_config(name)
    dkd = load_config("cifar100/dkd_btkd/res56_res20")
    assert dkd.distill.options["beta"] == 2.0 and dkd.distill.btkd.enabled
    assert load_config("cifar100/kd/vgg13_mv2").optim.lr == 0.01
    assert load_config("cifar100/dkd/wrn40_2_wrn16_2").distill.options["beta"] == 6.0
    assert load_config("cifar100/teachers/resnet32x4").distill.method == "ce"


def test_on_off_switches_accept_yaml_booleans():
    c = load_config(None, ["runtime.channels_last=off", "runtime.fold_teacher_bn=on"])
    assert (c.runtime.channels_last, c.runtime.fold_teacher_bn) == ("off", "on")
    assert load_config(None, ["runtime.channels_last=true"]).runtime.channels_last == "on"
