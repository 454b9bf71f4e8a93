"""The engine on small real runs (CPU): teacher training, distillation with and without BTKD,
repeatable seeds, resume after a kill, checkpoints, run folder contents, clear errors."""

import json

import pytest
import torch

from btkd.config import ConfigError, load_config
from btkd.engine import Grid, Trainer, lr_factor, make_loss
from btkd.engine.checkpoint import load_checkpoint_file, save_atomic
from btkd import BTKD, Distill

TIMING = {"epoch_time", "images_per_s", "wall_time"}

SMALL = ["data.name=synthetic", "data.options={size: 96, num_classes: 5, image_size: 8}", "data.batch_size=16",
         "data.eval_batch_size=40", "optim.lr=0.05", "optim.milestones=[1]", "runtime.progress=false"]


def cfg(tmp_path, *extra):
    return load_config(None, SMALL + [f"output_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    Trainer(load_config(None, SMALL + [f"output_dir={out}", "name=teacher", "model.student=convnet",
                                       "model.student_options={width: 4}",
                                       "distill.method=ce", "optim.epochs=2"])).fit()
    return out / "teacher" / "best.safetensors"


def distill_cfg(tmp_path, teacher_ckpt, *extra):
    return cfg(tmp_path, "model.student=mlp", "model.teacher=convnet",
               "model.teacher_options={width: 4}", f"model.teacher_checkpoint={teacher_ckpt}", "optim.epochs=3", *extra)


def strip(log):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in log]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_teacher_run_folder(teacher_ckpt):
    run = teacher_ckpt.parent
    for name in ("config.yaml", "meta.json", "log.jsonl", "checkpoint.pt", "best.safetensors",
                 "last.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["effective_batch_size"] == 16 and meta["world_size"] == 1 and meta["seed"] == 0
    assert meta["torch_version"] == torch.__version__
    log = read(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]  # epochs done: one convention everywhere
    assert {"loss_ce", "loss_total", "train_acc", "test_acc", "lr", "images_per_s", "best_acc"} <= set(log[0])
    assert [r["lr"] for r in log] == [0.05, pytest.approx(0.005)]  # x0.1 from the milestone (0-based epoch 1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["last_acc"] == log[-1]["test_acc"] and summary["best_acc"] == max(r["test_acc"] for r in log)


@pytest.mark.parametrize("btkd", [False, True])
def test_distillation_logs_every_term(tmp_path, teacher_ckpt, btkd):
    c = distill_cfg(tmp_path, teacher_ckpt, f"distill.btkd.enabled={str(btkd).lower()}", "name=d")
    summary = Trainer(c).fit()
    log = read(tmp_path / "d" / "log.jsonl")
    assert len(log) == 3 and summary["teacher_test_acc"] is not None
    first = log[0]
    assert 0.0 <= first["frac_wrong"] <= 1.0 and "teacher_train_acc" in first
    if btkd:
        assert {"loss_distill_right", "loss_distill_rectified", "beta", "n_rectified"} <= set(first)
        assert [r["beta"] for r in log] == pytest.approx([1.0, 0.75, 0.25])  # cos^2(pi/2 * e/3)
        assert first["n_rectified"] == pytest.approx(first["frac_wrong"] * first["samples"])
    else:
        assert "loss_distill" in first and "beta" not in first


def test_the_epoch_line_in_a_log_file_has_the_lr_the_time_and_what_btkd_works_on(tmp_path, teacher_ckpt):
    # progress on, stderr not a terminal (pytest captures it): one line per epoch instead of a bar
    said = []
    c = distill_cfg(tmp_path, teacher_ckpt, "distill.btkd.enabled=true", "name=d", "runtime.progress=true")
    Trainer(c, echo=said.append).fit()
    log = read(tmp_path / "d" / "log.jsonl")
    lines = [s for s in said if " epoch " in s]
    assert len(lines) == 3
    first, r = lines[0], log[0]
    assert first.startswith("d epoch 1/3: ") and f"test acc {r['test_acc']:.2f}%" in first
    assert f"train acc {r['train_acc']:.2f}%" in first and f"loss {r['loss_total']:.4f}" in first
    assert f"teacher wrong {100 * r['frac_wrong']:.1f}% ({r['n_rectified']:,.0f} rectified)" in first
    assert ", lr 0.05, " in first and ", lr 0.005, " in lines[1]  # the milestone's drop shows
    assert f", {r['epoch_time']:.1f} s, " in first


def test_same_seed_same_log_and_weights(tmp_path, teacher_ckpt):
    a = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=a", "distill.btkd.enabled=true"))
    a.fit()
    b = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=b", "distill.btkd.enabled=true"))
    b.fit()
    assert strip(read(tmp_path / "a" / "log.jsonl")) == strip(read(tmp_path / "b" / "log.jsonl"))
    for (ka, va), (kb, vb) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.equal(va, vb), ka
    c = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=c", "seed=1", "distill.btkd.enabled=true"))
    c.fit()
    assert strip(read(tmp_path / "c" / "log.jsonl")) != strip(read(tmp_path / "a" / "log.jsonl"))


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, teacher_ckpt, monkeypatch):
    full = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=full", "distill.btkd.enabled=true"))
    full.fit()

    killed = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=killed", "distill.btkd.enabled=true"))
    original = Grid.train_epoch

    def dies_in_epoch_3(self, epoch, bar=None):
        if epoch == 2:  # 0-based: the third epoch
            raise KeyboardInterrupt  # the process is killed mid-epoch
        return original(self, epoch, bar)

    monkeypatch.setattr(Grid, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Grid, "train_epoch", original)
    assert len(read(tmp_path / "killed" / "log.jsonl")) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=killed", "distill.btkd.enabled=true"))

    resumed = Trainer.from_run_dir(tmp_path / "killed")
    assert resumed.start_epoch == 2
    resumed.fit()
    assert strip(read(tmp_path / "killed" / "log.jsonl")) == strip(read(tmp_path / "full" / "log.jsonl"))
    for (k, va), (_, vb) in zip(full.student.state_dict().items(), resumed.student.state_dict().items()):
        assert torch.equal(va, vb), k


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path, teacher_ckpt):
    state = load_checkpoint_file(teacher_ckpt.parent / "checkpoint.pt")  # weights_only=True inside
    assert state["format"] == "btkd-checkpoint-2" and state["epoch"] == 2
    assert list(state["members"]) == ["teacher"] and state["members"]["teacher"]["best_epoch"] in (1, 2)
    path = tmp_path / "x.pt"
    save_atomic({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_atomic({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2)), "old checkpoint must survive"
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"], "no temporary file left behind"


def test_lr_schedules():
    c = load_config(None, ["optim.epochs=240"])
    assert [lr_factor(c, e) for e in (0, 149, 150, 180, 210, 239)] == pytest.approx([1, 1, 0.1, 0.01, 0.001, 0.001])
    c = load_config(None, ["optim.epochs=10", "optim.lr_schedule=cosine", "optim.warmup_epochs=2"])
    assert [lr_factor(c, e) for e in (0, 1, 5)] == pytest.approx([0.5, 1.0, 0.5])


def test_make_loss_keeps_the_host_recipe():
    kd = make_loss(load_config(None, ["distill.method=kd"]))
    assert isinstance(kd, Distill) and (kd.ce_weight, kd.kd_weight) == (0.1, 0.9)
    b = make_loss(load_config("cifar100/dkd_btkd/res32x4_res8x4"))
    assert isinstance(b, BTKD) and b.host.beta == 8.0 and b.balancer.ce_weight == 1.0
    assert make_loss(load_config(None, ["distill.method=ce"])) is None
    with pytest.raises(ConfigError, match="distill.btkd"):
        make_loss(load_config(None, ["distill.method=dkd", "distill.btkd.enabled=true", "distill.btkd.rectify=reweight"]))
    with pytest.raises(ConfigError, match="distill.method / distill.options"):
        make_loss(load_config(None, ["distill.method=kd", "distill.options={alpha: 1}"]))


def test_an_unknown_model_name_is_a_config_error_naming_the_key(tmp_path):
    """Trainer's docstring: a config that cannot run is a ConfigError; an unknown model name was the
    zoo's plain ValueError, raised while building, that named no config key."""
    with pytest.raises(ConfigError, match=r"model.student='resnet9' is not a model btkd builds. Did you mean "
                       "'resnet8'"):
        Trainer(cfg(tmp_path, "model.student=resnet9", "distill.method=ce"))
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"")  # the name is refused before the file is read
    with pytest.raises(ConfigError, match=r"model.teacher='convnett' is not a model btkd builds"):
        Trainer(cfg(tmp_path, "model.student=mlp", "model.teacher=convnett", f"model.teacher_checkpoint={weights}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.safetensors"]  # no run folder left


def test_clear_errors(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="data.options: dataset 'synthetic' has no option 'sizes'; its options "
                       "are size, num_classes, image_size, channels, seed, prototypes. Did you mean 'size'"):
        Trainer(cfg(tmp_path, "data.options={sizes: 64}", "distill.method=ce"))
    with pytest.raises(ConfigError, match="dataset 'digits' has no option 'verify'; its options are none"):
        Trainer(load_config(None, [f"output_dir={tmp_path}", "data.name=digits", "data.options={verify: true}",
                                   "distill.method=ce", "model.student=mlp"]))
    # an override of the dataset drops the config's options of the old one, as one of the model does
    assert load_config({"data": {"name": "synthetic", "options": {"size": 64}}}, ["data.name=digits"]).data.options == {}
    with pytest.raises(ConfigError, match="needs model.teacher_checkpoint"):
        Trainer(cfg(tmp_path, "model.student=mlp", "model.teacher=convnet"))
    with pytest.raises(FileNotFoundError, match="no file at"):
        Trainer(cfg(tmp_path, "model.student=mlp", "model.teacher=convnet", "model.teacher_checkpoint=nope.pt"))
    with pytest.raises(ConfigError, match="needs a teacher"):
        Trainer(cfg(tmp_path, "model.student=convnet", "distill.method=kd"))
    with pytest.raises(ConfigError, match=r"model.teacher='convnet' with model.teacher_options=\{'width': 8\} does "
                       r"not fit .* does not fit .*Set model.teacher \(and model.teacher_options"):
        Trainer(distill_cfg(tmp_path, teacher_ckpt, "model.teacher_options={width: 8}"))  # a checkpoint of another shape
    # a changed model.teacher keeps the config's checkpoint: the error names the model it was trained as
    with pytest.raises(ConfigError, match="model.teacher='mlp' does not fit .* missing keys.* was trained as "
                       r"'convnet' \(its run's config.yaml\): set model.teacher=convnet, or point "
                       "model.teacher_checkpoint=... at a mlp teacher's weights"):
        Trainer(distill_cfg(tmp_path, teacher_ckpt, "model.teacher=mlp", "model.teacher_options=null"))
    with pytest.raises(ConfigError, match=r"model.student_options: model 'mlp' has no option width; its options are "
                       r"hidden, in_channels \(`model.student_options=null` clears"):
        Trainer(cfg(tmp_path, "model.student=mlp", "model.student_options={width: 4}", "distill.method=ce"))
    with pytest.raises(ConfigError, match=r"model.student='resnet8' takes 3-channel \(RGB\) images, and this data has 1 "
                       r"channel: choose a model that takes its channel count \(convnet, mlp\)"):
        Trainer(cfg(tmp_path, "model.student=resnet8", "data.options.channels=1", "distill.method=ce"))
    # a channel count that disagrees with the data's failed in the first convolution, naming no key
    with pytest.raises(ConfigError, match=r"model.student_options.in_channels=3, but the data's images have 1 channel: "
                       "drop the option"):
        Trainer(cfg(tmp_path, "model.student=convnet", "model.student_options={in_channels: 3}",
                    "data.options.channels=1", "distill.method=ce"))
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(cfg(tmp_path, "name=never"), resume=True)


def c_args(tmp_path):
    return ["data.name=imagefolder", f"data.root={tmp_path / 'tree'}", "data.image_size=16", "data.workers=0",
            "data.batch_size=4", "data.eval_batch_size=4", "optim.epochs=2", "optim.milestones=[1]",
            "runtime.progress=false", f"output_dir={tmp_path}"]


def test_imagefolder_tree_trains_through_a_dataloader(tmp_path):
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 6, "val": 2}, size=(20, 24))
    c = load_config(None, [*c_args(tmp_path), "name=tree", "model.student=convnet", "model.student_options={width: 4}",
                           "distill.method=ce"])
    trainer = Trainer(c)
    assert trainer.num_classes == 2 and trainer.train_size == 12 and trainer.test_size == 4
    summary = trainer.fit()
    log = read(tmp_path / "tree" / "log.jsonl")
    assert [r["samples"] for r in log] == [12, 12] and summary["last_acc"] is not None
    with pytest.raises(ConfigError, match="needs data.root"):
        Trainer(load_config(None, ["data.name=imagefolder", f"output_dir={tmp_path}", "name=x", "distill.method=ce"]))
    # a two-view host on the tree: the workers make the strong view, MLKD trains from the teacher above
    teacher = tmp_path / "tree" / "last.safetensors"
    mlkd = Trainer(load_config(None, [*c_args(tmp_path), "name=tree_mlkd", "model.student=mlp",
                                      "model.teacher=convnet", "model.teacher_options={width: 4}",
                                      f"model.teacher_checkpoint={teacher}", "distill.method=mlkd",
                                      "distill.options={authors_code: true}", "distill.btkd.enabled=true"]))
    assert mlkd.grid.members[0].loss_fn.host.authors_code  # the YAML option reaches the host
    (weak, strong), y = next(iter(mlkd.grid.train_loaders[0]))
    assert weak.shape == strong.shape == (4, 3, 16, 16) and not torch.equal(weak, strong) and y.shape == (4,)
    mlkd.fit()
    log = read(tmp_path / "tree_mlkd" / "log.jsonl")
    assert len(log) == 2 and all(r["n_rectified"] >= 0 and r["loss_total"] > 0 for r in log)


def test_cuda_graph_on_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="runtime.cuda_graph=on needs one CUDA GPU"):
        Trainer(cfg(tmp_path, "model.student=convnet", "distill.method=ce", "runtime.cuda_graph=on"))
    # auto quietly stays eager on a CPU
    assert not Trainer(cfg(tmp_path, "name=auto", "model.student=convnet", "distill.method=ce")).cuda_graph


def test_best_weights_are_written_after_the_checkpoint_and_repaired_on_resume(tmp_path, teacher_ckpt, monkeypatch):
    """A kill between the checkpoint that records a new best epoch and the best file's write leaves the
    file behind; the resume writes it from the checkpoint's weights, which are that epoch's."""
    from btkd.engine import grid as grid_mod
    from btkd.engine.checkpoint import weights_epoch
    from safetensors.torch import load_file

    trainer = Trainer(distill_cfg(tmp_path, teacher_ckpt, "name=b", "optim.epochs=2"))
    real_export = grid_mod.export_weights
    calls = []

    def killed_before_best(model, path, half=False, epoch=None):
        calls.append((path.name, (tmp_path / "b" / "checkpoint.pt").is_file()))
        raise KeyboardInterrupt  # the process dies as it starts writing best.safetensors

    monkeypatch.setattr(grid_mod, "export_weights", killed_before_best)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert calls == [("best.safetensors", True)]  # after the checkpoint, not before
    best = tmp_path / "b" / "best.safetensors"
    assert not best.exists()
    monkeypatch.setattr(grid_mod, "export_weights", real_export)
    resumed = Trainer.from_run_dir(tmp_path / "b")
    assert resumed.start_epoch == 1 and weights_epoch(best) == 1
    saved = load_checkpoint_file(tmp_path / "b" / "checkpoint.pt")["members"]
    student = next(iter(saved.values()))["student"]
    for k, v in load_file(str(best)).items():
        assert torch.equal(v, student[k]), k
    resumed.fit()
    assert weights_epoch(tmp_path / "b" / "last.safetensors") == 2
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert weights_epoch(best) == summary["best_epoch"]


def test_meta_records_whether_the_teachers_bn_was_folded_not_whether_it_was_asked(tmp_path, teacher_ckpt):
    import contextlib

    from safetensors.torch import save_file

    from btkd.models import build_model

    torch.manual_seed(0)
    vgg = tmp_path / "vgg8.safetensors"  # VGG cannot be traced by torch.fx: folding is skipped, with a warning
    save_file({k: v.contiguous() for k, v in build_model("vgg8", num_classes=5).state_dict().items()}, str(vgg))
    one = ["optim.epochs=1", "optim.milestones=[]"]
    runs = [("convnet", distill_cfg(tmp_path, teacher_ckpt, "name=conv", *one, "runtime.fold_teacher_bn=on"), True),
            ("vgg8", cfg(tmp_path, "name=vgg", *one, "runtime.fold_teacher_bn=on", "model.student=mlp",
                         "model.teacher=vgg8", f"model.teacher_checkpoint={vgg}", "distill.method=kd",
                         "data.options={size: 32, num_classes: 5, image_size: 32}"), False),
            ("default on a CPU", distill_cfg(tmp_path, teacher_ckpt, "name=auto", *one), False)]
    for what, c, folded in runs:
        with pytest.warns(UserWarning, match="folding skipped") if what == "vgg8" else contextlib.nullcontext():
            Trainer(c, echo=lambda *_: None).fit()
        assert json.loads((tmp_path / c.name / "meta.json").read_text())["teacher_bn_folded"] is folded, what


def test_the_teacher_accuracy_is_measured_in_the_forward_that_decides_the_split(tmp_path, teacher_ckpt):
    # runtime.teacher_precision=fp32 under bf16 students (CPU autocast here, a GPU's default): the reported
    # teacher accuracy (log line, meta.json, summary, bench results) is the fp32 forward's, as is the split
    from btkd.engine.evaluate import eval_result, eval_sums

    def spied(trainer):
        seen, teacher = [], trainer.teacher
        real = teacher.forward

        def forward(x):
            out = real(x)
            seen.append(out.dtype)
            return out

        teacher.forward = forward
        return seen

    said = []
    c = distill_cfg(tmp_path, teacher_ckpt, "name=tp", "optim.epochs=1", "optim.milestones=[]",
                    "runtime.precision=bf16", "runtime.teacher_precision=fp32")
    trainer = Trainer(c, echo=said.append)
    seen = spied(trainer)
    summary = trainer.fit()
    assert seen and set(seen) == {torch.float32}, "every teacher forward, the test set's too, in fp32"
    fp32 = eval_result(eval_sums(trainer.teacher, trainer.test_loader))["acc"]
    meta = json.loads((tmp_path / "tp" / "meta.json").read_text())
    assert summary["teacher_test_acc"] == meta["teacher_test_acc"] == fp32 and meta["teacher_precision"] == "fp32"
    assert any(line.startswith("teacher convnet") for line in said)
    # a resume that trains with another teacher forward measures it again, in that forward
    said.clear()
    trainer = Trainer.from_run_dir(tmp_path / "tp", ["optim.epochs=2", "runtime.teacher_precision=same"],
                                   echo=said.append)
    seen = spied(trainer)
    trainer.fit()
    assert seen and set(seen) == {torch.bfloat16}
    assert any(line.startswith("teacher convnet") for line in said), "measured again"
    meta = json.loads((tmp_path / "tp" / "meta.json").read_text())
    assert meta["teacher_precision"] == "bf16"  # as runtime.teacher_precision=bf16 names it
    # ... and one that keeps it does not
    said.clear()
    Trainer.from_run_dir(tmp_path / "tp", ["optim.epochs=3"], echo=said.append).fit()
    assert not any(line.startswith("teacher convnet") for line in said)


def test_a_student_with_lazy_layers_takes_its_shapes_from_the_data(tmp_path):
    from torch import nn

    from btkd.models import MODELS, register_model

    @register_model("test_lazy")
    def lazy(num_classes=100, **options):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes))

    try:
        runs = [Trainer(cfg(tmp_path, "model.student=test_lazy", "distill.method=ce", "optim.epochs=1",
                            "optim.milestones=[]", f"name=lazy{i}"), echo=lambda *_: None) for i in range(2)]
        first = runs[0].student[1].weight
        assert first.shape == (16, 3 * 8 * 8)
        torch.testing.assert_close(first, runs[1].student[1].weight)  # seeded: students of one seed pair up
        runs[0].fit()
        assert (tmp_path / "lazy0" / "last.safetensors").is_file()
    finally:
        MODELS.pop("test_lazy", None)


def test_evaluation_waits_for_the_device_once_not_per_batch():
    # eval_sums keeps its sums on the device for one read at the end; each batch's count was made by
    # torch.tensor(n, device=...), a blocking copy from the host: on a GPU a wait at every test batch.
    from host_syncs import HostSyncs

    from btkd.data import ResidentLoader
    from btkd.engine.evaluate import eval_result, eval_sums

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (90, 3, 4, 4), dtype=torch.uint8, generator=g), torch.arange(90) % 5
    loader = ResidentLoader(images, labels, 40, (0.5,) * 3, (0.25,) * 3, train=False)  # 3 batches, the last of 10
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    with HostSyncs() as syncs:
        stats = eval_sums(model, loader)
    assert syncs.events == []
    assert stats.dtype == torch.float64 and eval_result(stats)["n"] == 90
