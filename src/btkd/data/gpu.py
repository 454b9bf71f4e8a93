"""`ResidentLoader`: a whole small dataset kept on the device as uint8, batched and augmented there.

For CIFAR-sized data a DataLoader with worker processes is the bottleneck of a fast GPU: per-sample
Python transforms, collation and host-to-device copies. Here the split is copied to the device once
(50,000 CIFAR images padded by 4 are 240 MB as uint8) and each batch is one gather plus one fused
normalisation. The random draws for an epoch (order, crop offsets, flips) come from a CPU generator
seeded by (seed, epoch), so the data are identical on CPU and GPU and a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import check_layout

if TYPE_CHECKING:  # imported where used: only a loader with a strong view needs it
    from .randaugment import RandAugmentDraws


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, epoch): nearby pairs give unrelated streams. ``stream`` > 0
    gives further independent streams for the same (seed, epoch) (the strong view's draws), leaving
    stream 0, the weak view's, unchanged."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> 1)


def crop_flip(padded: Tensor, idx: Tensor, oy: Tensor, ox: Tensor, flip: Tensor, height: int, width: int) -> Tensor:
    """Gather ``padded[idx[b], :, oy[b]:oy[b]+height, ox[b]:ox[b]+width]``, mirrored where ``flip[b]``.

    One advanced-indexing gather builds the whole batch: the flip is folded into the column index
    (torch.where on the random mask picks reversed columns), so no per-sample loop and no
    intermediate copy of the padded batch.
    """
    c = padded.shape[1]
    rows = oy[:, None] + torch.arange(height, device=padded.device)  # (B, H)
    cols = torch.arange(width, device=padded.device)
    cols = ox[:, None] + torch.where(flip[:, None], (width - 1) - cols, cols)  # (B, W)
    ch = torch.arange(c, device=padded.device)
    return padded[idx[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


#: About how many positions' strong views are made at once (rounded down to whole batches).
STRONG_CHUNK = 4096


class ResidentLoader:
    """Iterate ``(x, y)`` batches over uint8 NCHW ``images`` held on ``device``.

    ``x`` is ``(images / 255 - mean) / std`` computed in float32, then cast to ``dtype`` (and made
    channels_last if asked); ``y`` is int64. With ``train=True`` the order is shuffled each epoch
    and each sample gets a random crop of the zero-padded image (offsets in ``[0, 2 * crop_padding]``,
    ``crop_padding=0`` disables it) and a horizontal flip with probability 1/2 (``flip``).
    With ``train=False``: fixed order, no augmentation, the last partial batch kept. ``shuffle`` and
    ``drop_last`` (None: ``train``) can be set apart; ``device`` defaults to the images' own.
    ``rank`` and ``world_size`` share each epoch's order among torchrun's processes, position by
    position: this process takes every ``world_size``-th sample from ``rank``.

    ``strong_view=True`` (training only) adds a second, strongly augmented view of every image, for
    two-view hosts such as MLKD: its own crop and flip, then RandAugment (two random ops) and Cutout
    (``btkd.data.randaugment``). Batches are then ``((x_weak, x_strong), y)``. The strong view's
    draws come from a stream of their own, so the weak view is the very batch a one-view loader
    with the same seed gives.

    The epoch's randomness is a pure function of ``(seed, epoch)``. Iterating runs the current
    epoch, then advances it by one, so ``for epoch in ...: for x, y in loader`` sees new data each
    epoch; `set_epoch` (or `load_state_dict`) jumps to any epoch, and to any batch within it.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, crop_padding: int = 4, flip: bool = True, drop_last: bool | None = None,
                 seed: int = 0, device: torch.device | str | None = None, shuffle: bool | None = None,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, rank: int = 0,
                 world_size: int = 1, strong_view: bool = False):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        n, c, h, w = images.shape
        if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be an integer tensor ({n},), got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_layout(images.shape, mean, std)
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0 (0 = no crop), got {crop_padding!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        if strong_view and not train:
            raise ValueError("strong_view=True makes a second augmented training view; it needs train=True")

        self.device = torch.device(device) if device is not None else images.device
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.pad = crop_padding if self.train else 0
        self.flip = bool(flip) and self.train
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.channels_last = channels_last
        self.dtype = dtype
        self.strong_view = bool(strong_view)
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.total_samples, self.image_shape = n, (c, h, w)
        # Each process takes every world_size-th position of the shared epoch order (like
        # DistributedSampler), so together the processes see each sample once per epoch. Training
        # truncates to equal shares so every process runs the same number of steps.
        if self.drop_last:
            self.num_samples = n // world_size
        else:
            self.num_samples = len(range(rank, n, world_size))
        if len(self) == 0 and self.drop_last:
            raise ValueError(f"{n} samples with batch_size={batch_size} and drop_last=True give no batch"
                             f"{f' on each of {world_size} processes' if world_size > 1 else ''}; lower the batch "
                             "size (data.batch_size in a config) or, in Python, pass drop_last=False")
        if len(self) == 0:
            raise ValueError(f"{n} samples give no batch to process {rank} of {world_size}; give it more samples "
                             "or run fewer processes")

        p = self.pad
        # Pad once here rather than per batch: the crop is then just a gather with offsets.
        if p:
            padded = torch.zeros((n, c, h + 2 * p, w + 2 * p), dtype=torch.uint8, device=self.device)
            padded[:, :, p:p + h, p:p + w] = images.to(self.device)
            self.images = padded
        else:
            self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        # (x / 255 - mean) / std == x * scale + shift, one fused multiply-add per element.
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).float().view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).float().view(1, c, 1, 1).to(self.device)

        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed out (for resuming mid-epoch)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        """Make the next iteration run epoch ``epoch``, starting at its batch ``batch``."""
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"need epoch >= 0 and 0 <= batch <= {len(self)}, got epoch={epoch}, batch={batch}")
        self.epoch, self.batch = int(epoch), int(batch)

    def state_dict(self) -> dict:
        """Where the loader is: ``{"seed", "epoch", "batch"}`` (batches of the epoch already handed out)."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict`: the next iteration gives the batches an uninterrupted loader
        would have given from there."""
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state.get("batch", 0))

    def plan(self, epoch: int, stream: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The random draws of ``epoch`` on the CPU: (order, row offsets, column offsets, flip mask),
        one entry per position in the epoch. Drawn on a CPU generator so they do not depend on
        the device; public so tests and debugging can reproduce any batch by hand. ``stream`` 1 gives
        the strong view's crop and flip draws; its order entry is unused (both views take stream 0's
        order)."""
        n = self.total_samples
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.pad:
            offs = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g)
            oy, ox = offs[0], offs[1]
        else:
            oy = ox = torch.zeros(n, dtype=torch.int64)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return self._share(order), self._share(oy), self._share(ox), self._share(flips)

    def strong_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor, RandAugmentDraws]:
        """The strong view's draws of ``epoch``, one per position: (row offsets, column offsets, flip
        mask, RandAugment and Cutout draws), from stream 1 and then stream 2."""
        from .randaugment import draw_rand_augment

        _, oy, ox, flips = self.plan(epoch, stream=1)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 2))
        return oy, ox, flips, self._share(draw_rand_augment(self.total_samples, g))

    def _share(self, draws):
        """This process's share of draws made for every position of the epoch (all processes make
        the same draws and each takes every world_size-th position, like DistributedSampler)."""
        if self.world_size == 1:
            return draws
        return draws[self.rank:self.rank + self.num_samples * self.world_size:self.world_size]

    def _normalise(self, x: Tensor) -> Tensor:
        x = torch.addcmul(self._shift, x.float(), self._scale)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple]:
        epoch, start = self.epoch, self.batch
        # One small host-to-device copy per epoch; each batch then only slices device tensors.
        order, oy, ox, flips = (t.to(self.device, non_blocking=True) for t in self.plan(epoch))
        if self.strong_view:
            from .randaugment import RandAugmentDraws, rand_augment

            s_oy, s_ox, s_flips, s_aug = self.strong_plan(epoch)
            s_oy, s_ox, s_flips = (t.to(self.device, non_blocking=True) for t in (s_oy, s_ox, s_flips))
            # the op indices stay on the CPU, where rand_augment groups the batch by op (no device sync)
            s_aug = RandAugmentDraws(s_aug.ops, s_aug.magnitudes.to(self.device), s_aug.cutout.to(self.device))
        _, h, w = self.image_shape
        augment = self.pad > 0 or self.flip
        strong_at, chunk = -1, None  # the start of the strong-view chunk in hand
        size = max(1, STRONG_CHUNK // self.batch_size) * self.batch_size  # a chunk is whole batches
        for b in range(start, len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples))
            idx = order[sl]
            if augment:
                x = crop_flip(self.images, idx, oy[sl], ox[sl], flips[sl], h, w)
            else:
                x = self.images[idx]
            self.batch = b + 1
            if self.strong_view:
                # RandAugment runs a few kernels per op whatever the batch, so it works on chunks of
                # STRONG_CHUNK positions (aligned to the epoch, so a resumed epoch makes the same
                # chunks; the op is per image, so chunking changes no pixel) and each batch slices one.
                c0 = (sl.start // size) * size
                if strong_at != c0:
                    csl = slice(c0, min(c0 + size, self.num_samples))
                    cidx = order[csl]
                    chunk = crop_flip(self.images, cidx, s_oy[csl], s_ox[csl], s_flips[csl], h, w) if augment \
                        else self.images[cidx]
                    chunk, strong_at = rand_augment(chunk, s_aug[csl]), c0
                strong = chunk[sl.start - c0:sl.stop - c0]
                yield (self._normalise(x), self._normalise(strong)), self.labels[idx]
            else:
                yield self._normalise(x), self.labels[idx]
        # Only a finished epoch advances; a loop broken early resumes where it stopped.
        self.epoch, self.batch = epoch + 1, 0
