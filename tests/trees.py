"""Small datasets on disk for the tests that read one: an ImageFolder tree of random images, and
CIFAR-style uint8 shards."""

import hashlib
from pathlib import Path

import numpy as np
import torch


def random_image_tree(root: Path, counts, size=(12, 12), classes=("cat", "dog"), suffix=".png", seed=0) -> Path:
    """``root/<split>/<class>/<i><suffix>``: ``counts`` maps each split to its images per class;
    pixels from a seeded generator. Returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, n in counts.items():
        for cls in classes:
            folder = Path(root) / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")
    return Path(root)


def write_shards(root: Path, sizes=(("train-0", 40), ("train-1", 30), ("test", 20))) -> dict:
    """CIFAR-100 shards in the source's form (savez_compressed, SHA256SUMS), smooth images as photos
    are, 100 classes; returns {shard: (x, y)}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays_, lines = {}, []
    for name, n in sizes:
        base = rng.integers(0, 256, (n, 1, 1, 3))
        ramp = np.arange(32)[None, :, None, None] + np.arange(32)[None, None, :, None]
        x = ((base + 3 * ramp + rng.integers(-2, 3, (n, 32, 32, 3))) % 256).astype(np.uint8)
        y = rng.integers(0, 100, n).astype(np.int64)
        np.savez_compressed(root / f"{name}.npz", x=x, y=y)
        arrays_[name] = (x, y)
        lines.append(f"{hashlib.sha256((root / f'{name}.npz').read_bytes()).hexdigest()}  {name}.npz")
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return arrays_
