"""A small ImageFolder tree of random images, for the tests that train on one."""

from pathlib import Path

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
