"""Configs: inheritance, overrides, validation errors that name the key, the built-in files."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ("optim.lr_schedule=cos", r"expected one of \['multistep', 'cosine'\]\. Did you mean 'cosine'\?"),
    ("data.flip=maybe", r"data.flip='maybe' must be true or false"),
    ("optim", r"must look like key=value"),
    ("imports=my_parts", r"imports='my_parts' must be a list, e.g. \['my_parts'\]"),
    ("name=123", r"name=123 must be a string, but YAML reads it as int 123; quote it: \"name='123'\""),
    ("name=", r"name is empty; it needs a string"),
    ("name=.", r"name='.' must name a folder inside output_dir"),
    ("name=../elsewhere", r"name='../elsewhere' must name a folder inside output_dir"),
    ("name=/abs", r"name='/abs' must name a folder inside output_dir"),
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
    # YAML keeps the last of a repeated key without a word: the first one's settings would be lost
    (tmp_path / "twice.yaml").write_text("optim: {epochs: 1}\nseed: 2\noptim: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"(?s)key .optim. appears twice in one mapping.*line 3"):
        load_config(tmp_path / "twice.yaml")
    from btkd.config import _read_yaml  # a merge key is not a repeat
    (tmp_path / "merge.yaml").write_text("a: &b {epochs: 1, lr: 0.2}\noptim: {<<: *b, lr: 0.1}\n")
    assert _read_yaml(tmp_path / "merge.yaml")["optim"] == {"epochs": 1, "lr": 0.1}


def test_no_loss_at_all_is_refused():
    with pytest.raises(ConfigError, match="distill.ce_weight=0 and distill.kd_weight=0 leave no loss"):
        load_config(None, ["model.teacher=convnet", "distill.method=kd", "distill.ce_weight=0", "distill.kd_weight=0"])
    load_config(None, ["model.teacher=convnet", "distill.method=kd", "distill.ce_weight=0"])  # distillation alone


def test_a_module_in_imports_that_fails_is_named_with_its_error(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "raises_at_import.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    (tmp_path / "needs_missing.py").write_text("import a_package_nobody_has\n")
    cases = {"raises_at_import": r"imports: 'raises_at_import' raised RuntimeError: boom \(.*raises_at_import.py, "
                                 r"line 2\); fix the module",
             "bad_syntax": r"imports: 'bad_syntax' raised SyntaxError",
             "needs_missing": r"imports: 'needs_missing' failed while importing: No module named 'a_package_nobody_has'",
             "not_there_at_all": r"imports: cannot import 'not_there_at_all'"}
    for module, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            load_config({"imports": [module]})


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


# ---------------------------------------------------------------------------------------------
# the config reference, inheritance by built-in name, run names, CIFAR-10


def _reference_module():
    from repo_scripts import load_script

    return load_script("scripts/make_config_reference.py")


def _keys(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _keys(hints[f.name], prefix + f.name + ".")


def test_every_config_key_has_a_doc():
    undocumented = [key for key, f in _keys(Config) if not f.metadata.get("doc")]
    assert not undocumented, f"give these fields a doc= in src/btkd/config.py: {undocumented}"


def test_the_config_reference_is_generated_from_the_code():
    ref = _reference_module()
    text = ref.render()
    committed = ref.OUT.read_text() if ref.OUT.is_file() else ""
    assert committed == text, f"docs/CONFIG.md differs from the config dataclasses: run `{ref.COMMAND}`"
    for key, f in _keys(Config):
        assert f"| `{key}`" in text or f"### `{key}`" in text, key
        assert f.metadata["doc"].replace("|", "\\|") in text
    assert "`bench.seeds`" in text and "`bench.methods.<label>.distill`" in text and "`bench.compare`" in text
    assert "| `optim.momentum` | float | `0.9` | in [0, 1) |" in text
    assert "`swap`, `reweight`, `none`" in text
    assert "| `data.train_subset` | int or null | `null` | >= 1, or null |" in text


def test_inherit_a_builtin_by_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("inherit: cifar100/kd/res32x4_res8x4\nname: mine\n"
                                        "optim: {epochs: 10, milestones: [5]}\n")
    c = load_config(tmp_path / "mine.yaml")
    assert (c.name, c.model.teacher, c.model.student, c.optim.epochs) == ("mine", "resnet32x4", "resnet8x4", 10)
    assert c.distill.options == {"tau": 4.0} and c.optim.lr == 0.05  # the built-in and its own parent
    (tmp_path / "mine2.yaml").write_text("inherit: [cifar100/kd/res32x4_res8x4.yaml]\nname: mine2\n")
    assert load_config(tmp_path / "mine2.yaml").model.student == "resnet8x4"  # .yaml or not, a list or not
    # a file relative to the inheriting one comes first
    (tmp_path / "cifar100" / "kd").mkdir(parents=True)
    (tmp_path / "cifar100" / "kd" / "res32x4_res8x4.yaml").write_text("model: {student: resnet20}\n")
    assert load_config(tmp_path / "mine2.yaml").model.student == "resnet20"
    (tmp_path / "typo.yaml").write_text("inherit: cifar100/kd/res32x4_res8x\n")
    with pytest.raises(ConfigError, match="not found.*Did you mean the built-in 'cifar100/kd/res32x4_res8x4'"):
        load_config(tmp_path / "typo.yaml")


def test_run_names_follow_what_the_run_is(tmp_path):
    from btkd.config import default_run_name, derived_run_name

    kd = "cifar100/kd/res32x4_res8x4"
    assert derived_run_name(kd) is None and derived_run_name(kd, ["seed=3", "optim.lr=0.1"]) is None
    assert derived_run_name(kd, ["model.student=resnet20"]) == "kd_resnet32x4_resnet20"
    assert derived_run_name(kd, ["model.student=resnet20", "name=mine"]) is None
    assert derived_run_name(kd, ["distill.btkd.enabled=true"]) == "kd_btkd_resnet32x4_resnet8x4"
    assert derived_run_name(kd, ["data.name=cifar10"]) == "cifar10_kd_resnet32x4_resnet8x4"
    assert derived_run_name("cifar100/teachers/resnet32x4", ["model.student=resnet56"]) == "teacher_resnet56"
    assert derived_run_name("cifar100/bench/res32x4_res8x4", ["model.student=resnet20"], "bench") == \
        "bench_resnet32x4_resnet20"
    assert derived_run_name("cifar100/bench/res32x4_res8x4", ["bench.seeds=[0]"], "bench") is None
    # a bench of the user's on a single run's built-in does not take that run's folder
    (tmp_path / "my_bench.yaml").write_text("inherit: cifar100/kd/res32x4_res8x4\n"
                                             "bench: {seeds: [0], methods: {kd: {}, kd_btkd: {distill: {btkd: {enabled: true}}}}}\n")
    assert derived_run_name(tmp_path / "my_bench.yaml", [], "bench") == "bench_resnet32x4_resnet8x4"
    assert derived_run_name(tmp_path / "my_bench.yaml", ["name=mine"], "bench") is None
    # a file of the user's: its own name stays; inheriting a built-in's name for another student does not
    (tmp_path / "own.yaml").write_text("inherit: cifar100/kd/res32x4_res8x4\nname: own\n")
    assert derived_run_name(tmp_path / "own.yaml", ["model.student=resnet20"]) is None
    (tmp_path / "borrowed.yaml").write_text("inherit: cifar100/kd/res32x4_res8x4\nmodel: {student: resnet20}\n")
    assert derived_run_name(tmp_path / "borrowed.yaml") == "kd_resnet32x4_resnet20"
    (tmp_path / "nameless.yaml").write_text("model: {student: resnet20}\ndistill: {method: ce}\n")
    assert derived_run_name(tmp_path / "nameless.yaml") == "teacher_resnet20"
    assert default_run_name(load_config(None, ["data.name=synthetic", "model.student=mlp", "model.teacher=convnet",
                                               "distill.method=dkd"])) == "synthetic_dkd_convnet_mlp"


def test_cifar10_configs_mirror_cifar100():
    names = builtin_configs()
    pairs = ["res32x4_res8x4", "wrn40_2_wrn16_2", "wrn40_2_wrn40_1", "res56_res20", "res110_res32",
             "vgg13_vgg8", "res32x4_shuv2", "vgg13_mv2"]
    teachers = {}
    for t in ("resnet32x4", "wrn_40_2", "resnet56", "resnet110", "vgg13"):
        c = load_config(f"cifar10/teachers/{t}")
        assert c.data.name == "cifar10" and c.distill.method == "ce" and c.name == f"cifar10_teacher_{t}"
        teachers[t] = c
    for pair in pairs:
        for method in ("kd", "dkd", "kd_btkd", "dkd_btkd", "ce"):
            assert f"cifar10/{method}/{pair}" in names
            c = load_config(f"cifar10/{method}/{pair}")
            c100 = load_config(f"cifar100/{method}/{pair}")
            assert c.data.name == "cifar10" and c.name == f"cifar10_{c100.name}"
            assert (c.model.student, c.model.teacher, c.distill, c.optim) == \
                (c100.model.student, c100.model.teacher, c100.distill, c100.optim)  # the same recipe
            if c.model.teacher:  # reads the CIFAR-10 teacher that `btkd train cifar10/teachers/...` writes
                t = teachers[c.model.teacher]
                assert c.model.teacher_checkpoint == f"{t.output_dir}/{t.name}/last.safetensors"
    run_names = [load_config(n).name for n in names if "/bench/" not in n]
    assert len(run_names) == len(set(run_names)), "two built-in configs would share a run folder"


def test_changing_the_model_by_override_drops_the_old_models_options():
    # the Fashion-MNIST teacher is a convnet of width 16: an mlp takes no width
    c = load_config("fashion_mnist/teachers/convnet", ["model.student=mlp"])
    assert (c.model.student, c.model.student_options) == ("mlp", {})
    c = load_config("fashion_mnist/teachers/convnet", ["model.student=mlp", "model.student_options.hidden=32"])
    assert c.model.student_options == {"hidden": 32}
    distill = {"model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 16}}}
    c = load_config(distill, ["model.teacher=mlp"])
    assert (c.model.teacher, c.model.teacher_options) == ("mlp", {})
    # the same model: its options stay and merge; null clears them (an empty mapping merges into them)
    c = load_config("fashion_mnist/teachers/convnet", ["model.student=convnet", "model.student_options.in_channels=1"])
    assert c.model.student_options == {"width": 16, "in_channels": 1}
    assert load_config("fashion_mnist/teachers/convnet", ["model.student_options=null"]).model.student_options == {}
    assert load_config("fashion_mnist/teachers/convnet", ["model.student_options={}"]).model.student_options == {"width": 16}


def test_changing_the_method_by_override_starts_from_its_own_settings():
    # KD's tau and 0.1/0.9 are not DKD's: the new method takes its defaults, plus what the overrides set
    c = load_config("cifar100/kd_btkd/res32x4_res8x4", ["distill.method=dkd"])
    assert (c.distill.method, c.distill.options, c.distill.ce_weight, c.distill.kd_weight) == ("dkd", {}, None, None)
    assert c.distill.btkd.enabled  # the plug-in is not the method's
    c = load_config("cifar100/kd/res32x4_res8x4", ["distill.options.beta=2", "distill.method=dkd", "distill.ce_weight=0.5"])
    assert (c.distill.options, c.distill.ce_weight, c.distill.kd_weight) == ({"beta": 2}, 0.5, None)
    # the same method, or none changed: the config's settings stay and merge with the overrides
    c = load_config("cifar100/kd/res32x4_res8x4", ["distill.method=kd", "distill.options.tau=2"])
    assert (c.distill.options, c.distill.ce_weight, c.distill.kd_weight) == ({"tau": 2}, 0.1, 0.9)


def test_the_builtin_schedule_names_are_the_registrys():
    from btkd.config import BUILTIN_SCHEDULES
    from btkd.schedules import SCHEDULES

    assert tuple(SCHEDULES) == BUILTIN_SCHEDULES  # a user's additions come after these
    with pytest.raises(ConfigError, match=r"distill.btkd.schedule='cos' is not a schedule.*Did you mean 'cos2'"):
        load_config(None, ["distill.btkd.schedule=cos"])


def test_a_later_parent_overrides_an_earlier_one_and_nested_keys_merge(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.1\n  epochs: 10\n  milestones: [5]\n")
    (tmp_path / "b.yaml").write_text("optim:\n  lr: 0.2\n")
    (tmp_path / "child.yaml").write_text("inherit: [a.yaml, b.yaml]\n")
    c = load_config(tmp_path / "child.yaml")
    assert (c.optim.lr, c.optim.epochs) == (0.2, 10)


def test_an_integer_key_refuses_a_boolean():
    for override in ("optim.epochs=true", "data.batch_size=false", "seed=true"):
        with pytest.raises(ConfigError, match="must be an integer"):
            load_config(None, [override])


def test_list_defaults_are_not_shared_between_configs():
    a, b = Config(), Config()
    a.optim.milestones.append(230)
    assert b.optim.milestones == [150, 180, 210] == Config().optim.milestones


# ---------------------------------------------------------------------------------------------
# odd input: YAML's numbers, values where a section belongs, option names, files, round trips


def test_numbers_are_read_as_written_not_as_yaml_1_1_reads_them(tmp_path):
    # YAML 1.1 reads 017 as octal 15 and 1:30 as 90 (base 60), silently; 1e-3 (no dot) as a string
    c = load_config(None, ["seed=017", "optim.epochs=100", "optim.milestones=[060, 070]",
                           "distill.options={tau: 1e-3}", "model.student_options={scale: 2E+1}"])
    assert (c.seed, c.optim.milestones) == (17, [60, 70])
    assert c.distill.options == {"tau": 0.001} and c.model.student_options == {"scale": 20.0}
    with pytest.raises(ConfigError, match=r"runtime.time_limit='1:30' must be a number"):
        load_config(None, ["runtime.time_limit=1:30"])
    (tmp_path / "c.yaml").write_text("seed: 010\ndistill: {btkd: {schedule: constant, schedule_options: {value: 5e-1}}}\n")
    c = load_config(tmp_path / "c.yaml")
    assert (c.seed, c.distill.btkd.schedule_options) == (10, {"value": 0.5})
    # the explicit forms keep their meaning
    assert load_config(None, ["seed=0x10"]).seed == load_config(None, ["seed=0o20"]).seed == 16
    assert load_config(None, ["seed=1_000"]).seed == 1000 and load_config(None, ["optim.lr=.5"]).optim.lr == 0.5


def test_what_btkd_writes_reads_back_as_written(tmp_path):
    """A string that the reading above takes for a number ('1e3') is quoted in a run's config.yaml."""
    import yaml

    from btkd.config import config_to_dict
    from btkd.engine.run_folder import config_text

    cfg = load_config(None, ["name='1e3'", "data.options={tag: '1e-3', n: 1e-3}", "model.teacher='0o7'"])
    assert (cfg.name, cfg.data.options, cfg.model.teacher) == ("1e3", {"tag": "1e-3", "n": 0.001}, "0o7")
    text = config_text(config_to_dict(cfg))
    (tmp_path / "config.yaml").write_text(text)
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load(text) == config_to_dict(cfg)  # and plain PyYAML reads the same


def test_a_value_where_a_section_belongs_is_a_config_error():
    # a built-in config sets distill.method, model.student, data.name: the override replaced the section
    for override, section in [("distill=yes", "distill"), ("model=resnet20", "model"), ("data=cifar10", "data"),
                              ("distill.btkd=true", "distill.btkd")]:
        with pytest.raises(ConfigError, match=rf"^{section} must be a mapping of keys to values, got .*; set its "
                                              rf"keys, e.g. {section}\.\w+=\.\.\.$"):
            load_config("cifar100/kd_btkd/res32x4_res8x4", [override])


def test_option_mappings_take_names():
    # the keys become keyword arguments: a number is no name; {tau:2} is the key 'tau:2' without a value
    with pytest.raises(ConfigError, match=r"distill.options: the key 1 is not a name"):
        load_config(None, ["distill.options={1: 2}"])
    with pytest.raises(ConfigError, match=r"distill.btkd.schedule_options: the key 1 is not a name"):
        load_config(None, ["distill.btkd.schedule_options={1: 2}"])
    with pytest.raises(ConfigError, match=r"model.student_options: 'width:4' reads as one key without a value; put "
                                          r"a space after the colon: \{width: 4\}"):
        load_config(None, ["model.student_options={width:4}"])


def test_a_string_key_given_another_yaml_type_names_the_text_as_written(tmp_path):
    # `name='yes'` on a command line reaches btkd as name=yes: the fix quotes for YAML inside the shell's quotes
    for text, kind in [("yes", "bool True"), ("123", "int 123"), ("1e3", "float 1000.0"), ("2024-01-01", "date")]:
        with pytest.raises(ConfigError, match=rf"name={text} must be a string, but YAML reads it as {kind}.*; "
                                              rf"quote it: \"name='{text}'\""):
            load_config(None, [f"name={text}"])
    assert load_config(None, ["runtime.compile=off", "model.teacher=null"]).runtime.compile == "off"
    (tmp_path / "c.yaml").write_text("name: no\n")  # not 'False', which is not what the file says
    with pytest.raises(ConfigError, match=r"name=False must be a string; YAML reads an unquoted yes, no, on, off, "
                                          r"true or false as a boolean: quote the word"):
        load_config(tmp_path / "c.yaml")


def test_an_unclosed_list_is_a_yaml_error_not_a_string():
    with pytest.raises(ConfigError, match=r"optim.milestones=\[5, 8 is not a valid YAML list or mapping"):
        load_config(None, ["optim.milestones=[5, 8"])
    assert load_config(None, ["name=@home"]).name == "@home"  # text YAML cannot read unquoted is taken as written


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 9\); save it as UTF-8"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "bom.yaml").write_bytes("\ufeffname: caf\xe9\n".encode("utf-8"))
    assert load_config(tmp_path / "bom.yaml").name == "caf\xe9"


def test_every_builtin_config_names_what_btkd_builds():
    """What `btkd configs NAME` and train/distill check before reading data: models, dataset, host options."""
    from btkd.engine.build import check_names

    for name in builtin_configs():
        if "/bench/" not in name:  # load_bench builds its members' losses (test above)
            check_names(load_config(name))


# Accepted overrides, generated: each value reaches the config with the meaning it was written with,
# and the resolved config, written as a run folder's config.yaml, loads back to the same config.

_NAME = st.text("abcxyz_-0123456789", min_size=1, max_size=8) | st.sampled_from(
    ["yes", "no", "on", "null", "1e3", "017", "1:30", "0x10", "2024-01-01", "inf", "a b", "caf\xe9"])
_FLOAT = st.floats(1e-6, 10.0)
_SCALAR = st.integers(-1000, 1000) | _FLOAT | st.booleans() | st.none() | _NAME


@st.composite
def _overrides(draw):
    """A list of override texts, and {dotted key: the value each means}."""
    seed = draw(st.integers(0, 10**6))
    lr = draw(st.sampled_from(["{!r}", "{:e}", "{:.0e}"])).format(draw(_FLOAT))  # 1e-05: no dot
    epochs = draw(st.integers(2, 300))
    want = {"seed": seed, "name": draw(_NAME), "optim.lr": float(lr), "optim.epochs": epochs,
            "optim.milestones": sorted(draw(st.sets(st.integers(1, epochs - 1), max_size=3))),
            "distill.options": draw(st.dictionaries(st.text("abtau_", min_size=1, max_size=5), _SCALAR, max_size=3)),
            "runtime.compile": draw(st.sampled_from(["on", "off", "auto"])),
            "distill.btkd.enabled": draw(st.booleans()),
            "runtime.time_limit": draw(st.none() | st.floats(0.01, 1e4))}
    texts = ["seed=" + draw(st.sampled_from(["{}", "0{}", "{:_}", "{:#x}"])).format(seed),  # 0{}: decimal, as written
             f"name='{want['name']}'", f"optim.lr={lr}", f"optim.epochs={epochs}",
             f"optim.milestones={want['optim.milestones']}",
             "distill.options=" + json.dumps(want["distill.options"]),  # JSON is YAML: 1e-05, "yes", null
             f"runtime.compile={want['runtime.compile']}",
             "distill.btkd.enabled=" + draw(st.sampled_from(["yes", "true"] if want["distill.btkd.enabled"]
                                                            else ["no", "false"])),
             f"runtime.time_limit={want['runtime.time_limit']!r}".replace("None", "null")]
    return texts, want


@settings(max_examples=40, deadline=None, derandomize=True)
@given(_overrides())
def test_accepted_overrides_mean_what_they_say_and_round_trip_through_a_run_folder(case):
    import tempfile
    from pathlib import Path

    from btkd.config import config_from_dict, config_to_dict
    from btkd.engine.run_folder import RunFolder, config_text

    texts, want = case
    cfg = load_config(None, texts)
    for key, value in want.items():
        got = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert got == value and type(got) is type(value), (key, got, value)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.yaml").write_text(config_text(config_to_dict(cfg)))
        assert load_config(Path(folder) / "config.yaml") == cfg  # btkd distill runs/x/config.yaml
        assert config_from_dict(RunFolder(Path(folder)).read_config()) == cfg  # --resume
