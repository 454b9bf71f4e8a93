"""Batched RandAugment + Cutout on uint8 image tensors: the "strong" view of FixMatch-style training (MLKD, CIFAR).

Each image gets ``num_ops`` ops drawn uniformly (with replacement) from `OPS`, each with a magnitude drawn
uniformly in the op's range, then a Cutout square. `draw_rand_augment` makes every random draw up front on a
CPU generator, so `rand_augment` is a pure function of (images, draws): the same on CPU and CUDA and
reproducible from a seed. Every op reproduces Pillow's result on an "RGB" or "L" image bit for bit:
its float32 blends truncated, its 3x3 SMOOTH filter, its 16.16 fixed-point nearest-neighbour affine
sampling and its inclusive rectangle fill (the tests compare against Pillow).
Work is vectorised per op: for each op slot, each op runs once on the sub-batch that drew it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# (name, low, high): the op value is low + (high - low) * u, u ~ U[0, 1).
OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0), ("Brightness", 0.05, 0.95), ("Color", 0.05, 0.95), ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0), ("Identity", 0.0, 1.0), ("Posterize", 4.0, 8.0), ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3),
)
CUTOUT_FILL_RGB = (125, 123, 114)
CUTOUT_FILL_L = 121  # the mean of CUTOUT_FILL_RGB, rounded, for 1-channel images


@dataclass
class RandAugmentDraws:
    """The random draws for ``n`` images, all CPU-generated (see `draw_rand_augment`).

    ``ops``: int64 ``(n, num_ops)`` indices into `OPS`, applied left to right. ``magnitudes``: float32
    ``(n, num_ops)`` op values, already in the op's range. ``cutout``: float32 ``(n, 3)`` columns
    ``(s, cx, cy)`` as fractions: side ``s * W`` pixels (0 = no cutout), centre ``(cx * W, cy * H)``.
    """

    ops: Tensor
    magnitudes: Tensor
    cutout: Tensor

    def __len__(self) -> int:
        return self.ops.shape[0]

    def __getitem__(self, index) -> "RandAugmentDraws":
        """The draws at ``index`` (int, slice, or integer/bool tensor of positions), still 2-D."""
        if isinstance(index, int):
            index = torch.tensor([index])
        if isinstance(index, Tensor):
            index = index.to(self.ops.device)
        return RandAugmentDraws(self.ops[index], self.magnitudes[index], self.cutout[index])

    def to(self, device) -> "RandAugmentDraws":
        """The same draws on ``device`` (`rand_augment` does this itself when needed)."""
        return RandAugmentDraws(self.ops.to(device), self.magnitudes.to(device), self.cutout.to(device))


def draw_rand_augment(n: int, generator: torch.Generator, num_ops: int = 2, max_cutout: float = 0.5) -> RandAugmentDraws:
    """Draw ops, magnitudes and cutouts for ``n`` images from the CPU ``generator``.

    The draws are made in a fixed order (op indices, then magnitudes, then cutouts), so they are a pure
    function of the generator state. Cutout sides are ``max_cutout * u`` (a fraction of the width).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be an integer >= 0, got {num_ops!r}")
    if not isinstance(max_cutout, (int, float)) or not 0.0 <= max_cutout <= 1.0:
        raise ValueError(f"max_cutout must be a number in [0, 1], got {max_cutout!r}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")
    ops = torch.randint(0, len(OPS), (n, num_ops), generator=generator)
    u = torch.rand((n, num_ops), generator=generator)
    cutout = torch.rand((n, 3), generator=generator)
    low = torch.tensor([op[1] for op in OPS], dtype=torch.float32)
    high = torch.tensor([op[2] for op in OPS], dtype=torch.float32)
    magnitudes = low[ops] + (high - low)[ops] * u
    cutout[:, 0] *= float(max_cutout)
    return RandAugmentDraws(ops, magnitudes, cutout)


def _f32(value: float, like: Tensor) -> Tensor:
    # A float32 tensor constant, so arithmetic stays in float32 exactly as Pillow's C code does; filled
    # on the device (torch.tensor(value, device=...) would be a blocking copy from the host).
    return torch.full((), value, dtype=torch.float32, device=like.device)


def _blend(degenerate: Tensor, img: Tensor, v: Tensor) -> Tensor:
    """Pillow's Image.blend(degenerate, img, v): ``deg + v * (img - deg)`` in float32, clipped, truncated."""
    d = degenerate.float()
    return (d + v.view(-1, 1, 1, 1) * (img.float() - d)).clamp_(0, 255).trunc_().to(torch.uint8)


def _gray(x: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in 16.16 fixed point, rounded), as int32 (m, 1, H, W)."""
    if x.shape[1] == 1:
        return x.int()
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def _autocontrast(x: Tensor, v: Tensor) -> Tensor:
    lo = x.amin((2, 3), keepdim=True).double()
    hi = x.amax((2, 3), keepdim=True).double()
    # float64 and this operation order, as in ImageOps; a tensor numerator, since torch computes
    # scalar / tensor as scalar * reciprocal(tensor), which can differ in the last bit
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)
    y = (x.double() * scale + (-lo * scale)).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(hi > lo, y, x)


def _equalize(x: Tensor, v: Tensor) -> Tensor:
    m, c, h, w = x.shape
    flat = x.reshape(m * c, h * w).long()
    offsets = torch.arange(m * c, device=x.device).unsqueeze(1) * 256
    # scatter_add (not bincount) so CUDA needs no host sync to size the result
    hist = torch.zeros(m * c * 256, dtype=torch.long, device=x.device)
    hist = hist.scatter_add_(0, (flat + offsets).view(-1), torch.ones_like(flat).view(-1)).view(m * c, 256)
    last = hist.gather(1, flat.amax(1, keepdim=True))  # count of the highest value present
    step = (h * w - last) // 255
    lut = (step // 2 + hist.cumsum(1) - hist) // step.clamp(min=1)
    use = ((hist > 0).sum(1, keepdim=True) > 1) & (step > 0)
    out = torch.where(use, lut.gather(1, flat).clamp(max=255), flat)  # Image.point clips LUT values to 255
    return out.to(torch.uint8).view(m, c, h, w)


def _posterize(x: Tensor, v: Tensor) -> Tensor:
    shift = 8 - v.trunc().long().clamp(1, 8)
    return x & ((255 >> shift) << shift).to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(x: Tensor, v: Tensor) -> Tensor:
    return torch.where(x.float() >= v.view(-1, 1, 1, 1), 255 - x, x)


def _color(x: Tensor, v: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend(_gray(x).expand_as(x), x, v)


def _contrast(x: Tensor, v: Tensor) -> Tensor:
    total = _gray(x).sum((1, 2, 3), dtype=torch.long).double()
    mean = total / torch.full_like(total, x.shape[2] * x.shape[3])  # a true division (see _autocontrast)
    return _blend((mean + 0.5).floor().view(-1, 1, 1, 1).expand_as(x), x, v)


def _sharpness(x: Tensor, v: Tensor) -> Tensor:
    """Blend with Pillow's SMOOTH filter: float32 kernel /13, rows summed bottom-up, +0.5, borders kept."""
    f = x.float()
    smooth = f.clone()
    if x.shape[2] >= 3 and x.shape[3] >= 3:
        k1, k5 = _f32(1 / 13, x), _f32(5 / 13, x)

        def row(r: Tensor, kc: Tensor) -> Tensor:
            return (r[..., :-2] * k1 + r[..., 1:-1] * kc) + r[..., 2:] * k1

        ss = ((_f32(0.5, x) + row(f[:, :, 2:], k1)) + row(f[:, :, 1:-1], k5)) + row(f[:, :, :-2], k1)
        smooth[:, :, 1:-1, 1:-1] = ss.clamp(0, 255).trunc()
    return _blend(smooth, x, v)


def _sample(x: Tensor, xin: Tensor, yin: Tensor) -> Tensor:
    """Nearest-neighbour gather of source pixels (xin, yin), int64 (m, H, W); outside the image -> 0."""
    m, c, h, w = x.shape
    inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)).view(m, 1, h * w)
    src = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(m, 1, h * w).expand(m, c, h * w)
    out = x.reshape(m, c, h * w).gather(2, src)
    return torch.where(inside, out, torch.zeros_like(out)).view(m, c, h, w)


def _grid(x: Tensor) -> tuple[Tensor, Tensor]:
    h, w = x.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    return xs, ys


def _matrix(v: Tensor, col: int, scale: float = 1.0) -> Tensor:
    """Identity affine matrices (m, 6), float64, with entry ``col`` set to ``v * scale``."""
    a = torch.zeros((len(v), 6), dtype=torch.float64, device=v.device)  # filled there: no copy from the host
    a[:, 0].fill_(1.0)
    a[:, 4].fill_(1.0)
    a[:, col] = v.double() * scale
    return a


def _affine(x: Tensor, a: Tensor, fixed: bool = True) -> Tensor:
    """Image.transform(AFFINE, a) with NEAREST: output pixel (x, y) reads the input at
    (a0 x' + a1 y' + a2, a3 x' + a4 y' + a5) for its centre (x', y') = (x + 0.5, y + 0.5), floored.
    Pillow computes that in 16.16 fixed point (integer sums, so exact here too), except for a pure
    translation (``fixed=False``, a0 = a4 = 1), which it computes in float64."""
    xs, ys = _grid(x)
    a0, a1, a2, a3, a4, a5 = (t.view(-1, 1, 1) for t in a.unbind(1))
    if not fixed:
        return _sample(x, torch.floor((a2 + 0.5) + xs).long(), torch.floor((a5 + 0.5) + ys).long())
    fix = lambda t: torch.floor(t * 65536.0 + 0.5).long()  # noqa: E731
    xx = fix(a2 + a0 * 0.5 + a1 * 0.5) + xs * fix(a0) + ys * fix(a1)
    yy = fix(a5 + a3 * 0.5 + a4 * 0.5) + xs * fix(a3) + ys * fix(a4)
    return _sample(x, xx >> 16, yy >> 16)


def _rotate(x: Tensor, v: Tensor) -> Tensor:
    """Image.rotate(v): counter-clockwise about (W/2, H/2); the matrix built in float64 as Pillow does."""
    h, w = x.shape[2:]
    theta = -((v.double() % 360.0) * (math.pi / 180.0))
    e15 = torch.full_like(theta, 1e15)  # Pillow rounds the matrix to 15 decimals
    cos = torch.round(torch.cos(theta) * e15) / e15
    sin = torch.round(torch.sin(theta) * e15) / e15
    cx, cy = w / 2, h / 2
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return _affine(x, torch.stack([cos, sin, c, -sin, cos, f], 1))


_APPLY = {
    "AutoContrast": _autocontrast,
    "Brightness": lambda x, v: _blend(torch.zeros_like(x), x, v),
    "Color": _color,
    "Contrast": _contrast,
    "Equalize": _equalize,
    "Posterize": _posterize,
    "Rotate": _rotate,
    "Sharpness": _sharpness,
    "ShearX": lambda x, v: _affine(x, _matrix(v, 1)),
    "ShearY": lambda x, v: _affine(x, _matrix(v, 3)),
    "Solarize": _solarize,
    "TranslateX": lambda x, v: _affine(x, _matrix(v, 2, x.shape[3]), fixed=False),
    "TranslateY": lambda x, v: _affine(x, _matrix(v, 5, x.shape[2]), fixed=False),
}


def _cutout(x: Tensor, cut: Tensor) -> Tensor:
    """Fill ImageDraw.rectangle((x0, y0, x1, y1)): corners truncated to int, both inclusive, clipped."""
    b, c, h, w = x.shape
    s, cx, cy = cut.double().unbind(1)
    side = s * w  # the side is a fraction of the width for both axes, as in the reference
    x0 = torch.clamp(cx * w - side / 2, min=0).trunc()
    y0 = torch.clamp(cy * h - side / 2, min=0).trunc()
    x1 = torch.clamp(x0 + side, max=w).trunc()
    y1 = torch.clamp(y0 + side, max=h).trunc()
    xs, ys = _grid(x)
    v = lambda t: t.view(-1, 1, 1)  # noqa: E731
    mask = (v(s) > 0) & (xs >= v(x0)) & (xs <= v(x1)) & (ys >= v(y0)) & (ys <= v(y1))
    fill = torch.empty((1, c, 1, 1), dtype=torch.uint8, device=x.device)
    for i, value in enumerate(CUTOUT_FILL_RGB if c == 3 else (CUTOUT_FILL_L,)):
        fill[:, i].fill_(value)  # on the device: torch.tensor(..., device=...) would be a blocking copy
    return torch.where(mask.unsqueeze(1), fill, x)


def rand_augment(images: Tensor, draws: RandAugmentDraws) -> Tensor:
    """Apply ``draws`` to uint8 ``images`` (B, C, H, W), C = 1 or 3, on any device; returns a new tensor.

    For each op slot in turn, every op runs once on the sub-batch that drew it; then the cutout.
    The grouping uses a CPU copy of the op indices, so on CUDA it needs no host sync beyond that copy.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a uint8 tensor (B, C, H, W) with C = 1 or 3, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(draws, RandAugmentDraws):
        raise ValueError(f"draws must be a RandAugmentDraws, got {type(draws).__name__}")
    b = images.shape[0]
    if (draws.ops.dim() != 2 or draws.ops.shape[0] != b or draws.magnitudes.shape != draws.ops.shape
            or draws.cutout.shape != (b, 3)):
        raise ValueError(f"draws must hold {b} images (one per image): ops and magnitudes (B, num_ops), cutout (B, 3); "
                         f"got {tuple(draws.ops.shape)}, {tuple(draws.magnitudes.shape)}, {tuple(draws.cutout.shape)}")
    ops = draws.ops.cpu()
    if ops.numel() and (ops.min() < 0 or ops.max() >= len(OPS)):
        raise ValueError(f"draws.ops must be indices in [0, {len(OPS)}), got values in [{ops.min()}, {ops.max()}]")
    dev = images.device
    mags = draws.magnitudes.to(dev, torch.float32)
    out = images.clone()
    for slot in range(ops.shape[1]):
        for k, (name, _, _) in enumerate(OPS):
            idx = (ops[:, slot] == k).nonzero().squeeze(1)
            if name == "Identity" or idx.numel() == 0:
                continue
            idx = idx.to(dev, non_blocking=True)
            out.index_copy_(0, idx, _APPLY[name](out.index_select(0, idx), mags[idx, slot]))
    return _cutout(out, draws.cutout.to(dev))
