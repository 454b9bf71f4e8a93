"""The plain reference loop the benchmarks compare against: what most KD codebases run.

A DataLoader with per-sample transforms in worker processes (random crop with padding, flip,
normalise), fp32, contiguous tensors, the stock (foreach) SGD, and an eager step: teacher forward,
student forward, KD loss, backward, optimizer step, and the loss read back to the host every step.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from btkd import Distill


class PerSampleCIFAR(Dataset):
    """uint8 NCHW images, transformed one sample at a time as torchvision's transforms would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, train: bool = True, pad: int = 4):
        self.images, self.labels, self.train, self.pad = images.numpy(), labels.numpy(), train, pad
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].astype(np.float32) / 255.0
        if self.train:
            p = self.pad
            padded = np.pad(x, ((0, 0), (p, p), (p, p)))
            oy, ox = np.random.randint(0, 2 * p + 1, size=2)
            x = padded[:, oy:oy + x.shape[1], ox:ox + x.shape[2]]
            if np.random.rand() < 0.5:
                x = x[:, :, ::-1]
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.labels[i])


def reference_loader(split, batch_size: int, workers: int, train: bool = True) -> DataLoader:
    ds = PerSampleCIFAR(split.images, split.labels, split.mean, split.std, train=train)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def time_reference_steps(teacher, student, loader, device, steps: int, warmup: int) -> float:
    """Seconds per step of the reference loop (median-free: wall time over ``steps`` steps)."""
    loss_fn = Distill("kd", validate=False)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    student.train()
    it = iter(loader)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            t = teacher(x)
        terms = loss_fn(student(x), t, y)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        terms["total"].item()  # the per-step logging sync of a typical loop
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def time_reference_eval(model, loader, device) -> float:
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    correct = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
    model.train()
    return time.perf_counter() - t0
