"""Pack CIFAR-100's uint8 shards for the trip to the GPU machine, and unpack them there.

Every call to that machine carries at most 64 MiB, the committed teachers included, so the data
takes several calls, and each call costs window time. The shards as they are (``savez_compressed``,
zlib) keep 91 % of the raw image bytes. Packed, they keep about 57 %: each image's pixels are
replaced by their 2-D difference residual (pixel - left - up + up-left, mod 256), red and blue then
less green, and the result goes through xz.

The packing is lossless and checked: ``pack`` first checks the source against its SHA256SUMS and
records the sha256 of every array; ``unpack`` rebuilds the arrays, refuses any whose sha256
differs, and writes them as plain ``.npz`` shards (``x`` uint8 NHWC, ``y`` int64, the layout
``btkd.data`` reads) with a SHA256SUMS of the rebuilt files, which ``unit.sh`` checks before it
trains. The rebuilt files are not byte-identical to the source ones (zip timestamps, no zlib), the
arrays are.

    python benchmarks/cifar100/pack.py pack SRC DEST      # here; skipped when DEST already packs SRC
    python3 benchmarks/cifar100/pack.py unpack SRC DEST   # on the GPU machine: numpy and the stdlib

Standalone on purpose (numpy and the stdlib), so that it runs on any python3 with numpy. Shards go
through threads: xz, hashlib and numpy release the GIL.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FORMAT = 2  # 2: each .xz's own sha256, checked on a cache hit and before unpacking
MANIFEST = "packed.json"


def residual(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> their uint8 residual planes (N, 3, H, W), wrapping mod 256."""
    p = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    r = p.copy()
    r[..., 1:] = p[..., 1:] - p[..., :-1]            # left difference
    q = r.copy()
    q[..., 1:, :] = r[..., 1:, :] - r[..., :-1, :]   # then up: the gradient predictor's residual
    q[:, 0] -= q[:, 1]                               # the channels move together: R, B less G
    q[:, 2] -= q[:, 1]
    return q


def restore(q: np.ndarray) -> np.ndarray:
    """The inverse of ``residual``: uint8 (N, 3, H, W) residual planes -> uint8 (N, H, W, 3) images."""
    q = q.copy()
    q[:, 0] += q[:, 1]
    q[:, 2] += q[:, 1]
    r = np.cumsum(q, axis=2, dtype=np.uint8)  # uint8 accumulation wraps mod 256, as the differences did
    p = np.cumsum(r, axis=3, dtype=np.uint8)
    return np.ascontiguousarray(p.transpose(0, 2, 3, 1))


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:  # btkd.weights.file_sha256's twin: btkd would import torch here
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_sums(folder: Path) -> dict[str, str]:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        sys.exit(f"{folder} has no SHA256SUMS: pack only shards whose checksums are known")
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def _pack_one(src: str, dest: str, name: str, want_sha: str) -> dict:
    path = Path(src, name + ".npz")
    if _file_sha256(path) != want_sha:
        raise ValueError(f"{path} does not match its SHA256SUMS: re-copy it from its source before packing")
    with np.load(path, allow_pickle=False) as d:
        x, y = d["x"], d["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or y.shape != (len(x),):
        raise ValueError(f"{path}: expected x uint8 (N, H, W, 3) and y (N,), got {x.dtype} {x.shape}, {y.shape}")
    y = y.astype("<i8")
    body = residual(x).tobytes() + y.tobytes()
    packed = lzma.compress(body, preset=6)
    Path(dest, name + ".xz").write_bytes(packed)
    return {"shape": list(x.shape), "x_sha256": _sha256(x.tobytes()), "y_sha256": _sha256(y.tobytes()),
            "xz_sha256": _sha256(packed)}


def pack(src: Path, dest: Path) -> dict:
    """Pack every shard listed in ``src/SHA256SUMS`` into ``dest`` (cached on that file's text)."""
    sums_text = (src / "SHA256SUMS").read_text() if (src / "SHA256SUMS").is_file() else None
    sums = _read_sums(src)
    names = sorted(n[:-len(".npz")] for n in sums if n.endswith(".npz"))
    old = dest / MANIFEST
    if old.is_file():
        manifest = json.loads(old.read_text())
        # a cache hit only when every packed file is whole: a damaged one would be found on the GPU
        # machine, after the whole window's staging
        if manifest.get("format") == FORMAT and manifest.get("source_sha256sums") == sums_text \
                and sorted(manifest["shards"]) == names \
                and all((dest / f"{n}.xz").is_file() and _file_sha256(dest / f"{n}.xz") == info["xz_sha256"]
                        for n, info in manifest["shards"].items()):
            return manifest
    dest.mkdir(parents=True, exist_ok=True)
    old.unlink(missing_ok=True)  # written last: a half-done pack is never taken for a finished one
    for stray in dest.glob("*.xz"):  # an older pack's shards would travel with the bundle
        if stray.stem not in names:
            stray.unlink()
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        jobs = {n: pool.submit(_pack_one, str(src), str(dest), n, sums[n + ".npz"]) for n in names}
        shards = {n: job.result() for n, job in jobs.items()}
    manifest = {"format": FORMAT, "source_sha256sums": sums_text, "shards": shards}
    old.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _unpack_one(src: str, dest: str, name: str, info: dict) -> str:
    n, h, w, c = info["shape"]
    packed = Path(src, name + ".xz").read_bytes()
    if _sha256(packed) != info["xz_sha256"]:
        raise ValueError(f"{name}.xz differs from the file packed (sha256): damaged in transit; stage it again")
    body = lzma.decompress(packed)
    if len(body) != n * h * w * c + 8 * n:
        raise ValueError(f"{name}.xz holds {len(body)} bytes, not the {n * h * w * c + 8 * n} of {n} images: "
                         "damaged in transit; stage it again")
    x = restore(np.frombuffer(body, np.uint8, n * c * h * w).reshape(n, c, h, w))
    y = np.frombuffer(body, "<i8", n, offset=n * c * h * w)
    if _sha256(x.tobytes()) != info["x_sha256"] or _sha256(y.tobytes()) != info["y_sha256"]:
        raise ValueError(f"{name}: the unpacked arrays differ from the source's (sha256): stage it again")
    out = Path(dest, name + ".npz")
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, x=x, y=y.astype(np.int64))
    os.replace(tmp, out)
    return _file_sha256(out)


def unpack(src: Path, dest: Path) -> list[str]:
    """Rebuild the shards packed in ``src`` into ``dest`` and write ``dest/SHA256SUMS``; their names."""
    manifest = json.loads((src / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        sys.exit(f"{src / MANIFEST}: format {manifest.get('format')}, this script reads {FORMAT}")
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(manifest["shards"])
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        jobs = {n: pool.submit(_unpack_one, str(src), str(dest), n, manifest["shards"][n]) for n in names}
        digests = {n: job.result() for n, job in jobs.items()}
    (dest / "SHA256SUMS").write_text("".join(f"{digests[n]}  {n}.npz\n" for n in names))
    (dest / "SOURCE_SHA256SUMS").write_text(manifest["source_sha256sums"] or "")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.action == "pack":
        manifest = pack(args.src, args.dest)
        raw = sum(int(np.prod(s["shape"])) + 8 * s["shape"][0] for s in manifest["shards"].values())
        packed = sum((args.dest / f"{n}.xz").stat().st_size for n in manifest["shards"])
        print(f"packed {len(manifest['shards'])} shards: {packed / 2**20:.1f} MiB, "
              f"{packed / raw:.1%} of the {raw / 2**20:.1f} MiB of arrays")
    else:
        names = unpack(args.src, args.dest)
        print(f"unpacked {len(names)} shards into {args.dest}, every array checked against its source sha256")
    return 0


if __name__ == "__main__":
    sys.exit(main())
