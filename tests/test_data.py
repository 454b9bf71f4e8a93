"""The data layer: every on-disk format round-trips from small files written here, and the
resident loader's crop/flip/normalise/order match a per-sample reference."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from btkd._checks import DamagedFileError
from btkd.data import DATASETS, ResidentLoader, Split, load_split, verify_checksums
from btkd.data import fashion_mnist as fm_mod
from btkd.data.cifar import CIFAR100_MEAN, CIFAR100_STD, detect_layout, restricted_load
from btkd.data.gpu import crop_flip

REAL_CIFAR100 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar100"


def _nhwc(rng, n, h=32, w=32, c=3):
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_unknown_name():
    assert set(DATASETS) == {"cifar100", "cifar10", "fashion_mnist", "digits", "synthetic"}
    with pytest.raises(ValueError, match="cifar100.*cifar10.*fashion_mnist.*digits.*synthetic"):
        load_split("imagenet", None, "train")
    with pytest.raises(ValueError, match="split"):
        load_split("synthetic", None, "val")


def test_synthetic_is_seeded_and_sized():
    a = load_split("synthetic", None, "train", size=20, num_classes=7, image_size=12, seed=3)
    b = load_split("synthetic", None, "train", size=20, num_classes=7, image_size=12, seed=3)
    t = load_split("synthetic", None, "test", size=20, num_classes=7, image_size=12, seed=3)
    assert a.images.shape == (20, 3, 12, 12) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and int(a.labels.max()) < 7 and a.num_classes == 7
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, t.images)


def test_split_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]), 3, (0.5,), (0.5,), "x")


def test_split_needs_a_whole_number_of_at_least_two_classes():
    # One class trained to a meaningless 100 %; num_classes=10.0 passed here and failed inside the model.
    x, y = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 0])
    for bad in (1, 0, 10.0, True, "10"):
        with pytest.raises(ValueError, match=rf"mine: num_classes must be a whole number >= 2 .*got {bad!r}"):
            Split(x, y, bad, (0.5,), (0.5,), "mine")
    split = Split(x, y, np.int64(10), (0.5,), (0.5,), "mine")  # e.g. y.max() + 1 from numpy
    assert split.num_classes == 10 and type(split.num_classes) is int
    with pytest.raises(ValueError, match=r"synthetic: num_classes must be an integer >= 2, got 1"):
        load_split("synthetic", None, "train", size=8, num_classes=1)


def _mine(monkeypatch, make, *overrides):
    """build_data on a registered dataset ``mine`` whose splits ``make(split)`` gives."""
    from btkd.config import load_config
    from btkd.engine.build import build_data, setup_runtime

    monkeypatch.setitem(DATASETS, "mine", lambda root, split: make(split))
    cfg = load_config(None, ["data.name=mine", "runtime.device=cpu", "data.batch_size=2", *overrides])
    return build_data(cfg, setup_runtime(cfg))


def _split(labels, num_classes=4, shape=(3, 4, 4)):
    labels = torch.as_tensor(labels, dtype=torch.int64)
    return Split(torch.zeros(len(labels), *shape, dtype=torch.uint8), labels, num_classes, (0.5,) * shape[0],
                 (0.25,) * shape[0], "mine")


def test_build_data_refuses_splits_that_disagree_or_a_training_split_of_one_class(monkeypatch):
    # Each was accepted: a model trained on one class (a meaningless accuracy), test labels beyond the
    # model's classes (a crash in the loss; on a GPU an opaque assert), test images of another size.
    from btkd.config import ConfigError

    every = [0, 1, 2, 3] * 4
    with pytest.raises(ConfigError, match=r"training split of 'mine' holds images of 1 class only \(of 4\)"):
        _mine(monkeypatch, lambda split: _split([2] * 16 if split == "train" else every))
    with pytest.raises(ConfigError, match=r"'mine': its train and test splits disagree: 4 vs 8 classes"):
        _mine(monkeypatch, lambda split: _split(every, 4 if split == "train" else 8))
    with pytest.raises(ConfigError, match=r"disagree: .*images \(3, 4, 4\) vs \(1, 4, 4\)"):
        _mine(monkeypatch, lambda split: _split(every, shape=(3, 4, 4) if split == "train" else (1, 4, 4)))
    with pytest.raises(ConfigError, match=r"data.train_subset=1 leaves training images of 1 class only \(of 4\).*"
                       r"raise data.train_subset to at least the number of classes \(4\)"):
        _mine(monkeypatch, lambda split: _split(every), "data.train_subset=1", "data.batch_size=1")
    assert _mine(monkeypatch, lambda split: _split(every)).num_classes == 4


def test_build_data_refuses_test_images_of_classes_never_trained_on_and_warns_of_some(monkeypatch):
    # A loader that splits class-sorted data by position trains on some classes and tests on others:
    # 0 % by construction, silently.
    from btkd.config import ConfigError

    with pytest.raises(ConfigError, match=r"mine: all 8 test images are of classes with no training image \(2 "
                       r"classes: 2, 3\).*at most 0.0 % accuracy.*check the loader of 'mine'"):
        _mine(monkeypatch, lambda split: _split([0, 1] * 4 if split == "train" else [2, 3] * 4))
    # a train subset of fewer images than classes leaves some out: said, with the ceiling it sets
    with pytest.warns(UserWarning, match=r"mine: 4 of the 16 test images are of classes with no training image \(1 "
                      r"class: \d\).*at most 75.0 %.*raise data.train_subset"):
        _mine(monkeypatch, lambda split: _split([0, 1, 2, 3] * 4), "data.train_subset=3")
    # the built-in synthetic data draws its labels at random: the fix is a larger split, not "the loader"
    from btkd.config import load_config
    from btkd.engine.build import build_data, setup_runtime

    cfg = load_config({"data": {"name": "synthetic", "batch_size": 2, "options": {"size": 6, "num_classes": 10}},
                       "runtime": {"device": "cpu"}})
    with pytest.warns(UserWarning, match=r"synthetic: \d+ of the 6 test images .*raise data.options.size well above "
                      r"data.options.num_classes \(10\)"):
        build_data(cfg, setup_runtime(cfg))


# ---------------------------------------------------------------------------------------------
# Class names


def test_cifar100_names_are_its_fine_labels_in_label_order():
    from btkd.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

    # the meta file's fine_label_names are alphabetical: sorted, one per class, none twice
    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    known = {0: "apple", 1: "aquarium_fish", 9: "bottle", 41: "lawn_mower", 47: "maple_tree", 52: "oak_tree",
             58: "pickup_truck", 83: "sweet_pepper", 99: "worm"}
    assert {i: CIFAR100_CLASSES[i] for i in known} == known
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_the_loaders_name_their_classes(tmp_path):
    from btkd.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

    _write_shards(tmp_path / "c100", np.random.default_rng(0))
    s = load_split("cifar100", tmp_path / "c100", "test")
    assert s.classes == CIFAR100_CLASSES and s.classes[47] == "maple_tree"
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "test.npz", x=_nhwc(rng, 4), y=np.array([0, 1, 8, 9]))
    assert load_split("cifar10", tmp_path, "test").classes == CIFAR10_CLASSES
    (tmp_path / "fm").mkdir()
    _write_idx(tmp_path / "fm", "test", np.zeros((2, 28, 28), np.uint8), np.array([0, 9], np.uint8), True)
    assert load_split("fashion_mnist", tmp_path / "fm", "test").classes == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert load_split("synthetic", None, "test", size=4).classes is None  # random classes: indices
    from btkd.data.digits import DIGITS_CLASSES

    assert DIGITS_CLASSES == tuple("0123456789")


def test_split_class_names_are_one_string_per_class_and_optional():
    from btkd.data.subset import take_subset

    x, y = torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 0])
    assert Split(x, y, 3, (0.5,), (0.5,), "mine").classes is None  # a loader of old keeps working
    named = Split(x, y, 3, (0.5,), (0.5,), "mine", classes=["ant", "bee", "cat"])
    assert named.classes == ("ant", "bee", "cat")
    assert take_subset(named, 3, 0)[0].classes == ("ant", "bee", "cat")
    with pytest.raises(ValueError, match=r"mine: 2 class names for 3 classes"):
        Split(x, y, 3, (0.5,), (0.5,), "mine", classes=("ant", "bee"))
    for bad, shown in (("abc", "'abc'"), (["ant", 2, "cat"], "2"), (["ant", "", "cat"], "''")):
        with pytest.raises(ValueError, match=rf"mine: classes must be a list or tuple of non-empty strings.*got {shown}"):
            Split(x, y, 3, (0.5,), (0.5,), "mine", classes=bad)


def test_build_data_carries_the_class_names_a_loader_gives(monkeypatch):
    from btkd.config import ConfigError

    every = [0, 1, 2, 3] * 4
    names = ("ant", "bee", "cat", "dog")

    def named(labels, classes=names):
        return Split(_split(labels).images, torch.as_tensor(labels), 4, (0.5,) * 3, (0.25,) * 3, "mine",
                     classes=classes)

    assert _mine(monkeypatch, lambda split: named(every)).classes == list(names)
    assert _mine(monkeypatch, lambda split: _split(every)).classes is None  # no names: indices
    with pytest.raises(ConfigError, match=r"'mine': its train and test splits name their classes differently"):
        _mine(monkeypatch, lambda split: named(every, names if split == "train" else names[::-1]))
    # a warning of unseen test classes names them
    with pytest.warns(UserWarning, match=r"\(1 class: (ant|bee|cat|dog)\)"):
        _mine(monkeypatch, lambda split: named(every), "data.train_subset=3")


# ---------------------------------------------------------------------------------------------
# CIFAR: uint8 shards


def _write_shards(root: Path, rng, sizes=(3, 2, 4)):
    """Shards named train-0, train-1, train-10 (numeric order differs from text order)."""
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for num, n in zip((0, 1, 10), sizes):
        x, y = _nhwc(rng, n), rng.integers(0, 100, n).astype(np.int64)
        np.savez_compressed(root / f"train-{num}.npz", x=x, y=y)
        xs.append(x), ys.append(y)
    xt, yt = _nhwc(rng, 5), rng.integers(0, 100, 5).astype(np.int64)
    np.savez_compressed(root / "test.npz", x=xt, y=yt)
    return np.concatenate(xs), np.concatenate(ys), xt, yt


def _write_sums(root: Path):
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(root.glob("*.npz"))]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_shards_round_trip_in_numeric_order(tmp_path):
    x, y, xt, yt = _write_shards(tmp_path, np.random.default_rng(0))
    tr = load_split("cifar100", tmp_path, "train")
    assert tr.images.shape == (9, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.labels.dtype == torch.int64 and tr.images.is_contiguous()
    assert np.array_equal(tr.images.permute(0, 2, 3, 1).numpy(), x)  # NHWC -> NCHW, train-0, 1, 10
    assert np.array_equal(tr.labels.numpy(), y)
    assert (tr.num_classes, tr.mean, tr.std, tr.name) == (100, CIFAR100_MEAN, CIFAR100_STD, "cifar100")
    te = load_split("cifar100", tmp_path, "test")
    assert np.array_equal(te.images.permute(0, 2, 3, 1).numpy(), xt) and np.array_equal(te.labels.numpy(), yt)
    assert int(te.images[1, 2, 5, 7]) == int(xt[1, 5, 7, 2])


def test_shards_missing_files_say_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither uint8 shards"):
        load_split("cifar100", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split("cifar100", tmp_path / "nope", "test")
    _write_shards(tmp_path, np.random.default_rng(0))
    (tmp_path / "test.npz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"test\.npz in {tmp_path}.*tar xzf"):
        load_split("cifar100", tmp_path, "test")
    for p in tmp_path.glob("train-*.npz"):
        p.unlink()
    np.savez_compressed(tmp_path / "test.npz", x=_nhwc(np.random.default_rng(1), 1), y=np.zeros(1, np.int64))
    with pytest.raises(FileNotFoundError, match=r"train-0\.npz"):
        load_split("cifar100", tmp_path, "train")


def test_cifar10_files_given_as_cifar100_are_refused(tmp_path):
    # CIFAR-10's labels (0..9) lie in CIFAR-100's range: its shards trained a 100-way model on 10 classes.
    rng = np.random.default_rng(0)
    for name, n in (("train-0", 120), ("test", 100)):
        np.savez_compressed(tmp_path / f"{name}.npz", x=_nhwc(rng, n), y=rng.integers(0, 10, n).astype(np.int64))
    for split, n in (("train", 120), ("test", 100)):
        with pytest.raises(ValueError, match=rf"cifar100: all {n} {split} labels in .* lie in 0..9, as CIFAR-10's do.*"
                           "data.name=cifar10"):
            load_split("cifar100", tmp_path, split)
        assert len(load_split("cifar10", tmp_path, split)) == n


def test_shard_with_wrong_contents_is_rejected(tmp_path):
    np.savez_compressed(tmp_path / "test.npz", x=np.zeros((2, 32, 32, 3), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="uint8"):
        load_split("cifar100", tmp_path, "test")
    np.savez_compressed(tmp_path / "test.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="'x' and 'y'"):
        load_split("cifar100", tmp_path, "test")


def test_checksums(tmp_path):
    _write_shards(tmp_path, np.random.default_rng(0))
    assert verify_checksums(tmp_path) == []  # no SHA256SUMS: nothing to check
    with pytest.raises(FileNotFoundError, match="SHA256SUMS"):
        verify_checksums(tmp_path, required=True)
    _write_sums(tmp_path)
    assert verify_checksums(tmp_path) == ["test.npz", "train-0.npz", "train-1.npz", "train-10.npz"]
    load_split("cifar100", tmp_path, "test", verify=True)
    np.savez_compressed(tmp_path / "train-1.npz", x=_nhwc(np.random.default_rng(9), 2), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="checksum mismatch.*train-1.npz"):
        verify_checksums(tmp_path)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_split("cifar100", tmp_path, "test", verify=True)
    load_split("cifar100", tmp_path, "test")  # verification is opt-in


# ---------------------------------------------------------------------------------------------
# CIFAR: torchvision pickles


def _cifar_batch(rng, n, label_key):
    """A dict shaped like the official batches: rows of 3072 bytes, R plane then G then B."""
    return {b"batch_label": b"testing batch", label_key: rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar100_pickles(tmp_path, protocol, point_at):
    rng = np.random.default_rng(protocol)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batches = {}
    for name, n in (("train", 6), ("test", 4)):
        batches[name] = _cifar_batch(rng, n, b"fine_labels")
        batches[name][b"coarse_labels"] = [0] * n
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    root = tmp_path if point_at == "parent" else folder
    assert detect_layout(root, "cifar100") == ("pickle", folder)
    for name in ("train", "test"):
        s = load_split("cifar100", root, name)
        d = batches[name]
        assert s.images.shape == (len(d[b"data"]), 3, 32, 32) and s.images.dtype == torch.uint8
        assert np.array_equal(s.images.numpy(), d[b"data"].reshape(-1, 3, 32, 32))
        assert s.labels.tolist() == d[b"fine_labels"]
        # pixel (row 1, col 2) of the green plane is byte 1024 + 1 * 32 + 2 of the row
        assert int(s.images[0, 1, 1, 2]) == int(d[b"data"][0, 1024 + 34])


def test_cifar10_pickles_and_missing_batch(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(rng, 2, b"labels") for _ in range(5)]
    for i, d in enumerate(batches, 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(d, f, protocol=2)
    with pytest.raises(FileNotFoundError, match=rf"test_batch in {folder}"):
        load_split("cifar10", tmp_path, "test")
    s = load_split("cifar10", folder, "train")
    assert s.images.shape == (10, 3, 32, 32) and s.num_classes == 10
    assert s.labels.tolist() == sum((d[b"labels"] for d in batches), [])
    assert np.array_equal(s.images[8:].numpy(), batches[4][b"data"].reshape(-1, 3, 32, 32))
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_split("cifar10", tmp_path, "train")


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """Protocol-2 bytes laid out as Python 2's cPickle wrote the official batches: strings as
    BINSTRING (bytes under encoding="bytes"), the array rebuilt via numpy.core.multiarray."""
    def s(b):
        return b"T" + struct.pack("<i", len(b)) + b

    def i(v):
        return b"M" + struct.pack("<H", v)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R(" + i(3) + s(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R("
             + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"data") + array + s(b"fine_labels") + b"]("
            + b"".join(i(v) for v in labels) + b"eu.")


def test_python2_style_pickle_loads(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    (folder / "test").write_bytes(_py2_pickle(data, [7, 3]))
    s = load_split("cifar100", tmp_path, "test")
    assert np.array_equal(s.images.numpy(), data.reshape(2, 3, 32, 32)) and s.labels.tolist() == [7, 3]


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(f"touch '{marker}'"), b"fine_labels": [0]}
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(DamagedFileError, match=r"cifar-100-python/test: .*refusing to unpickle global .*system"):
        load_split("cifar100", tmp_path, "test")
    with pytest.raises(pickle.UnpicklingError):
        restricted_load(folder / "train")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST IDX


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx(root: Path, split: str, x: np.ndarray, y: np.ndarray, gz: bool = True):
    prefix = "train" if split == "train" else "t10k"
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
        data = _idx(arr)
        if gz:
            with gzip.open(root / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (root / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx(tmp_path, "test", x, y, gz)
    s = load_split("fashion_mnist", tmp_path, "test")
    assert s.images.shape == (7, 1, 28, 28) and s.images.dtype == torch.uint8
    assert np.array_equal(s.images[:, 0].numpy(), x) and s.labels.tolist() == y.tolist()
    assert s.labels.dtype == torch.int64 and s.num_classes == 10 and len(s.mean) == 1
    with pytest.raises(FileNotFoundError, match=rf"train-images-idx3-ubyte\.gz.*{tmp_path}.*dataset-fashion-mnist"):
        load_split("fashion_mnist", tmp_path, "train")


def test_fashion_mnist_torchvision_raw_folder_and_missing_labels(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    x = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    _write_idx(raw, "train", x, np.array([3, 9], np.uint8))
    assert load_split("fashion_mnist", tmp_path, "train").labels.tolist() == [3, 9]
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\.gz"):
        load_split("fashion_mnist", tmp_path, "train")


def test_idx_header_is_validated():
    good = _idx(np.zeros((2, 28, 28), np.uint8))
    assert fm_mod.parse_idx(good).shape == (2, 28, 28)
    with pytest.raises(ValueError, match="magic"):
        fm_mod.parse_idx(b"\x1f\x8b" + good[2:])
    with pytest.raises(ValueError, match="type code"):
        fm_mod.parse_idx(good[:2] + b"\x42" + good[3:])
    with pytest.raises(ValueError, match="need 1568 bytes"):
        fm_mod.parse_idx(good[:-1])
    with pytest.raises(ValueError, match="too short"):
        fm_mod.parse_idx(b"\x00\x00")


def test_fashion_mnist_wrong_image_size_is_rejected(tmp_path):
    _write_idx(tmp_path, "test", np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_split("fashion_mnist", tmp_path, "test")


@pytest.mark.skipif(not os.path.isdir(fm_mod.DEBIAN_ROOT), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    s = load_split("fashion_mnist", fm_mod.DEBIAN_ROOT, "test")
    assert s.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits_fixed_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    tr, te = load_split("digits", None, "train"), load_split("digits", None, "test")
    assert tr.images.shape == (1437, 1, 8, 8) and te.images.shape == (360, 1, 8, 8)
    assert int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    # Together the two splits are exactly the 1797 digits: per class counts add up.
    both = torch.bincount(torch.cat([tr.labels, te.labels]), minlength=10)
    assert both.tolist() == np.bincount(load_digits().target, minlength=10).tolist()
    assert torch.equal(load_split("digits", None, "test").images, te.images)
    assert abs(tr.images.float().div(255).mean().item() - tr.mean[0]) < 1e-3


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _write_tree(root: Path):
    from PIL import Image

    colours = {"zebra": (250, 10, 10), "ant": (10, 200, 30)}  # folder order is not class order
    for split in ("train", "val"):
        for cls, rgb in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i, size in enumerate([(40, 30), (24, 50)]):
                Image.new("RGB", size, rgb).save(d / f"img{i}.png")
            Image.new("L", (20, 20), 128).save(d / "grey.PNG")  # upper-case extension, 1 channel
            (d / "notes.txt").write_text("not an image")
    return colours


def test_imagefolder_eval_loader(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagefolder_loader

    colours = _write_tree(tmp_path)
    loader = imagefolder_loader(tmp_path, "val", batch_size=4, image_size=16, workers=0)
    assert loader.dataset.classes == ["ant", "zebra"] and len(loader.dataset) == 6
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0, 0, 0, 1, 1, 1]  # eval keeps order and the last partial batch
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    # sample order within a class: grey.PNG, img0.png, img1.png (sorted names)
    grey = (torch.full((3, 1, 1), 128 / 255) - mean) / std
    assert torch.allclose(x[0], grey.expand(3, 16, 16), atol=1e-5)
    for k, cls in ((1, "ant"), (2, "ant"), (4, "zebra")):
        want = (torch.tensor(colours[cls], dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
        assert torch.allclose(x[k], want.expand(3, 16, 16), atol=1e-5)


def test_imagefolder_train_loader_and_missing_folder(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_loader, random_resized_crop_box

    _write_tree(tmp_path)
    loader = imagefolder_loader(tmp_path, "train", batch_size=4, image_size=12, workers=0, seed=1)
    assert len(loader) == 1  # 6 images, drop_last for training
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 12, 12) and torch.isfinite(x).all() and set(y.tolist()) <= {0, 1}
    with pytest.raises(FileNotFoundError, match="val2"):
        imagefolder_loader(tmp_path, "val2", batch_size=4)
    g = torch.Generator().manual_seed(0)
    for w, h in [(40, 30), (24, 50), (500, 10), (3, 3)]:
        for _ in range(20):
            l, t, r, b = random_resized_crop_box(w, h, (0.08, 1.0), (3 / 4, 4 / 3), g)
            assert 0 <= l < r <= w and 0 <= t < b <= h


# ---------------------------------------------------------------------------------------------
# ResidentLoader

MEAN, STD = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)


def _images(n=10, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _normalise(x_uint8):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - m) / s


def test_crop_flip_known_offsets_pixel_exact():
    img = torch.arange(2 * 3 * 4 * 5, dtype=torch.int64).reshape(2, 3, 4, 5).to(torch.uint8)
    p = 2
    padded = F.pad(img, (p, p, p, p))
    idx, oy, ox = torch.tensor([1, 0, 1]), torch.tensor([0, 4, 2]), torch.tensor([3, 0, 2])
    flip = torch.tensor([False, True, False])
    out = crop_flip(padded, idx, oy, ox, flip, 4, 5)
    # offset (0, 3): first two rows are padding, then image rows 0..1 shifted left by one column
    want0 = torch.zeros(3, 4, 5, dtype=torch.uint8)
    want0[:, 2:, :4] = img[1, :, :2, 1:]
    assert torch.equal(out[0], want0)
    want1 = torch.zeros(3, 4, 5, dtype=torch.uint8)
    want1[:, :2, 2:] = img[0, :, 2:, :3]
    assert torch.equal(out[1], want1.flip(-1))  # the crop, mirrored
    assert torch.equal(out[2], img[1])  # offset (pad, pad) is the original image


def test_resident_loader_matches_per_sample_reference():
    images, labels = _images(), torch.arange(10)
    loader = ResidentLoader(images, labels, 4, MEAN, STD, train=True, crop_padding=2, drop_last=False, seed=5)
    loader.set_epoch(3)
    batches = list(loader)
    order, oy, ox, flips = loader.plan(3)
    assert len(batches) == len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, labels[order])
    for k in range(10):  # the reference: pad one image, slice it, maybe mirror it, normalise
        src = F.pad(images[order[k]], (2, 2, 2, 2))
        crop = src[:, oy[k]:oy[k] + 6, ox[k]:ox[k] + 5]
        if flips[k]:
            crop = crop.flip(-1)
        assert torch.allclose(x[k], _normalise(crop[None])[0], atol=1e-5, rtol=0)
    assert 0 < int(flips.sum()) < 10 and len(set(zip(oy.tolist(), ox.tolist()))) > 1


def test_resident_loader_flips_flip():
    images = _images(n=64)
    loader = ResidentLoader(images, torch.arange(64), 64, MEAN, STD, train=True, crop_padding=0, seed=0)
    x, y = next(iter(loader))
    _, _, _, flips = loader.plan(0)
    want = torch.where(flips.view(-1, 1, 1, 1), images[y].flip(-1), images[y])
    assert torch.allclose(x, _normalise(want), atol=1e-5, rtol=0)
    assert 10 < int(flips.sum()) < 54


def test_resident_loader_eval_is_plain_normalisation():
    images = _images(n=7)
    loader = ResidentLoader(images, torch.arange(7) % 3, 3, MEAN, STD, train=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [3, 3, 1]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(7) % 3)
    assert torch.allclose(x, _normalise(images), atol=1e-6, rtol=0)


def test_resident_loader_determinism_and_resume():
    images, labels = _images(n=20), torch.arange(20)
    a = ResidentLoader(images, labels, 6, MEAN, STD, train=True, seed=1)
    b = ResidentLoader(images, labels, 6, MEAN, STD, train=True, seed=1)
    a.set_epoch(4), b.set_epoch(4)
    ea, eb = list(a), list(b)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ea, eb))
    assert a.state_dict() == {"seed": 1, "epoch": 5, "batch": 0}  # a finished epoch advances
    e5 = list(a)
    assert not torch.equal(torch.cat([p[1] for p in ea]), torch.cat([p[1] for p in e5]))
    # Stop after one batch of epoch 2, save, and resume in a fresh loader: same remaining batches.
    b.set_epoch(2)
    it = iter(b)
    next(it)
    state = b.state_dict()
    assert state == {"seed": 1, "epoch": 2, "batch": 1}
    rest = list(it)
    c = ResidentLoader(images, labels, 6, MEAN, STD, train=True, seed=0)
    c.load_state_dict(state)
    resumed = list(c)
    assert len(resumed) == len(rest) == 2
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, resumed))
    other_seed = ResidentLoader(images, labels, 6, MEAN, STD, train=True, seed=2)
    other_seed.set_epoch(4)
    assert not torch.equal(torch.cat([p[1] for p in ea]), torch.cat([p[1] for p in other_seed]))


def test_resident_loader_covers_every_sample_once():
    labels = torch.arange(23)
    full = ResidentLoader(_images(n=23), labels, 5, MEAN, STD, train=True, drop_last=False, seed=3)
    for epoch in range(3):
        seen = torch.cat([y for _, y in full])
        assert sorted(seen.tolist()) == list(range(23)), epoch
    dropped = ResidentLoader(_images(n=23), labels, 5, MEAN, STD, train=True, seed=3)
    seen = torch.cat([y for _, y in dropped])
    assert len(dropped) == 4 and len(seen) == 20 and len(set(seen.tolist())) == 20


def test_resident_loader_output_format_and_errors():
    images = _images(n=8)
    loader = ResidentLoader(images, torch.zeros(8, dtype=torch.long), 4, MEAN, STD, train=True,
                            channels_last=True, dtype=torch.bfloat16)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.shape == (4, 3, 6, 5)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        ResidentLoader(images.float(), torch.zeros(8), 4, MEAN, STD, train=True)
    with pytest.raises(ValueError, match="no batch"):
        ResidentLoader(images, torch.zeros(8, dtype=torch.long), 9, MEAN, STD, train=True)
    with pytest.raises(ValueError, match="one per channel"):
        ResidentLoader(images, torch.zeros(8, dtype=torch.long), 4, (0.5,), (0.5,), train=True)
    # mistakes that would train on garbage without a word
    with pytest.raises(ValueError, match=r"look channels-last.*permute\(0, 3, 1, 2\)"):
        ResidentLoader(images.permute(0, 2, 3, 1).contiguous(), torch.zeros(8, dtype=torch.long), 4, MEAN, STD,
                       train=True)
    with pytest.raises(ValueError, match=r"\[0, 1\] scale.*divide them by 255"):
        ResidentLoader(images, torch.zeros(8, dtype=torch.long), 4, (125.3, 123.0, 113.9), (63.0, 62.1, 66.7),
                       train=True)
    with pytest.raises(ValueError, match=r"8 samples with batch_size=9 and drop_last=True give no batch; lower the "
                                         r"batch size \(data.batch_size in a config\)"):
        ResidentLoader(images, torch.zeros(8, dtype=torch.long), 9, MEAN, STD, train=True)
    assert len(ResidentLoader(images, torch.zeros(8, dtype=torch.long), 9, MEAN, STD, train=False)) == 1
    with pytest.raises(ValueError, match="images of shape \\(2, 8, 8, 3\\) look channels-last"):
        Split(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.tensor([0, 1]), 2, (0.5,) * 3, (0.2,) * 3, "x")


def test_resident_loader_on_a_split():
    s = load_split("synthetic", None, "train", size=32, image_size=8)
    loader = ResidentLoader(s.images, s.labels, 16, s.mean, s.std, train=False)
    x = torch.cat([x for x, _ in loader])
    assert x.shape == (32, 3, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1  # the split's stats fit


# ---------------------------------------------------------------------------------------------
# Real CIFAR-100 (the project's shared copy next to the repo)


@pytest.mark.skipif(not REAL_CIFAR100.is_dir(), reason=f"real CIFAR-100 shards not at {REAL_CIFAR100}")
def test_real_cifar100_test_split():
    assert len(verify_checksums(REAL_CIFAR100)) == 9
    s = load_split("cifar100", REAL_CIFAR100, "test")
    assert s.images.shape == (10000, 3, 32, 32) and s.images.dtype == torch.uint8
    assert torch.bincount(s.labels, minlength=100).tolist() == [100] * 100
    m = s.images.float().mean((0, 2, 3)) / 255  # close to the training-set stats
    assert torch.allclose(m, torch.tensor(CIFAR100_MEAN), atol=0.01)


def test_resident_loader_shares_an_epoch_between_processes():
    from btkd.data.gpu import ResidentLoader

    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    kw = dict(mean=(0.0,), std=(1.0,), crop_padding=0, flip=False, seed=3)
    for train, expect_len in ((True, 5), (False, 5)):
        seen = []
        for rank in range(2):
            loader = ResidentLoader(images, labels, 2, train=train, rank=rank, world_size=2, **kw)
            assert loader.num_samples == expect_len
            seen += [int(v) for _, y in loader for v in y]
        if train:  # 5 each, batches of 2, drop_last: 2 batches per process, no sample twice
            assert len(seen) == 8 and len(set(seen)) == 8
        else:
            assert sorted(seen) == list(range(10)), "each sample once per epoch across the processes"
    # an odd count: training truncates to equal shares, evaluation covers everything
    odd = dict(images=images[:9], labels=labels[:9], batch_size=2)
    assert [ResidentLoader(**odd, train=True, rank=r, world_size=2, **kw).num_samples for r in (0, 1)] == [4, 4]
    assert [ResidentLoader(**odd, train=False, rank=r, world_size=2, **kw).num_samples for r in (0, 1)] == [5, 4]
    with pytest.raises(ValueError, match="rank < world_size"):
        ResidentLoader(images, labels, 2, train=True, rank=2, world_size=2, **kw)


def test_synthetic_prototypes_are_learnable_and_shared_between_splits():
    from btkd.data import load_split

    train = load_split("synthetic", None, "train", size=200, num_classes=4, image_size=8, prototypes=True)
    test = load_split("synthetic", None, "test", size=100, num_classes=4, image_size=8, prototypes=True)
    centroids = torch.stack([train.images[train.labels == c].float().mean(0) for c in range(4)])
    # nearest class centroid (a trivial model) classifies the test split far above chance (25%)
    dist = ((test.images.float()[:, None] - centroids[None]) ** 2).flatten(2).sum(2)
    assert (dist.argmin(1) == test.labels).float().mean().item() > 0.9
    plain = load_split("synthetic", None, "train", size=200, num_classes=4, image_size=8)
    assert plain.images.shape == train.images.shape and not torch.equal(plain.images, train.images)


def _tiny_tree(root: Path, layout: dict[str, dict[str, int]]):
    """``layout`` = {split: {class: number of images}}; 0 makes an empty class folder."""
    from PIL import Image

    for split, classes in layout.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.png")


def test_imagefolder_one_class_index_for_both_splits(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes, imagefolder_loader

    _tiny_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    assert imagefolder_classes(tmp_path) == ["cat", "dog"]
    loader = imagefolder_loader(tmp_path, "val", batch_size=4, image_size=8, workers=0)
    assert loader.dataset.classes == ["cat", "dog"] and next(iter(loader))[1].tolist() == [0, 1]


def test_imagefolder_empty_class_folder_is_refused(tmp_path):
    # An empty train/aardvark used to count as class 0 in train only: every test label shifted by one.
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes, imagefolder_loader

    _tiny_tree(tmp_path, {"train": {"aardvark": 0, "cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    with pytest.raises(ValueError, match=r"aardvark.*train"):
        imagefolder_classes(tmp_path)
    with pytest.raises(ValueError, match="aardvark"):
        imagefolder_loader(tmp_path, "val", batch_size=4, image_size=8, workers=0)
    (tmp_path / "val" / "aardvark").mkdir()  # empty in both splits: still refused
    with pytest.raises(ValueError, match=r"no image files.*aardvark"):
        imagefolder_classes(tmp_path)


def test_imagefolder_class_in_one_split_only_is_refused(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes

    _tiny_tree(tmp_path, {"train": {"cat": 1, "dog": 1, "eel": 1}, "val": {"cat": 1, "dog": 1, "fox": 1}})
    with pytest.raises(ValueError, match=r"eel.*only in .*train.*fox.*only in .*val") as err:
        imagefolder_classes(tmp_path)
    assert str(tmp_path / "train") in str(err.value) and str(tmp_path / "val") in str(err.value)


def test_imagefolder_test_folder_may_be_val_or_test_but_not_both(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes, imagefolder_loader, imagefolder_test_split

    _tiny_tree(tmp_path / "a", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}})
    assert imagefolder_test_split(tmp_path / "a") == "test"
    assert imagefolder_classes(tmp_path / "a") == ["cat", "dog"]
    assert len(imagefolder_loader(tmp_path / "a", "test", batch_size=2, image_size=8, workers=0).dataset) == 2
    _tiny_tree(tmp_path / "b", {"train": {"cat": 1}, "val": {"cat": 1}})
    assert imagefolder_test_split(tmp_path / "b") == "val"
    _tiny_tree(tmp_path / "c", {"train": {"cat": 1}, "val": {"cat": 1}, "test": {"cat": 1}})
    with pytest.raises(ValueError, match=r"both .*val.* and .*test.*keep one"):
        imagefolder_test_split(tmp_path / "c")
    _tiny_tree(tmp_path / "d", {"train": {"cat": 1}})
    with pytest.raises(FileNotFoundError, match=r"val.*test"):
        imagefolder_test_split(tmp_path / "d")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_imagefolder_symlink_loop_is_refused(tmp_path):
    # os.walk(followlinks=True) followed cat/loop -> cat until the OS gave up, indexing every image
    # dozens of times.
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import ImageFolderDataset, imagefolder_classes

    _tiny_tree(tmp_path, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "dog": 1}})
    os.symlink(tmp_path / "train" / "cat", tmp_path / "train" / "cat" / "loop", target_is_directory=True)
    with pytest.raises(ValueError, match=r"loop.*back into"):
        ImageFolderDataset(tmp_path / "train")
    with pytest.raises(ValueError, match="loop"):
        imagefolder_classes(tmp_path)


def _link_val_to_train(root: Path):
    os.symlink(root / "train", root / "val", target_is_directory=True)


def _link_class_folder(root: Path):
    import shutil

    shutil.rmtree(root / "val" / "cat")
    os.symlink(root / "train" / "cat", root / "val" / "cat", target_is_directory=True)


def _hard_link_tree(root: Path):
    import shutil

    shutil.copytree(root / "train", root / "val", copy_function=os.link)


def _hard_link_one_file(root: Path):  # into another class, even
    (root / "val" / "dog" / "1.png").unlink()
    os.link(root / "train" / "cat" / "2.png", root / "val" / "dog" / "1.png")


def _symlink_one_training_file(root: Path):  # the training side links to a test image
    os.symlink(root / "val" / "dog" / "0.png", root / "train" / "dog" / "9.png")


def _link_a_folder_below_a_class(root: Path):
    (root / "train" / "cat" / "more").mkdir()
    os.symlink(root / "val" / "cat", root / "train" / "cat" / "more" / "val_cats", target_is_directory=True)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@pytest.mark.parametrize("share, shared", [
    (_link_val_to_train, "all 6"), (_link_class_folder, "3 of the 6"), (_hard_link_tree, "all 6"),
    (_hard_link_one_file, "1 of the 6"), (_symlink_one_training_file, "1 of the 6"),
    (_link_a_folder_below_a_class, "3 of the 6")])
def test_imagefolder_test_images_that_are_training_files_are_refused(tmp_path, share, shared):
    # val/ linked to train/ (or a class folder, or hard-linked files) was read as a test split: the test
    # accuracy was training accuracy, silently.
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes, imagefolder_loader

    _tiny_tree(tmp_path, {"train": {"cat": 3, "dog": 3}, **({} if share in (_link_val_to_train, _hard_link_tree)
                                                            else {"val": {"cat": 3, "dog": 3}})})
    share(tmp_path)
    val = tmp_path / "val"
    with pytest.raises(ValueError, match=rf"imagefolder: {shared} image files of {val} (is|are) also training "
                       rf"images .*e\.g\. {val}/\w+/\d\.png is {tmp_path / 'train'}/.*Give {val} its own images, "
                       "held out from training: remove the links"):
        imagefolder_classes(tmp_path)
    with pytest.raises(ValueError, match="also training images"):
        imagefolder_loader(tmp_path, "val", batch_size=2, image_size=8, workers=0)


def test_imagefolder_of_one_class_is_refused(tmp_path):
    # A tree of one class trained to 100 % test accuracy, which meant nothing.
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_classes, imagefolder_loader

    _tiny_tree(tmp_path, {"train": {"cat": 2}, "val": {"cat": 1}})
    with pytest.raises(ValueError, match=rf"imagefolder: {tmp_path} gives only 1 class \(cat\); a classifier needs at "
                       "least 2"):
        imagefolder_classes(tmp_path)
    _tiny_tree(tmp_path / "two", {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    with pytest.raises(ValueError, match=r"classes=\['cat'\] gives only 1 class"):
        imagefolder_loader(tmp_path / "two", "train", batch_size=2, image_size=8, workers=0, classes=["cat"])


def test_imagefolder_train_subset_of_one_class_is_refused_and_a_subset_too_large_names_its_split(tmp_path):
    pytest.importorskip("PIL")
    from btkd.config import ConfigError, load_config
    from btkd.engine.build import build_data, setup_runtime

    _tiny_tree(tmp_path, {"train": {"a": 2, "b": 2, "c": 2}, "val": {"a": 1, "b": 1, "c": 1}})
    base = ["data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=8", "data.workers=0",
            "data.batch_size=1", "runtime.device=cpu"]

    def build(*extra):
        cfg = load_config(None, base + list(extra))
        return build_data(cfg, setup_runtime(cfg))

    with pytest.raises(ConfigError, match=r"data.train_subset=1 leaves training images of 1 class only \(of 3\)"):
        build("data.train_subset=1")
    with pytest.warns(UserWarning, match=r"1 of the 3 test images are of classes with no training image \(1 class: "
                      r"[abc]\)"):
        assert build("data.train_subset=2").train_size == 2
    with pytest.raises(ValueError, match=rf"subset=9 of {tmp_path / 'val'}: a subset needs 1 <= n <= 3"):
        build("data.test_subset=9")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_imagefolder_follows_symlinks_out_of_the_tree(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import ImageFolderDataset

    _tiny_tree(tmp_path / "tree", {"train": {"cat": 1, "dog": 1}})
    _tiny_tree(tmp_path / "extra", {"more": {"cats": 2}})
    os.symlink(tmp_path / "extra" / "more" / "cats", tmp_path / "tree" / "train" / "cat" / "more",
               target_is_directory=True)
    ds = ImageFolderDataset(tmp_path / "tree" / "train")
    assert ds.targets == [0, 0, 0, 1]


def test_imagefolder_undecodable_image_names_the_file(tmp_path):
    pytest.importorskip("PIL")
    from btkd._checks import DamagedFileError
    from btkd.data.imagefolder import ImageFolderDataset

    _tiny_tree(tmp_path, {"train": {"cat": 2}})
    bad = tmp_path / "train" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = ImageFolderDataset(tmp_path / "train")
    assert ds[0][0].size == (8, 8)
    with pytest.raises(DamagedFileError, match=rf"{bad}: cannot be read as an image.*re-copy"):
        ds[1]


# ---------------------------------------------------------------------------------------------
# ImageFolder: workers, options (mean/std, image_size), JPEG draft decoding


def _colour_tree(root: Path, size=(32, 32), fmt="png", n=3):
    """train/val with classes a (one colour) and b (another), ``n`` images each."""
    from PIL import Image

    colours = {"a": (200, 100, 50), "b": (100, 50, 250)}
    for split in ("train", "val"):
        for cls, rgb in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", size, rgb).save(d / f"{i}.{fmt}")
    return colours


def _smooth_jpeg(path: Path, width: int, height: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(path, "JPEG", quality=92)


def test_imagefolder_workers_default_to_the_machine_and_are_capped(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    import warnings

    from btkd.data.imagefolder import default_workers, imagefolder_loader, usable_cpus

    cpus = usable_cpus()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == max(1, min(8, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))  # torchrun with one process per core
    assert default_workers() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    _colour_tree(tmp_path)
    loader = imagefolder_loader(tmp_path, "train", batch_size=2, image_size=8)
    assert loader.num_workers == default_workers() and loader.persistent_workers and loader.prefetch_factor == 2
    many = imagefolder_loader(tmp_path, "train", batch_size=2, image_size=8, workers=cpus + 7, prefetch_factor=4)
    assert many.num_workers == cpus and many.prefetch_factor == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch warns about more workers than CPUs
        many.check_worker_number_rationality()
    inline = imagefolder_loader(tmp_path, "train", batch_size=2, image_size=8, workers=0)
    assert inline.num_workers == 0 and not inline.persistent_workers
    with pytest.raises(ValueError, match="workers=-1"):
        imagefolder_loader(tmp_path, "train", batch_size=2, image_size=8, workers=-1)


def test_imagefolder_mean_std_given_or_computed_from_training_images(tmp_path):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import channel_stats, imagefolder_loader

    colours = _colour_tree(tmp_path)
    rgb = torch.tensor(list(colours.values()), dtype=torch.float64) / 255  # equal numbers of each colour
    want_mean, want_std = rgb.mean(0), rgb.std(0, unbiased=False)
    mean, std = channel_stats(tmp_path / "train", ["a", "b"], 16)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), want_mean, atol=1e-4)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), want_std, atol=1e-4)
    # 'auto' on any split uses the training images' statistics: the normalised data has mean 0, std 1
    for split in ("train", "val"):
        loader = imagefolder_loader(tmp_path, split, batch_size=6, image_size=16, workers=0, train=False,
                                    mean="auto", std="auto")
        assert loader.dataset.transform.mean == mean and loader.dataset.transform.std == std
        x = torch.cat([b for b, _ in loader])
        assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=2e-3)
        assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=2e-3)
    # given values are used as they are; one may be auto, the other given
    loader = imagefolder_loader(tmp_path, "val", batch_size=6, image_size=8, workers=0, mean=[0.5, 0.5, 0.5],
                                std="auto")
    assert loader.dataset.transform.mean == (0.5, 0.5, 0.5) and loader.dataset.transform.std == std
    x, _ = next(iter(loader))
    assert torch.allclose(x[0, :, 0, 0], (rgb[0].float() - 0.5) / torch.tensor(std), atol=1e-4)
    for bad, match in [(dict(mean="avg"), r"mean='avg'.*'auto'"), (dict(std=[0.2, 0.0, 0.2]), r"std=.*each > 0"),
                       (dict(mean=[0.5, 0.5]), r"mean=\[0.5, 0.5\].*3 finite numbers")]:
        with pytest.raises(ValueError, match=match):
            imagefolder_loader(tmp_path, "val", batch_size=2, image_size=8, workers=0, **bad)


def test_imagefolder_options_through_a_config(tmp_path):
    # The engine passes data.image_size, data.workers and data.options to imagefolder_loader.
    pytest.importorskip("PIL")
    from btkd.config import load_config
    from btkd.engine.build import build_data, setup_runtime

    _colour_tree(tmp_path)
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=16",
                             "data.workers=0", "data.batch_size=2", "data.eval_batch_size=4",
                             "data.options={mean: auto, std: auto, draft: false, flip: false, stats_samples: 4}",
                             "runtime.device=cpu"])
    data = build_data(cfg, setup_runtime(cfg))
    t = data.test_loader.loader.dataset.transform
    assert t.size == 16 and not t.draft and t.mean == pytest.approx((150 / 255, 75 / 255, 150 / 255), abs=1e-4)
    x, y = next(iter(data.train_loader(0)))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_imagefolder_training_with_fewer_images_than_a_batch_is_refused_naming_the_fix(tmp_path):
    # Training drops an incomplete batch: with fewer images than one batch an epoch had no batch, and the
    # run then died in its epoch record (a division by zero), inspect-teacher in torch.cat.
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import imagefolder_loader

    _write_tree(tmp_path)  # 6 training images
    with pytest.raises(ValueError, match=r"6 training images, fewer than one batch of 8.*data.global_batch_size"):
        imagefolder_loader(tmp_path, "train", batch_size=8, image_size=8, workers=0)
    with pytest.raises(ValueError, match=r"\(3 for each of 2 processes\), fewer than one batch of 4"):
        imagefolder_loader(tmp_path, "train", batch_size=4, image_size=8, workers=0, world_size=2)
    assert len(imagefolder_loader(tmp_path, "train", batch_size=6, image_size=8, workers=0)) == 1
    assert len(imagefolder_loader(tmp_path, "val", batch_size=8, image_size=8, workers=0)) == 1  # evaluation keeps them


def test_imagefolder_data_flip_false_turns_the_flip_off(tmp_path):
    # data.flip is a top-level key every dataset reads: an ImageFolder tree once kept flipping regardless.
    pytest.importorskip("PIL")
    from btkd.config import load_config
    from btkd.engine.build import build_data, setup_runtime

    _write_tree(tmp_path)
    base = ["data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=8", "data.workers=0",
            "data.batch_size=2", "runtime.device=cpu"]
    for extra, flip in (([], True), (["data.flip=false"], False), (["data.options={flip: false}"], False)):
        cfg = load_config(None, base + extra)
        assert build_data(cfg, setup_runtime(cfg)).train_loader(0).loader.dataset.transform.flip is flip, extra


def test_imagefolder_image_size_auto_and_a_warning_when_upsampling(tmp_path):
    pytest.importorskip("PIL")
    import warnings

    from btkd.data.imagefolder import imagefolder_loader, median_shorter_side

    _colour_tree(tmp_path, size=(40, 32))
    assert median_shorter_side(tmp_path / "train", ["a", "b"]) == 32
    with pytest.warns(UserWarning, match=r"image_size=224, but the images of .*train are smaller: their median "
                                         r"shorter side is 32 px.*7\.0x.*data\.image_size=32"):
        imagefolder_loader(tmp_path, "val", batch_size=2, image_size=224, workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = imagefolder_loader(tmp_path, "val", batch_size=2, image_size="auto", workers=0)
        assert loader.dataset.transform.size == 32 and next(iter(loader))[0].shape == (2, 3, 32, 32)
        imagefolder_loader(tmp_path, "train", batch_size=2, image_size=64, workers=0)  # 2x: no warning
    for bad in ("big", 0, 2.5, True):
        with pytest.raises(ValueError, match="image_size=.*whole number of pixels >= 1 or 'auto'"):
            imagefolder_loader(tmp_path, "val", batch_size=2, image_size=bad, workers=0)


def test_jpeg_draft_decodes_at_reduced_scale_only_where_the_crop_allows(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from btkd.data.imagefolder import EvalTransform, TrainTransform, draft_jpeg

    _smooth_jpeg(tmp_path / "big.jpg", 640, 480)
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    img = Image.open(tmp_path / "big.jpg")
    assert draft_jpeg(img, 5.0) == 4 and img.size == (160, 120)
    assert draft_jpeg(Image.open(tmp_path / "big.jpg"), 1.9) == 1
    assert draft_jpeg(Image.open(tmp_path / "big.png"), 8.0) == 1  # not a JPEG
    loaded = Image.open(tmp_path / "big.jpg")
    loaded.load()
    assert draft_jpeg(loaded, 8.0) == 1 and loaded.size == (640, 480)  # already decoded
    # the same crops (same draws) with and without the draft, within ~1 level of 255 on a smooth image
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for transform in (TrainTransform, EvalTransform):
        for size in (24, 256):
            outs = {}
            for draft in (True, False):
                torch.manual_seed(0)
                outs[draft] = torch.stack([transform(size, draft=draft)(Image.open(tmp_path / "big.jpg"))
                                           for _ in range(8)])
            diff = ((outs[True] - outs[False]) * std).abs().mean().item() * 255
            assert diff < 1.5, (transform.__name__, size, diff)
            if transform is EvalTransform and size == 256:  # shorter side 480 < 2 x 293: no reduction allowed
                assert torch.equal(outs[True], outs[False])


def test_imagefolder_jpeg_tree_through_workers(tmp_path):
    # The loader's default path: JPEG drafts in worker processes, pinned memory off on a CPU.
    pytest.importorskip("PIL")
    for split in ("train", "val"):
        for cls in ("x", "y"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                _smooth_jpeg(d / f"{i}.jpg", 256, 192, seed=i)
    from btkd.data.imagefolder import imagefolder_loader

    loader = imagefolder_loader(tmp_path, "train", batch_size=2, image_size=32, workers=1)
    assert loader.pin_memory == torch.cuda.is_available()
    # the file list is held in numpy arrays; `samples` gives torchvision's list
    assert loader.dataset.samples == [(str(tmp_path / "train" / c / f"{i}.jpg"), k)
                                      for k, c in enumerate("xy") for i in range(2)]
    batches = [y for _ in range(2) for _, y in loader]  # two epochs over the same persistent worker
    assert len(batches) == 4 and sorted(torch.cat(batches[:2]).tolist()) == [0, 0, 1, 1]


def test_imagefolder_crops_are_a_function_of_seed_epoch_and_image(tmp_path):
    # The crops and flips of a training epoch do not depend on how many workers or processes read
    # it, nor on whether the run was resumed: each image draws from its own (seed, epoch, image) seed.
    pytest.importorskip("PIL")
    from trees import random_image_tree

    from btkd.data.imagefolder import imagefolder_loader

    random_image_tree(tmp_path, {"train": 4, "val": 1}, size=(20, 16))  # 8 training images, 2 classes

    def epoch(loader, e):
        loader.sampler.set_epoch(e)
        return [(x, y) for x, y in loader]

    def load(**kw):
        kw = {"batch_size": 2, "image_size": 8, "seed": 5, "workers": 0, **kw}
        return imagefolder_loader(tmp_path, "train", **kw)

    one = load()
    e0, e1 = epoch(one, 0), epoch(one, 1)
    x0, x1 = torch.cat([x for x, _ in e0]), torch.cat([x for x, _ in e1])
    assert not torch.equal(x0, x1)  # each epoch draws other crops (and another order)
    # two workers, kept alive across epochs: the same batches, epoch after epoch
    two_workers = load(workers=2)
    for e, want in ((0, e0), (1, e1)):
        got = epoch(two_workers, e)
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))
    # a run resumed at epoch 1 on a fresh loader reads epoch 1's batches
    resumed = epoch(load(workers=1), 1)
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(resumed, e1))
    # two processes with batch 1 read, position by position, the batches of one with batch 2
    ranks = [epoch(load(batch_size=1, rank=r, world_size=2), 1) for r in range(2)]
    joined = torch.cat([torch.cat([ranks[0][i][0], ranks[1][i][0]]) for i in range(len(ranks[0]))])
    assert torch.equal(joined, x1)
    # the two-view loader's weak view is the one-view crop (PNGs: no reduced-scale decoding)
    views = epoch(load(strong_view=True), 1)
    assert all(torch.equal(weak, c) and not torch.equal(strong, c) for ((weak, strong), _), (c, _) in zip(views, e1))


def test_imagefolder_a_seeded_index_seeds_a_transform_of_your_own_and_leaves_the_global_rng(tmp_path):
    pytest.importorskip("PIL")
    from trees import random_image_tree

    from btkd.data.imagefolder import ImageFolderDataset

    random_image_tree(tmp_path, {"train": 1})
    data = ImageFolderDataset(tmp_path / "train", transform=lambda img: torch.rand(3))
    state = torch.get_rng_state()
    a, b, c = data[(0, 5)][0], data[(0, 5)][0], data[(0, 6)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_imagefolder_image_seeds_are_distinct_and_depend_on_every_input():
    from btkd.data.imagefolder import image_seeds

    a = image_seeds(123, range(10_000))
    assert a.dtype == np.uint64 and len(np.unique(a)) == 10_000
    assert len(np.unique(a & np.uint64(0xFFFFFFFF))) == 10_000  # the 32 bits torch's CPU generator keeps
    assert not np.any(image_seeds(124, range(10_000)) == a)
    assert np.array_equal(image_seeds(123, [7, 3]), a[[7, 3]])


def test_resident_loader_strong_view_leaves_the_weak_view_unchanged_and_follows_its_plan():
    from btkd.data.randaugment import rand_augment

    images, labels = _images(n=12), torch.arange(12)
    plain = ResidentLoader(images, labels, 4, MEAN, STD, train=True, crop_padding=2, seed=7)
    two = ResidentLoader(images, labels, 4, MEAN, STD, train=True, crop_padding=2, seed=7, strong_view=True)
    plain.set_epoch(2), two.set_epoch(2)
    pairs = list(zip(plain, two))
    assert len(pairs) == 3
    for (x, y), ((weak, strong), y2) in pairs:
        assert torch.equal(x, weak) and torch.equal(y, y2)  # the weak view is the one-view batch
        assert weak.shape == strong.shape
    strongs = torch.cat([s for (_, ((_, s), _)) in pairs])
    weaks = torch.cat([w for (_, ((w, _), _)) in pairs])
    assert not torch.equal(strongs, weaks)
    # the strong view is crop-flip with its own draws, then RandAugment + Cutout with the epoch's draws
    order, _, _, _ = two.plan(2)
    oy, ox, flips, aug = two.strong_plan(2)
    want = rand_augment(crop_flip(F.pad(images, (2, 2, 2, 2)), order, oy, ox, flips, 6, 5), aug)
    assert torch.allclose(strongs, _normalise(want), atol=1e-5, rtol=0)
    # seeded: the same seed and epoch give the same strong batches, another epoch others
    again = ResidentLoader(images, labels, 4, MEAN, STD, train=True, crop_padding=2, seed=7, strong_view=True)
    again.set_epoch(2)
    assert torch.equal(torch.cat([s for ((_, s), _) in again]), strongs)
    assert not torch.equal(torch.cat([s for ((_, s), _) in again]), strongs)  # epoch 3 now
    # two processes take every other position of the same strong draws
    rank1 = ResidentLoader(images, labels, 2, MEAN, STD, train=True, crop_padding=2, seed=7, strong_view=True,
                           rank=1, world_size=2)
    r_oy, r_ox, r_flips, r_aug = rank1.strong_plan(2)
    assert torch.equal(r_oy, oy[1::2]) and torch.equal(r_flips, flips[1::2])
    assert torch.equal(r_aug.ops, aug.ops[1::2]) and torch.equal(r_aug.magnitudes, aug.magnitudes[1::2])
    with pytest.raises(ValueError, match="strong_view.*train=True"):
        ResidentLoader(images, labels, 4, MEAN, STD, train=False, strong_view=True)


@pytest.mark.parametrize("chunk", [1, 10, 4096])
def test_strong_views_are_the_same_whatever_the_chunking_and_after_a_resume(chunk, monkeypatch):
    from btkd.data import gpu

    images, labels = _images(n=23), torch.arange(23)
    make = lambda: ResidentLoader(images, labels, 4, MEAN, STD, train=True, crop_padding=2, seed=3,  # noqa: E731
                                  strong_view=True, drop_last=False)
    reference = make()
    reference.set_epoch(1)
    want = [(w, s, y) for (w, s), y in reference]  # chunks of 4096: the whole epoch at once
    monkeypatch.setattr(gpu, "STRONG_CHUNK", chunk)  # chunks of 1 batch, of 2 batches
    loader = make()
    loader.set_epoch(1)
    got = [(w, s, y) for (w, s), y in loader]
    assert len(got) == len(want) == 6 and [len(y) for *_, y in got] == [4, 4, 4, 4, 4, 3]
    for (w1, s1, y1), (w2, s2, y2) in zip(want, got):
        assert torch.equal(w1, w2) and torch.equal(s1, s2) and torch.equal(y1, y2)
    resumed = make()
    resumed.load_state_dict({"seed": 3, "epoch": 1, "batch": 3})  # mid-chunk
    rest = [s for (_, s), _ in resumed]
    assert all(torch.equal(a, b[1]) for a, b in zip(rest, want[3:])) and len(rest) == 3
