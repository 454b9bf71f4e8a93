"""CIFAR-10/100 from local files, in either of two layouts.

* uint8 shards: a folder with ``train-0.npz, train-1.npz, ...`` and ``test.npz``, each holding
  ``x`` uint8 (N, 32, 32, 3) NHWC and ``y`` int64 (N,), plus an optional ``SHA256SUMS``.
  Read with ``allow_pickle=False``: an npz is plain arrays, nothing in it can run code.
* torchvision's pickles: ``cifar-100-python/{train,test}`` or
  ``cifar-10-batches-py/{data_batch_1..5,test_batch}``. Those are Python pickles, so they go
  through `RestrictedUnpickler`, which only rebuilds numpy arrays and plain containers.

``root`` may be the shard folder, a folder containing ``cifar-100-python/`` (or
``cifar-10-batches-py/``), or that pickle folder itself.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from .._checks import damaged, reading
from .base import Split, check_split, missing, nhwc_to_split, resolve_root

_ADVICE = "re-copy it from its source (btkd.data.verify_checksums checks a folder with a SHA256SUMS file)"

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The class names in label order, as the datasets' own meta files list them (``fine_label_names`` of
# cifar-100-python/meta, alphabetical; ``label_names`` of cifar-10-batches-py/batches.meta). The uint8
# shards carry labels only, so the names live here.
CIFAR100_CLASSES = (  # ten a row: row k holds classes 10k to 10k + 9
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_VARIANTS = {
    # name: (pickle folder, train files, test file, label key, classes, mean, std, class names)
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD,
                 CIFAR100_CLASSES),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                b"labels", 10, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES),
}

_HOW_TO_GET = {
    "cifar100": (
        "Provide either uint8 shards (train-0.npz ... train-K.npz and test.npz, each with arrays "
        "x uint8 (N,32,32,3) and y int64 (N,)), or the official 'CIFAR-100 python version' "
        "(cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, the same file "
        "torchvision downloads) extracted with 'tar xzf' so that cifar-100-python/ sits in the root."
    ),
    "cifar10": (
        "Provide either uint8 shards (train-0.npz ... and test.npz, arrays x uint8 (N,32,32,3), "
        "y int64 (N,)), or the official 'CIFAR-10 python version' (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html) extracted with 'tar xzf' so that "
        "cifar-10-batches-py/ sits in the root."
    ),
}

# ---------------------------------------------------------------------------------------------
# Restricted unpickling


# Exactly what a pickled dict of numpy arrays, lists, bytes and ints needs, under numpy 1.x
# (numpy.core) and 2.x (numpy._core), for pickle protocols 0-5. Everything else is refused:
# a pickle can name any importable callable (os.system, subprocess.Popen, ...) and call it.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol <= 2 stores bytes as latin-1 text plus this call
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in ``_SAFE_GLOBALS``."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays and plain "
                "containers are allowed in a CIFAR pickle (the file is corrupt or not a CIFAR batch)"
            )
        # numpy 2 moved numpy.core to numpy._core (the old name warns); numpy 1 has only numpy.core.
        for mod in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name} in this numpy version")


def restricted_load(path: str | os.PathLike) -> object:
    """Unpickle ``path`` with an unpickler that rebuilds numpy arrays and plain containers only (any
    other global is an UnpicklingError: a pickle cannot run code through it), and
    ``encoding='bytes'`` (the CIFAR files were written by Python 2, so their keys and strings come
    back as bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


# ---------------------------------------------------------------------------------------------
# Checksums


def verify_checksums(root: str | os.PathLike, required: bool = False) -> list[str]:
    """Check every file listed in ``root/SHA256SUMS`` (``sha256sum`` format); return the names checked.

    Not done on every load (it rereads every byte of the data); call it once after copying the
    data. A missing SHA256SUMS returns [] unless ``required``. Raises ValueError on a mismatch and
    FileNotFoundError for a listed file that is absent.
    """
    root = Path(root)
    sums = root / "SHA256SUMS"
    if not sums.is_file():
        if required:
            raise FileNotFoundError(f"expected a SHA256SUMS file in {root} (lines '<sha256>  <file>'), not found")
        return []
    checked = []
    for lineno, line in enumerate(sums.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        if m is None:
            raise ValueError(f"{sums}:{lineno}: not a sha256sum line ('<64 hex digits>  <file>'): {line!r}")
        expected, fname = m.group(1).lower(), m.group(2)
        path = root / fname
        if not path.is_file():
            raise FileNotFoundError(f"{fname} is listed in {sums} but missing from {root}")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            raise ValueError(
                f"checksum mismatch for {path}: SHA256SUMS says {expected}, the file hashes to "
                f"{h.hexdigest()}; the file is corrupt or was replaced, copy it again"
            )
        checked.append(fname)
    return checked


# ---------------------------------------------------------------------------------------------
# Layout detection and loading


def _train_shards(root: Path) -> list[Path]:
    """``train-*.npz`` sorted by their number (so train-10 follows train-9, not train-1)."""
    shards = []
    for p in root.glob("train-*.npz"):
        num = p.name[len("train-"):-len(".npz")]
        if not num.isdigit():
            raise ValueError(f"unexpected shard name {p.name} in {root}: expected train-<integer>.npz")
        shards.append((int(num), p))
    return [p for _, p in sorted(shards)]


def detect_layout(root: str | os.PathLike, variant: str = "cifar100") -> tuple[str, Path]:
    """Return ("shards", folder) or ("pickle", folder) for ``root``; FileNotFoundError if neither."""
    root = Path(root)
    folder, train_files, test_file = _VARIANTS[variant][:3]
    if (root / "test.npz").is_file() or any(root.glob("train-*.npz")):
        return "shards", root
    if (root / folder).is_dir():
        return "pickle", root / folder
    if root.name == folder or any((root / f).is_file() for f in (*train_files, test_file)):
        return "pickle", root
    if not root.is_dir():
        raise FileNotFoundError(f"{variant}: data folder {root} does not exist. {_HOW_TO_GET[variant]}")
    raise FileNotFoundError(
        f"{variant}: {root} holds neither uint8 shards (train-*.npz, test.npz) nor {folder}/. "
        f"{_HOW_TO_GET[variant]}"
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, each member read whole so that zipfile checks its CRC: a
    damaged byte anywhere is an error, never a silently wrong pixel or label."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would try the bytes as a pickle, and suggest allowing it
            raise damaged(path, "is empty" if f.tell() == 0 else "is not a numpy .npz archive (no zip header)", _ADVICE)
    arrays = {}
    with reading(path, "a numpy .npz archive", _ADVICE), zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            buf = io.BytesIO(data)
            arrays[name.removesuffix(".npy")] = np.lib.format.read_array(buf, allow_pickle=False)
            if buf.tell() != len(data):
                raise ValueError(f"{len(data) - buf.tell()} bytes after the array {name}")
    return arrays


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise damaged(path, f"labels must lie in [0, {num_classes}), found values in [{labels.min()}, {labels.max()}]",
                      "is it a file of another dataset? " + _ADVICE)


def _load_npz(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_npz(path)
    if "x" not in d or "y" not in d:
        raise damaged(path, f"expected arrays 'x' and 'y', found {sorted(d)}", _ADVICE)
    x, y = d["x"], d["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise damaged(path, f"'x' must be uint8 (N, 32, 32, 3) NHWC, got {x.dtype} {x.shape}", _ADVICE)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise damaged(path, f"'y' must be integer ({x.shape[0]},), got {y.dtype} {y.shape}", _ADVICE)
    _check_labels(path, y, num_classes)
    return x, y


def _load_shards(root: Path, split: str, variant: str) -> tuple[np.ndarray, np.ndarray]:
    num_classes = _VARIANTS[variant][4]
    if split == "test":
        path = root / "test.npz"
        if not path.is_file():
            raise missing(variant, ["test.npz"], root, _HOW_TO_GET[variant])
        return _load_npz(path, num_classes)
    shards = _train_shards(root)
    if not shards:
        raise missing(variant, ["train-0.npz (train-*.npz shards)"], root, _HOW_TO_GET[variant])
    parts = [_load_npz(p, num_classes) for p in shards]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _get(d: dict, key: bytes):
    # Real CIFAR pickles (Python 2) have bytes keys; one re-saved under Python 3 has str keys.
    if key in d:
        return d[key]
    if key.decode() in d:
        return d[key.decode()]
    raise KeyError(key)


def _load_pickles(folder: Path, split: str, variant: str) -> tuple[np.ndarray, np.ndarray]:
    _, train_files, test_file, label_key, num_classes = _VARIANTS[variant][:5]
    names = train_files if split == "train" else (test_file,)
    absent = [n for n in names if not (folder / n).is_file()]
    if absent:
        raise missing(variant, absent, folder, _HOW_TO_GET[variant])
    xs, ys = [], []
    for n in names:
        path = folder / n
        with reading(path, "a CIFAR pickle", _ADVICE):
            d = restricted_load(path)
        try:
            if not isinstance(d, dict):
                raise KeyError(b"data")
            data, labels = _get(d, b"data"), _get(d, label_key)
        except (KeyError, TypeError, UnicodeDecodeError):  # TypeError: an unsortable or unhashable key
            got = sorted(map(repr, d)) if isinstance(d, dict) else type(d).__name__
            raise damaged(path, f"expected a dict with keys b'data' and {label_key!r}, got {got}", _ADVICE) from None
        with reading(path, "a CIFAR pickle", _ADVICE):
            data = np.asarray(data)
            labels = np.asarray(labels, dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise damaged(path, f"b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}", _ADVICE)
        if labels.shape != (data.shape[0],):
            raise damaged(path, f"{labels.size} labels for {data.shape[0]} images", _ADVICE)
        _check_labels(path, labels, num_classes)
        # Rows are channel-major (1024 R, then G, then B), i.e. already CHW; go to NHWC so both
        # layouts share nhwc_to_split.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(root: str | os.PathLike | None, split: str = "train", variant: str = "cifar100",
               verify: bool = False) -> Split:
    """Load one CIFAR split from either layout as a uint8 NCHW `Split`.

    ``verify=True`` first checks ``SHA256SUMS`` (shard layout only, when the file is present).
    """
    split = check_split(split)
    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(_VARIANTS)}")
    *_, num_classes, mean, std, classes = _VARIANTS[variant]

    def found(p: Path) -> bool:
        try:
            detect_layout(p, variant)
            return True
        except FileNotFoundError:
            return False

    root = resolve_root(variant, root, found, _HOW_TO_GET[variant])
    kind, folder = detect_layout(root, variant)
    if kind == "shards":
        if verify:
            verify_checksums(folder)
        x, y = _load_shards(folder, split, variant)
    else:
        x, y = _load_pickles(folder, split, variant)
    if variant == "cifar100" and len(y) >= 100 and y.max() < 10:
        # CIFAR-10's files pass CIFAR-100's label range, and would train a 100-way model on 10 classes
        raise ValueError(f"cifar100: all {len(y)} {split} labels in {folder} lie in 0..9, as CIFAR-10's do: "
                         "CIFAR-100's have 100 classes. Use data.name=cifar10 (a cifar10/ config) for CIFAR-10, or "
                         "point data.root at the CIFAR-100 files")
    return nhwc_to_split(x, y, num_classes=num_classes, mean=mean, std=std, name=variant, classes=classes)


def load_cifar100(root: str | os.PathLike | None = None, split: str = "train", verify: bool = False) -> Split:
    """Load CIFAR-100's ``"train"`` or ``"test"`` split as a `Split`: uint8 (N, 3, 32, 32) images,
    100 classes, and the dataset's per-channel mean and std.

    ``root`` holds uint8 shards (``train-0.npz`` ... and ``test.npz``, arrays ``x`` uint8
    (N, 32, 32, 3) and ``y``) or torchvision's ``cifar-100-python/`` (read by an unpickler that can
    build arrays only), or is that folder; None searches ``$BTKD_DATA/cifar100``, ``data/cifar100``
    and ``../shared/data/cifar100``. ``verify=True`` first checks the shards against ``SHA256SUMS``
    (`verify_checksums`). Missing files are a FileNotFoundError saying where to put them; CIFAR-10's
    files, a ValueError."""
    return load_cifar(root, split, "cifar100", verify=verify)


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train", verify: bool = False) -> Split:
    """Load CIFAR-10's ``"train"`` or ``"test"`` split, as `load_cifar100` does CIFAR-100's (the
    pickle folder is ``cifar-10-batches-py/``; None searches ``<dir>/cifar10``)."""
    return load_cifar(root, split, "cifar10", verify=verify)
