"""CIFAR model zoo: shapes, exact parameter counts, reference key layout and checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from btkd._checks import DamagedFileError
from btkd.models import MODELS, build_model, load_checkpoint, register_model

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


def test_loads_plain_state_dict_and_strips_ddp_prefix(tmp_path):
    state = _small_state()
    plain, ddp = tmp_path / "plain.pth", tmp_path / "ddp.pth"
    torch.save(state, plain)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, ddp)
    for path in (plain, ddp):
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


def test_register_model_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet8")(lambda num_classes=100: torch.nn.Linear(1, num_classes))
