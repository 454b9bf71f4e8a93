"""Damaged files: every loader turns a truncated, corrupt, empty or foreign file into one
DamagedFileError naming the file and what to do (never a raw library traceback, never advice to
enable pickle loading), and a missing file into FileNotFoundError."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from btkd._checks import DamagedFileError
from btkd.data import load_split
from btkd.engine.checkpoint import load_checkpoint_file, save_atomic
from btkd.models import build_model, load_checkpoint

# ---------------------------------------------------------------------------------------------
# One small valid file per loader, and a function that loads it the way btkd does


class _Linear(torch.nn.Module):
    """A model small enough that a damaged checkpoint of it is a few hundred bytes."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)


def _model_state():
    torch.manual_seed(0)
    return _Linear().state_dict()


def _write_npz(root: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(root / "test.npz", x=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), y=np.array([3, 7]))
    return root / "test.npz"


def _write_cifar_pickle(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    (folder / "test").write_bytes(pickle.dumps({b"data": data, b"fine_labels": [3, 7]}, protocol=2))
    return folder / "test"


def _write_idx_gz(root: Path) -> Path:
    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    for stem, arr in (("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", np.array([3, 7], np.uint8))):
        header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(root / (stem + ".gz"), "wb") as f:
            f.write(header + arr.tobytes())
    return root / "t10k-images-idx3-ubyte.gz"


def _write_checkpoint(root: Path) -> Path:
    save_atomic({"model": _model_state(), "epoch": 3, "rng": {"torch": torch.get_rng_state()}}, root / "checkpoint.pt")
    return root / "checkpoint.pt"


def _write_pth(root: Path) -> Path:
    torch.save({"model": _model_state(), "epoch": 240, "best_acc": np.float64(77.5)}, root / "ckpt.pth")
    return root / "ckpt.pth"


def _write_safetensors(root: Path) -> Path:
    save_file(dict(_model_state()), root / "best.safetensors")
    return root / "best.safetensors"


def _write_image(root: Path) -> Path:
    from PIL import Image

    folder = root / "train" / "cat"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "0.png")
    return folder / "0.png"


def _load_image(path: Path):
    from btkd.data.imagefolder import ImageFolderDataset

    return ImageFolderDataset(path.parents[1])[0]


LOADERS = {
    # name: (write a valid file under a folder -> its path, load it the way btkd does)
    "npz_shard": (_write_npz, lambda p: load_split("cifar100", p.parent, "test")),
    "cifar_pickle": (_write_cifar_pickle, lambda p: load_split("cifar100", p.parents[1], "test")),
    "idx_gz": (_write_idx_gz, lambda p: load_split("fashion_mnist", p.parent, "test")),
    "checkpoint_pt": (_write_checkpoint, load_checkpoint_file),
    "model_pth": (_write_pth, lambda p: load_checkpoint(_Linear(), p)),
    "model_safetensors": (_write_safetensors, lambda p: load_checkpoint(_Linear(), p)),
    "image": (_write_image, _load_image),
}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """name -> (path of the valid file, its bytes), each in a folder of its own."""
    files = {}
    for name, (write, _) in LOADERS.items():
        path = write(tmp_path_factory.mktemp(name))
        files[name] = (path, path.read_bytes())
    return files


def _outcome(name: str, path: Path, data: bytes):
    """Write ``data`` over the file and load it: None if it loads, else the error."""
    path.write_bytes(data)
    try:
        LOADERS[name][1](path)
    except Exception as err:  # noqa: BLE001 - the test is about which type comes out
        return err
    return None


def _assert_named(err: BaseException, path: Path) -> None:
    """The only acceptable failure: a DamagedFileError naming the file, with no pickle advice. (A
    checkpoint whose key names were damaged may also load as a well-formed state dict that does not
    fit the model: that error names the file too.)"""
    if isinstance(err, ValueError) and not isinstance(err, DamagedFileError) and "does not fit" in str(err):
        assert str(path) in str(err)
        return
    assert isinstance(err, DamagedFileError), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert str(path) in msg and "\n" not in msg, msg
    for forbidden in ("allow_pickle", "weights_only", "add_safe_globals", "trust"):
        assert forbidden not in msg, msg


# ---------------------------------------------------------------------------------------------
# The valid files load; the simplest damages give the named error


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_valid_file_loads(name, valid_files):
    pytest.importorskip("PIL")
    path, data = valid_files[name]
    assert _outcome(name, path, data) is None


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("damage", ["empty", "half", "garbage", "last_byte"])
def test_simple_damage_names_the_file(name, damage, valid_files):
    pytest.importorskip("PIL")
    path, data = valid_files[name]
    bad = {"empty": b"", "half": data[: len(data) // 2], "garbage": bytes(range(256)) * 3,
           "last_byte": data[:-1]}[damage]
    err = _outcome(name, path, bad)
    if name in ("image",) and damage == "last_byte" and err is None:
        return  # a PNG's last byte is the IEND chunk's CRC, which Pillow does not need
    assert err is not None
    _assert_named(err, path)
    path.write_bytes(data)


@pytest.mark.parametrize("name", sorted(set(LOADERS) - {"image"}))
def test_missing_file_is_file_not_found(name, valid_files):
    path, data = valid_files[name]
    path.unlink()
    try:
        with pytest.raises(FileNotFoundError):
            LOADERS[name][1](path)
    finally:
        path.write_bytes(data)


def test_image_deleted_after_indexing_is_file_not_found(valid_files):
    pytest.importorskip("PIL")
    from btkd.data.imagefolder import ImageFolderDataset

    path, data = valid_files["image"]
    ds = ImageFolderDataset(path.parents[1])
    path.unlink()
    try:
        with pytest.raises(FileNotFoundError):
            ds[0]
    finally:
        path.write_bytes(data)


def test_npz_that_is_not_a_zip_gets_no_pickle_advice(tmp_path):
    # numpy answers a non-zip .npz with "Cannot load file containing pickled data when allow_pickle=False"
    (tmp_path / "test.npz").write_bytes(b"\x80\x04K\x05.")  # a pickle of the int 5
    with pytest.raises(DamagedFileError, match=r"test\.npz: .*not a numpy \.npz archive.*re-copy") as err:
        load_split("cifar100", tmp_path, "test")
    assert "pickle" not in str(err.value)


def test_npz_with_an_object_array_gets_no_pickle_advice(tmp_path):
    np.savez(tmp_path / "test.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(DamagedFileError, match=r"test\.npz") as err:
        load_split("cifar100", tmp_path, "test")
    assert "allow_pickle" not in str(err.value)


def test_npz_flipped_pixel_is_caught_by_the_zip_crc(tmp_path):
    path = _write_npz(tmp_path)
    data = bytearray(path.read_bytes())
    data[data.index(b"\x93NUMPY") + 200] ^= 0xFF  # a pixel of x, after its .npy header
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="CRC"):
        load_split("cifar100", tmp_path, "test")


def test_labels_out_of_range_name_the_file(tmp_path):
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([3, 100]))
    with pytest.raises(DamagedFileError, match=r"test\.npz: labels must lie in \[0, 100\).*\[3, 100\]"):
        load_split("cifar100", tmp_path, "test")


def test_checkpoint_with_a_flipped_tensor_byte_is_refused(tmp_path):
    # torch.load does not check the zip CRCs: this used to load a silently different weight.
    path = _write_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    weight = _model_state()["fc.weight"].numpy().tobytes()
    data[bytes(data).index(weight) + 1] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=rf"{path}: .*CRC.*delete it and rerun"):
        load_checkpoint_file(path)


def test_checkpoint_saved_without_crcs_still_loads(tmp_path):
    config = getattr(torch.utils.serialization, "config", None) if hasattr(torch.utils, "serialization") else None
    if config is None or not hasattr(config.save, "compute_crc32"):
        pytest.skip("this torch always records CRCs")
    config.save.compute_crc32 = False
    try:
        torch.save({"w": torch.arange(4.0)}, tmp_path / "nocrc.pt")
    finally:
        config.save.compute_crc32 = True
    assert load_checkpoint_file(tmp_path / "nocrc.pt")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


class _Arbitrary:
    pass


def test_checkpoint_holding_python_objects_is_not_executed(tmp_path):
    torch.save({"model": _model_state(), "extra": _Arbitrary()}, tmp_path / "obj.pt")
    for load in (load_checkpoint_file, lambda p: load_checkpoint(_Linear(), p)):
        with pytest.raises(DamagedFileError,
                           match=r"not a plain tensor checkpoint.*_Arbitrary.*will not execute code") as err:
            load(tmp_path / "obj.pt")
        _assert_named(err.value, tmp_path / "obj.pt")


def test_cifar_pickle_with_wrong_contents_names_the_file(tmp_path):
    path = _write_cifar_pickle(tmp_path)
    path.write_bytes(pickle.dumps(None, protocol=2))
    with pytest.raises(DamagedFileError, match=rf"{path}: expected a dict with keys b'data'"):
        load_split("cifar100", tmp_path, "test")


# ---------------------------------------------------------------------------------------------
# Property: random damage of every kind


def _damage(data: bytes):
    """A strategy of damaged versions of ``data``: truncations, byte flips, empty, garbage."""
    n = len(data)

    def flip(positions_values):
        out = bytearray(data)
        for pos, value in positions_values:
            out[pos % n] ^= value
        return bytes(out)

    return st.one_of(
        st.integers(0, n - 1).map(lambda k: data[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4).map(flip),
        st.just(b""),
        st.binary(min_size=1, max_size=300),
        st.binary(min_size=1, max_size=40).map(lambda junk: data[:16] + junk),  # a valid header, then junk
    )


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_random_damage_gives_the_named_error(name, valid_files):
    pytest.importorskip("PIL")
    path, data = valid_files[name]

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_damage(data))
    def check(bad):
        err = _outcome(name, path, bad)
        if err is not None:
            _assert_named(err, path)

    try:
        check()
    finally:
        path.write_bytes(data)


def test_build_model_checkpoint_layout_is_unchanged(tmp_path):
    # The named errors wrap reading only: a sound published-layout checkpoint still loads strictly.
    model = build_model("resnet8", num_classes=10)
    torch.save({"model": model.state_dict(), "best_acc": np.float64(1.0)}, tmp_path / "r8.pth")
    loaded = load_checkpoint(build_model("resnet8", num_classes=10), tmp_path / "r8.pth")
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k
