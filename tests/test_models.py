"""CIFAR model zoo: shapes, exact parameter counts, reference key layout, checkpoint loading, and the wiring
that shapes do not show (feature-map sizes, initialisation, golden forwards)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from btkd._checks import DamagedFileError
from btkd.models import MODELS, build_model, load_checkpoint, register_model
from golden_models import FIXTURE as OUTPUTS_FIXTURE, forward as golden_forward

FIXTURE = Path(__file__).parent / "fixtures" / "model_keys.json"
REFERENCE_KEYS: dict[str, dict[str, list[int]]] = {
    k: v for k, v in json.loads(FIXTURE.read_text()).items() if not k.startswith("_")
}

# Exact trainable-parameter counts at num_classes=100, each cross-checked against a line-by-line reading
# of RepDistiller models/*.py / mdistiller mdistiller/models/cifar/*.py (same modules, same shapes).
# The figures published in the KD literature (CRD / DKD tables) are rounded: resnet8x4 1.23M,
# resnet32x4 7.43M, wrn_40_2 2.26M, wrn_16_2 0.70M, wrn_40_1 0.57M, resnet56 0.86M, resnet20 0.28M,
# resnet110 1.73M, resnet32 0.47M, vgg13 9.46M, vgg8 3.97M, MobileNetV2 0.81M, ShuffleV1 0.95M,
# ShuffleV2 1.36M.
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}

# The CIFAR zoo: every name registered by the six CIFAR family modules (other modules may register
# non-CIFAR models, e.g. single-channel ones, into the same registry).
CIFAR_FAMILIES = {f"btkd.models.{m}" for m in ("resnet", "wrn", "vgg", "mobilenetv2", "shufflenetv1", "shufflenetv2")}
CIFAR_MODELS = sorted(n for n, fn in MODELS.items() if fn.__module__ in CIFAR_FAMILIES)

# One model per family, for the slower layout / precision checks.
FAMILY_REPS = ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_state(keys: dict[str, list[int]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict with the given keys/shapes and random values (BN counters as int64)."""
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(1, 10_000, shape, generator=gen, dtype=torch.long)
        else:
            out[k] = torch.randn(shape, generator=gen)
    return out


def _assert_state_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------- build / forward


@pytest.mark.parametrize("num_classes", [100, 10])
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_every_cifar_model_maps_a_batch_to_logits(name, num_classes, seed):
    model = build_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_train_mode_forward_and_backward(seed):
    model = build_model("resnet8", num_classes=10).train()
    out = model(torch.randn(4, 3, 32, 32))
    out.logsumexp(1).sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_channels_last_matches_contiguous(name, seed):
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 100)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item() + 1e-7)


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_runs_under_autocast(name, seed):
    model = build_model(name, num_classes=10).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------- parameter counts


def test_parameter_table_covers_the_cifar_zoo():
    assert set(PARAM_COUNTS) == set(CIFAR_MODELS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count_matches_reference(name):
    # Also checks that num_classes defaults to 100 for build_model and for the bare builder.
    assert _n_params(build_model(name)) == PARAM_COUNTS[name]
    assert _n_params(MODELS[name]()) == PARAM_COUNTS[name]


# --------------------------------------------------------------------------- reference key layout


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_state_dict_layout_matches_reference(name):
    ours = [(k, list(v.shape)) for k, v in build_model(name).state_dict().items()]
    assert ours == list(REFERENCE_KEYS[name].items())


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_loads_checkpoint_in_published_layout(name, tmp_path):
    gen = torch.Generator().manual_seed(1)
    state = _random_state(REFERENCE_KEYS[name], gen)
    ckpt = {
        "model": state,
        "epoch": 240,
        "best_acc": 79.4,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "params": [0, 1]}]},
    }
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(ckpt, path)
    model = build_model(name)
    assert load_checkpoint(model, path) is model
    _assert_state_equal(model, state)


def _small_state(name: str = "resnet8x4") -> dict[str, torch.Tensor]:
    return _random_state(REFERENCE_KEYS[name], torch.Generator().manual_seed(2))


def test_loads_numpy_scalars_in_checkpoint_without_unsafe_unpickling(tmp_path):
    state = _small_state()
    path = tmp_path / "best.pth"
    torch.save({"model": state, "epoch": np.int64(240), "best_acc": np.float64(79.4), "lr": np.float32(0.05)}, path)
    model = build_model("resnet8x4")
    load_checkpoint(model, path)
    _assert_state_equal(model, state)


class _NotAllowlisted:
    pass


def test_never_falls_back_to_unsafe_unpickling(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _small_state(), "extra": _NotAllowlisted()}, path)
    with pytest.raises(DamagedFileError, match=r"ckpt\.pth: is not a plain tensor checkpoint.*_NotAllowlisted"
                       r".*will not execute code") as err:
        load_checkpoint(build_model("resnet8x4"), path)
    assert "weights_only" not in str(err.value) and "safe_globals" not in str(err.value)


def test_loads_plain_state_dict_and_strips_ddp_and_compile_prefixes(tmp_path):
    state = _small_state()
    plain, ddp = tmp_path / "plain.pth", tmp_path / "ddp.pth"
    torch.save(state, plain)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, ddp)
    compiled = tmp_path / "compiled.pth"  # torch.compile of a DDP model, saved as a training script would
    torch.save({"model_state_dict": {f"_orig_mod.module.{k}": v for k, v in state.items()}}, compiled)
    for path in (plain, ddp, compiled):
        model = build_model("resnet8x4")
        load_checkpoint(model, path)
        _assert_state_equal(model, state)


def test_loads_safetensors(tmp_path):
    state = _small_state("ShuffleV2")
    for fname in ("weights.safetensors", "weights.bin"):  # by suffix, and by sniffing the header
        path = tmp_path / fname
        save_file(state, str(path))
        model = build_model("ShuffleV2")
        load_checkpoint(model, path)
        _assert_state_equal(model, state)


def test_wrong_model_gives_clear_error(tmp_path):
    path = tmp_path / "resnet8x4.pth"
    torch.save({"model": _small_state("resnet8x4"), "epoch": 240, "best_acc": 79.4}, path)
    with pytest.raises(ValueError, match="missing keys") as err:
        load_checkpoint(build_model("resnet32x4"), path)
    msg = str(err.value)
    assert "layer1.1." in msg and "model name" in msg and "num_classes" in msg
    with pytest.raises(ValueError, match="unexpected keys"):
        load_checkpoint(build_model("wrn_40_2"), path)
    # a deeper checkpoint into a shallower model: the examples are layers' weights, not BN step counters
    path = tmp_path / "resnet32x4.safetensors"  # safetensors sorts its keys: bn1.* before conv1.*
    save_file(build_model("resnet32x4").state_dict(), str(path))
    with pytest.raises(ValueError, match=r"unexpected keys \(layer1\.1\.bn1\.bias, ") as err:
        load_checkpoint(build_model("resnet8x4"), path)
    assert "num_batches_tracked, " not in str(err.value).split("unexpected keys")[1].split("...")[0]


def test_a_head_of_no_classes_is_refused():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=f"num_classes must be a positive integer.*got {bad!r}"):
            build_model("resnet8", bad)


def test_wrong_num_classes_gives_clear_error(tmp_path):
    path = tmp_path / "resnet8x4.pth"
    torch.save({"model": _small_state("resnet8x4")}, path)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \[100, 256\] vs model \[10, 256\]") as err:
        load_checkpoint(build_model("resnet8x4", num_classes=10), path)
    assert "num_classes" in str(err.value)


def test_non_state_dict_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 240, "best_acc": 79.4}, path)
    with pytest.raises(ValueError, match="state dict"):
        load_checkpoint(build_model("resnet8"), path)


# --------------------------------------------------------------------------- registry


def test_unknown_name_lists_valid_names_and_suggests_closest():
    with pytest.raises(ValueError) as err:
        build_model("resnet8x5")
    msg = str(err.value)
    assert "Did you mean 'resnet8x4'?" in msg
    assert all(name in msg for name in MODELS)
    with pytest.raises(ValueError, match="Valid names: .*wrn_40_2"):
        build_model("totally-unknown-net")


def test_register_model_refuses_duplicates_but_takes_the_same_definition_again():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet8")(lambda num_classes=100: torch.nn.Linear(1, num_classes))
    try:
        for _ in range(2):  # a notebook cell run twice
            @register_model("test_tiny")
            def tiny(num_classes=100):
                return torch.nn.Linear(1, num_classes)
        assert MODELS["test_tiny"] is tiny
    finally:
        MODELS.pop("test_tiny", None)


# --------------------------------------------------------------------------- ImageNet models

IMAGENET_FIXTURE = Path(__file__).parent / "fixtures" / "imagenet_model_keys.json"
# Published layouts (tests/fixtures/make_imagenet_model_keys.py): torchvision's ResNet weights without
# num_batches_tracked, mdistiller's MobileNetV1 with it.
IMAGENET_KEYS: dict[str, dict[str, list[int]]] = {
    k: v for k, v in json.loads(IMAGENET_FIXTURE.read_text()).items() if not k.startswith("_")
}
# Trainable parameters at 1000 classes: torchvision's published figures (its weights' docs) and, for
# mdistiller's MobileNetV1 (which publishes none), the published count of MobileNet 1.0-224 with
# which its layers agree one for one.
IMAGENET_PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "MobileNetV1": 4_231_976,
}
IMAGENET_MODELS = sorted(IMAGENET_PARAM_COUNTS)


def _layout(model: torch.nn.Module, counters: bool) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()
            if counters or not k.endswith("num_batches_tracked")]


def test_imagenet_models_are_registered():
    assert set(IMAGENET_MODELS) <= set(MODELS) and set(IMAGENET_KEYS) == set(IMAGENET_MODELS)


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_parameter_count_matches_published(name):
    assert _n_params(build_model(name, num_classes=1000)) == IMAGENET_PARAM_COUNTS[name]
    assert _n_params(MODELS[name]()) == IMAGENET_PARAM_COUNTS[name]  # the bare builder is 1000-way
    # the fixture, written from the reference definitions, gives the same count
    fixture = sum(math.prod(s) for k, s in IMAGENET_KEYS[name].items() if k.endswith((".weight", ".bias")))
    assert fixture == IMAGENET_PARAM_COUNTS[name]


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_state_dict_layout_matches_published(name):
    counters = name == "MobileNetV1"  # torchvision's ResNet files predate BN's num_batches_tracked
    assert _layout(build_model(name, num_classes=1000), counters) == list(IMAGENET_KEYS[name].items())


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_model_maps_a_small_batch_to_logits(name, seed):
    model = build_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_imagenet_models_train_mode_backward(seed):
    for name in ("resnet18", "MobileNetV1"):
        model = build_model(name, num_classes=5).train()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_mobilenetv1_pools_like_mdistiller_at_224():
    # mdistiller pools with AvgPool2d(7) on the 7x7 map of a 224-px input; the adaptive pool is the same.
    model = build_model("MobileNetV1", num_classes=10).eval()
    with torch.no_grad():
        feats = model.model[:-1](torch.randn(1, 3, 224, 224))
        assert feats.shape == (1, 1024, 7, 7)
        torch.testing.assert_close(model.model[-1](feats), torch.nn.AvgPool2d(7)(feats))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_loads_torchvision_weights_without_batch_counters(name, tmp_path):
    # torchvision's files are plain state dicts (an OrderedDict) in the pre-0.4.1 BatchNorm layout.
    state = _random_state(IMAGENET_KEYS[name], torch.Generator().manual_seed(3))
    path = tmp_path / f"{name}-0123abcd.pth"
    torch.save(state, path)
    model = build_model(name, num_classes=1000)
    assert load_checkpoint(model, path) is model
    got = model.state_dict()
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    counters = [k for k in got if k.endswith("num_batches_tracked")]
    assert counters and all(got[k].item() == 0 for k in counters)


def test_loads_torchvision_weights_with_batch_counters(tmp_path):
    # A file saved by current PyTorch (e.g. torchvision's resnet50 IMAGENET1K_V2) holds the counters.
    model = build_model("resnet34", num_classes=1000)
    state = _random_state(dict(_layout(model, counters=True)), torch.Generator().manual_seed(4))
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    _assert_state_equal(load_checkpoint(build_model("resnet34", num_classes=1000), path), state)


def test_loads_mdistiller_mobilenetv1_student_checkpoint(tmp_path):
    # mdistiller writes students as {"model": student.state_dict()} (student_best, student_latest).
    state = _random_state(IMAGENET_KEYS["MobileNetV1"], torch.Generator().manual_seed(5))
    path = tmp_path / "student_best"
    torch.save({"model": state}, path)
    _assert_state_equal(load_checkpoint(build_model("MobileNetV1", num_classes=1000), path), state)


def test_imagenet_checkpoint_for_another_model_or_class_count_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_random_state(IMAGENET_KEYS["resnet18"], torch.Generator().manual_seed(6)), path)
    with pytest.raises(ValueError, match=r"missing keys \(layer1\.2\."):
        load_checkpoint(build_model("resnet34", num_classes=1000), path)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \[1000, 512\] vs model \[100, 512\]"):
        load_checkpoint(build_model("resnet18"), path)  # build_model's default is 100 classes
    # a counter is only filled in for a BN layer that the file has: a missing layer stays an error
    state = _random_state(IMAGENET_KEYS["resnet18"], torch.Generator().manual_seed(6))
    del state["bn1.running_mean"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"2 missing keys \(bn1\.running_mean, bn1\.num_batches_tracked\)"):
        load_checkpoint(build_model("resnet18", num_classes=1000), path)


# --------------------------------------------------------------------------- wiring: stage sizes, init, golden forwards

# (module, channels, height) after each stage: the feature maps of the reference forwards (RepDistiller /
# mdistiller: ResNet 32-16-8 px, VGG 32-16-8-4-4, MobileNetV2's stride-2 stem, ShuffleNets 16-8-4; torchvision's
# ResNets 56-56-28-14-7 px at 224).
STAGES = {
    "resnet56": (32, [("layer1", 16, 32), ("layer2", 32, 16), ("layer3", 64, 8)]),
    "resnet8x4": (32, [("layer1", 64, 32), ("layer2", 128, 16), ("layer3", 256, 8)]),
    "wrn_40_2": (32, [("block1", 32, 32), ("block2", 64, 16), ("block3", 128, 8)]),
    "vgg13": (32, [("block0", 64, 32), ("block1", 128, 16), ("block2", 256, 8), ("block3", 512, 4),
                   ("block4", 512, 4)]),
    "MobileNetV2": (32, [("conv1", 16, 16), ("blocks.0", 8, 16), ("blocks.1", 12, 16), ("blocks.2", 16, 8),
                         ("blocks.3", 32, 4), ("blocks.4", 48, 4), ("blocks.5", 80, 2), ("blocks.6", 160, 2),
                         ("conv2", 1280, 2)]),
    "ShuffleV1": (32, [("conv1", 24, 32), ("layer1", 240, 16), ("layer2", 480, 8), ("layer3", 960, 4)]),
    "ShuffleV2": (32, [("conv1", 24, 32), ("layer1", 116, 16), ("layer2", 232, 8), ("layer3", 464, 4),
                       ("conv2", 1024, 4)]),
    "resnet18": (224, [("maxpool", 64, 56), ("layer1", 64, 56), ("layer2", 128, 28), ("layer3", 256, 14),
                       ("layer4", 512, 7)]),
    "resnet50": (224, [("layer1", 256, 56), ("layer2", 512, 28), ("layer3", 1024, 14), ("layer4", 2048, 7)]),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_feature_maps_have_the_reference_sizes(name):
    size, stages = STAGES[name]
    model = build_model(name).eval()
    seen = {}

    def record(key):
        def hook(module, inputs, output):
            seen[key] = output.shape  # returns None: the output goes on unchanged
        return hook

    for module, _, _ in stages:
        model.get_submodule(module).register_forward_hook(record(module))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    assert [(module, seen[module][1], seen[module][2], seen[module][3]) for module, _, _ in stages] == \
        [(module, c, h, h) for module, c, h in stages]


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "resnet18"])
def test_initialisation_is_the_references(name):
    # every conv N(0, sqrt(2 / fan_out)), fan_out = k * k * out_channels (RepDistiller's init of WRN, VGG and
    # MobileNetV2; kaiming_normal fan_out in the ResNets, the same), BN 1 / 0, and VGG's and MobileNetV2's head
    # N(0, 0.01) with zero bias; fan_in would differ wherever a conv changes the width
    torch.manual_seed(0)
    model = build_model(name)
    checked = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 2000:  # enough values for a 10 % check
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert m.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.1)
            checked += 1
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and bool((m.bias == 0).all())
    assert checked >= 3
    if name in ("vgg8", "MobileNetV2"):
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert head.weight.std().item() == pytest.approx(0.01, rel=0.05) and not bool(head.bias.any())


def test_zero_init_residual_zeroes_each_branchs_last_bn(seed):
    for name, last in (("resnet18", "bn2"), ("resnet50", "bn3")):
        model = build_model(name, num_classes=10, zero_init_residual=True)
        blocks = [m for m in model.modules() if hasattr(m, "downsample")]
        assert blocks and all(not bool(getattr(b, last).weight.any()) for b in blocks)
        assert all(bool(b.bn1.weight.all()) for b in blocks)


def test_wrn_dropout_acts_only_in_training(seed):
    model = build_model("wrn_16_1", num_classes=10, drop_rate=0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        assert not torch.equal(model.train()(x), model(x))


GOLDEN_LOGITS = json.loads(OUTPUTS_FIXTURE.read_text())["logits"]


def test_golden_outputs_cover_the_zoo():
    assert set(GOLDEN_LOGITS) == {n for n, fn in MODELS.items() if fn.__module__.startswith("btkd.models.")}


@pytest.mark.parametrize("name", sorted(GOLDEN_LOGITS))
def test_forward_matches_its_golden_output(name):
    # fixed weights and input (tests/golden_models.py): a rewired layer with the same shapes changes the logits
    # by far more than the 1e-3 (of the largest logit) that another CPU's or thread count's sums may differ by
    want = torch.tensor(GOLDEN_LOGITS[name])
    torch.testing.assert_close(golden_forward(name), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
