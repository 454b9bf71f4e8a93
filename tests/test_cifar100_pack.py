"""benchmarks/cifar100/pack.py: CIFAR-100 packed for the GPU calls and unpacked there, losslessly and
checked, into shards btkd reads."""

import hashlib
import json
import lzma
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from btkd.data import load_cifar100, verify_checksums
from repo_scripts import load_script
from trees import write_shards


@pytest.fixture(scope="module")
def pack():
    return load_script("benchmarks/cifar100/pack.py")


def test_residual_by_hand(pack):
    g = np.array([[10, 12], [11, 20]])
    x = np.stack([g + 5, g, g - 3], axis=-1)[None].astype(np.uint8)  # R = G + 5, B = G - 3
    q = pack.residual(x)
    # green: the gradient predictor's residual, pixel - left - up + up-left
    assert q[0, 1].tolist() == [[10, 2], [1, 7]]
    # red and blue less green: a constant offset leaves it only in the first pixel (mod 256)
    assert q[0, 0].tolist() == [[5, 0], [0, 0]]
    assert q[0, 2].tolist() == [[253, 0], [0, 0]]
    assert np.array_equal(pack.restore(q), x)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_restore_inverts_residual(pack, x):
    q = pack.residual(x)
    assert q.dtype == np.uint8 and q.shape == (x.shape[0], 3, x.shape[1], x.shape[2])
    assert np.array_equal(pack.restore(q), x)


def test_pack_then_unpack_gives_the_source_arrays(pack, tmp_path):
    src = tmp_path / "src"
    original = write_shards(src)
    pack.main(["pack", str(src), str(tmp_path / "packed")])
    packed = sorted(p.name for p in (tmp_path / "packed").iterdir())
    assert packed == ["packed.json", "test.xz", "train-0.xz", "train-1.xz"]
    # smooth images: the residual compresses far below the source's zlib
    xz = sum(p.stat().st_size for p in (tmp_path / "packed").glob("*.xz"))
    npz = sum(p.stat().st_size for p in src.glob("*.npz"))
    assert xz < 0.6 * npz
    dest = tmp_path / "stage"
    pack.main(["unpack", str(tmp_path / "packed"), str(dest)])
    for name, (x, y) in original.items():
        with np.load(dest / f"{name}.npz", allow_pickle=False) as d:
            assert np.array_equal(d["x"], x) and d["x"].dtype == np.uint8
            assert np.array_equal(d["y"], y) and d["y"].dtype == np.int64
    assert sorted(verify_checksums(dest, required=True)) == ["test.npz", "train-0.npz", "train-1.npz"]
    assert (dest / "SOURCE_SHA256SUMS").read_text() == (src / "SHA256SUMS").read_text()
    # btkd reads the rebuilt shards as it reads the source ones
    a, b = load_cifar100(src, "train"), load_cifar100(dest, "train", verify=True)
    assert a.images.shape == (70, 3, 32, 32)
    assert (a.images == b.images).all() and (a.labels == b.labels).all()


def test_pack_is_cached_on_the_source_checksums(pack, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "packed"
    write_shards(src)
    pack.pack(src, dest)
    first = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    os.utime(dest / "train-0.xz", ns=(1, 1))
    pack.pack(src, dest)  # same SHA256SUMS: nothing redone
    assert (dest / "train-0.xz").stat().st_mtime_ns == 1
    (dest / "test.xz").write_bytes(b"damaged")  # a damaged cache is packed again, not sent
    pack.pack(src, dest)
    assert lzma.decompress((dest / "test.xz").read_bytes()) and (dest / "train-0.xz").stat().st_mtime_ns != 1
    write_shards(src, sizes=(("train-0", 12), ("test", 8)))  # new data, new checksums: packed again
    manifest = pack.pack(src, dest)
    assert sorted(manifest["shards"]) == ["test", "train-0"]
    assert manifest["shards"]["train-0"]["shape"] == [12, 32, 32, 3]
    assert "train-1.xz" in first and not (dest / "train-1.xz").exists()  # the old pack's shard does not travel


def test_pack_refuses_a_shard_that_fails_its_checksum(pack, tmp_path):
    src = tmp_path / "src"
    write_shards(src)
    x = np.zeros((40, 32, 32, 3), np.uint8)
    np.savez_compressed(src / "train-0.npz", x=x, y=np.zeros(40, np.int64))
    with pytest.raises(ValueError, match=r"train-0.npz does not match its SHA256SUMS"):
        pack.pack(src, tmp_path / "packed")
    assert not (tmp_path / "packed" / "packed.json").exists()  # no manifest: never taken for a finished pack


def test_unpack_refuses_damaged_data(pack, tmp_path):
    src, packed = tmp_path / "src", tmp_path / "packed"
    write_shards(src)
    pack.pack(src, packed)
    manifest = json.loads((packed / "packed.json").read_text())
    body = bytearray(lzma.decompress((packed / "train-1.xz").read_bytes()))
    body[100] ^= 1  # one pixel's residual off by one: the right length, the wrong image

    def damage(data: bytes) -> None:  # a packed file replaced, and (worse) the manifest made to agree
        (packed / "train-1.xz").write_bytes(data)
        manifest["shards"]["train-1"]["xz_sha256"] = hashlib.sha256(data).hexdigest()
        (packed / "packed.json").write_text(json.dumps(manifest))

    (packed / "train-1.xz").write_bytes(lzma.compress(bytes(body)))
    with pytest.raises(ValueError, match=r"train-1.xz differs from the file packed \(sha256\)"):
        pack.unpack(packed, tmp_path / "stage")
    damage(lzma.compress(bytes(body)))
    with pytest.raises(ValueError, match=r"train-1: the unpacked arrays differ from the source's"):
        pack.unpack(packed, tmp_path / "stage")
    damage(lzma.compress(bytes(body[:-8])))  # a label short
    with pytest.raises(ValueError, match=r"train-1.xz holds .* bytes, not the .* of 30 images"):
        pack.unpack(packed, tmp_path / "stage2")
    assert not (tmp_path / "stage2" / "SHA256SUMS").exists()
