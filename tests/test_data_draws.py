"""The data layer's random draws and constants, checked against hand-computed values and properties
(tests/test_data.py checks the loaders against references built from the loaders' own draws)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from btkd.data import ResidentLoader, load_split, verify_checksums
from btkd.data import fashion_mnist as fm_mod
from btkd.data.gpu import epoch_seed

# ---------------------------------------------------------------------------------------------
# ResidentLoader: the crop offsets, flips and the strong view's own draws


def _tiny(n):
    return torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)


def test_crop_offsets_cover_every_shift_and_rows_and_columns_are_drawn_apart():
    images, labels = _tiny(4000)
    loader = ResidentLoader(images, labels, 100, (0.5,), (0.25,), train=True, crop_padding=2, seed=0)
    _, oy, ox, flips = loader.plan(0)
    # a pad of 2 allows shifts 0..4 (4 = the image at the left/top edge of its padded copy), each ~1/5
    for offsets in (oy, ox):
        counts = torch.bincount(offsets, minlength=5)
        assert len(counts) == 5 and counts.min() > 4000 / 5 * 0.85, counts.tolist()
    # rows and columns are independent draws: the same value only about 1 time in 5
    assert 0.15 < (oy == ox).float().mean().item() < 0.25
    assert 0.45 < flips.float().mean().item() < 0.55


def test_the_strong_view_draws_its_crops_and_flips_apart_from_the_weak_view():
    assert len({epoch_seed(3, 1), epoch_seed(3, 1, 1), epoch_seed(3, 1, 2), epoch_seed(3, 2)}) == 4
    images, labels = _tiny(400)
    loader = ResidentLoader(images, labels, 100, (0.5,), (0.25,), train=True, crop_padding=2, seed=3,
                            strong_view=True)
    _, oy, ox, flips = loader.plan(1)
    s_oy, s_ox, s_flips, _ = loader.strong_plan(1)
    # independent draws agree on about 1/5 of the offsets and 1/2 of the flips, not on all of them
    assert (oy == s_oy).float().mean().item() < 0.4 and (ox == s_ox).float().mean().item() < 0.4
    assert (flips == s_flips).float().mean().item() < 0.7


# ---------------------------------------------------------------------------------------------
# Normalisation statistics: the published values, per channel in R, G, B order


def _shards(root: Path, variant_classes: int):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in ("train-0", "test"):
        np.savez_compressed(root / f"{name}.npz", x=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                            y=rng.integers(0, variant_classes, 2).astype(np.int64))


def test_cifar_statistics_are_the_published_rgb_values(tmp_path):
    _shards(tmp_path / "c100", 100)
    _shards(tmp_path / "c10", 10)
    for split in ("train", "test"):
        s = load_split("cifar100", tmp_path / "c100", split)
        assert s.mean == (0.5071, 0.4867, 0.4408) and s.std == (0.2675, 0.2565, 0.2761)
        s = load_split("cifar10", tmp_path / "c10", split)
        assert s.mean == (0.4914, 0.4822, 0.4465) and s.std == (0.2470, 0.2435, 0.2616)


def test_fashion_mnist_and_digits_statistics():
    assert (fm_mod.FASHION_MNIST_MEAN, fm_mod.FASHION_MNIST_STD) == ((0.2860,), (0.3530,))
    pytest.importorskip("sklearn")
    train = load_split("digits", None, "train")
    x = train.images.double() / 255
    assert abs(x.mean().item() - train.mean[0]) < 1e-3 and abs(x.std(unbiased=False).item() - train.std[0]) < 1e-3


def test_fashion_mnist_split_carries_its_statistics(tmp_path):
    import struct

    x, y = np.zeros((2, 28, 28), np.uint8), np.array([1, 2], np.uint8)
    for stem, arr in (("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)):
        (tmp_path / stem).write_bytes(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
                                      + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())
    s = load_split("fashion_mnist", tmp_path, "test")
    assert (s.mean, s.std) == ((0.2860,), (0.3530,))


@pytest.mark.skipif(not os.path.isdir(fm_mod.DEBIAN_ROOT), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_statistics_match_the_training_images():
    s = load_split("fashion_mnist", fm_mod.DEBIAN_ROOT, "train")
    x = s.images.double() / 255
    assert abs(x.mean().item() - s.mean[0]) < 1e-3 and abs(x.std(unbiased=False).item() - s.std[0]) < 1e-3


# ---------------------------------------------------------------------------------------------
# Checksums of files larger than one read


def test_checksums_cover_every_byte_of_a_large_file(tmp_path):
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 5, dtype=np.uint8).tobytes())
    (tmp_path / "big.bin").write_bytes(bytes(data))
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(bytes(data)).hexdigest()}  big.bin\n")
    assert verify_checksums(tmp_path) == ["big.bin"]
    data[-3] ^= 1  # a damaged byte in the last MiB
    (tmp_path / "big.bin").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_checksums(tmp_path)


# ---------------------------------------------------------------------------------------------
# ImageFolder transforms: geometry by hand on images the resizes leave unchanged


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_eval_transform_is_the_centre_crop_in_chw_order():
    pytest.importorskip("PIL")
    from PIL import Image

    from btkd.data.imagefolder import EvalTransform

    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    for h, w, top, left in ((24, 16, 4, 0), (16, 26, 0, 5)):  # shorter side already resize_size: no resampling
        a = _rgb(h, w)
        x = EvalTransform(16, 16, mean=mean, std=std)(Image.fromarray(a))
        crop = torch.from_numpy(a[top:top + 16, left:left + 16]).permute(2, 0, 1).double() / 255
        m, s = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (mean, std))
        want = (crop - m) / s
        assert x.shape == (3, 16, 16) and torch.allclose(x.double(), want, atol=1e-5), (h, w)


def test_train_transform_flips_left_right_half_the_time():
    pytest.importorskip("PIL")
    from PIL import Image

    from btkd.data.imagefolder import TrainTransform

    a = _rgb(16, 16, seed=1)
    plain = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    # the whole image as the crop (scale 1, ratio 1), resized to its own size: only the flip is left
    t = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    flipped = 0
    for seed in range(40):
        x = t(Image.fromarray(a), torch.Generator().manual_seed(seed))
        if torch.allclose(x, plain.flip(-1), atol=1e-6):
            flipped += 1
        else:
            assert torch.allclose(x, plain, atol=1e-6), seed
    assert 8 <= flipped <= 32


def test_random_resized_crop_falls_back_to_the_largest_centred_crop_in_ratio():
    from btkd.data.imagefolder import random_resized_crop_box

    g = torch.Generator().manual_seed(0)
    ratio = (3 / 4, 4 / 3)
    # an area twice the image's never fits: the fallback, as in torchvision
    assert random_resized_crop_box(24, 50, (2.0, 2.0), ratio, g) == (0, 9, 24, 41)  # 24 x round(24 / 0.75)
    assert random_resized_crop_box(500, 10, (2.0, 2.0), ratio, g) == (243, 0, 256, 10)  # round(10 * 4/3) x 10
    assert random_resized_crop_box(30, 30, (2.0, 2.0), ratio, g) == (0, 0, 30, 30)


def test_a_restricted_imagefolder_keeps_each_image_with_its_label(tmp_path):
    pytest.importorskip("PIL")
    from trees import random_image_tree

    from btkd.data.imagefolder import ImageFolderDataset

    random_image_tree(tmp_path, {"train": 3}, classes=("a", "b", "c"))
    ds = ImageFolderDataset(tmp_path / "train")
    ds.restrict([7, 1, 5, 3])
    assert [(Path(p).parent.name, t) for p, t in ds.samples] == [("c", 2), ("a", 0), ("b", 1), ("b", 1)]
    assert [ds[i][1] for i in range(4)] == [2, 0, 1, 1]


def test_the_statistics_sample_is_the_same_every_time(tmp_path):
    pytest.importorskip("PIL")
    from trees import random_image_tree

    from btkd.data.imagefolder import sample_image_files

    random_image_tree(tmp_path, {"train": 6}, size=(4, 4))
    draws = [sample_image_files(tmp_path / "train", ["cat", "dog"], 3) for _ in range(5)]
    assert len(draws[0]) == 3 and all(d == draws[0] for d in draws)


# ---------------------------------------------------------------------------------------------
# CIFAR shards past train-9, and subsets


def test_shards_are_read_in_numeric_order_past_ten(tmp_path):
    # text order would put train-10 before train-2
    rng = np.random.default_rng(0)
    for num in range(12):
        np.savez_compressed(tmp_path / f"train-{num}.npz", x=rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
                            y=np.array([num], np.int64))
    assert load_split("cifar100", tmp_path, "train").labels.tolist() == list(range(12))


def test_a_subset_keeps_each_image_with_its_label():
    from btkd.data import Split
    from btkd.data.subset import subset_indices, take_subset

    n = 60
    labels = torch.arange(n) % 3
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)  # each image holds its own index
    split = Split(images, labels, 3, (0.5,), (0.5,), "x")
    sub, record = take_subset(split, 12, seed=4)
    idx = sub.images.view(-1).long()
    assert torch.equal(idx, subset_indices(labels, 12, 4)) and torch.equal(sub.labels, labels[idx])
    assert torch.bincount(sub.labels).tolist() == [4, 4, 4] and (record["n"], record["of"]) == (12, 60)


def test_btkd_data_comes_before_the_current_directorys_data(tmp_path, monkeypatch):
    for where, label in (("env", 1), ("cwd/data", 2)):
        folder = tmp_path / where / "cifar100"
        folder.mkdir(parents=True)
        np.savez_compressed(folder / "test.npz", x=np.zeros((1, 32, 32, 3), np.uint8), y=np.array([label], np.int64))
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_split("cifar100", None, "test").labels.tolist() == [2]
    monkeypatch.setenv("BTKD_DATA", str(tmp_path / "env"))
    assert load_split("cifar100", None, "test").labels.tolist() == [1]


# ---------------------------------------------------------------------------------------------
# ImageFolder: the sampler's shares, and reduced-scale decoding only where it cannot show


def test_epoch_order_gives_every_process_the_same_number_of_training_images():
    from btkd.data.imagefolder import EpochOrder

    for n in (9, 10, 11):
        ranks = [EpochOrder(n, seed=1, rank=r, world_size=3) for r in range(3)]
        shares = [list(o) for o in ranks]
        assert [len(s) for s in shares] == [len(o) for o in ranks] == [n // 3] * 3, n
        assert len(set(sum(shares, []))) == 3 * (n // 3)


def test_eval_transform_decodes_at_full_scale_when_the_resize_needs_it(tmp_path):
    # shorter side 480 and resize_size 256 (image_size 224): 480 / 256 < 2, so no reduced decoding
    pytest.importorskip("PIL")
    from PIL import Image

    from btkd.data.imagefolder import EvalTransform

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=90)
    outs = [EvalTransform(224, draft=draft)(Image.open(tmp_path / "a.jpg")) for draft in (True, False)]
    assert torch.equal(outs[0], outs[1])
