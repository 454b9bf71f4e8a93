"""A GPU window's first check, in seconds: does a step replayed from the CUDA graph train as the eager one?

A fault in the fast path need not crash: a value the graph took in at its capture (a learning rate, a
loss weight, a warm-up scale or a host's epoch switch set as a new tensor or a float, not in place)
trains on, silently wrong, and the window's fallback (unit.sh) only catches a run that fails. So
before a unit trains, btkd's TrainStep runs on small models (resnet8 on CIFAR-shaped random batches)
twice side by side, eagerly and replayed from a CUDA graph: CE, KD, DKD with its warm-up, KD and DKD
with BTKD (one with a per-iteration schedule), CTKD + BTKD, and MLKD + BTKD and SLD on two views, in
two lanes; 2 epochs of 3 steps, with the learning rate and the epoch's weights changed between
replays as the trainer changes them. With deterministic cuDNN the two may differ by rounding alone:
first in fp32, then as a bench trains (bf16 autocast, channels_last, the teacher's forward in IEEE
fp32). ``--compile`` also compiles the models and losses as runtime.compile does (tens of seconds
more, a looser bound), for the spare time after a unit (gpu_smoke.sh). unit.sh runs it first and,
when it fails, trains that window without the fast path.

    python benchmarks/gpu_preflight.py [--compile]   # exit 0: ok; 1: a difference or a failure; 2: no GPU

Each pass prints one line: the largest difference of any student's weights from the eager one's, as a
share of how far the eager weights moved, and of its metric sums; a failure names the student.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import List, Optional

# cuBLAS picks its workspace per stream: several streams (the graph's students) need this for the
# same sums as one (set before CUDA starts)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from btkd import BTKD, Distill  # noqa: E402
from btkd.engine.step import TrainStep  # noqa: E402
from btkd.models import build_model  # noqa: E402

CLASSES, BATCH, SIZE, EPOCHS, STEPS = 100, 64, 32, 2, 3


def losses(few: bool = False) -> List[Optional[torch.nn.Module]]:
    if few:  # the compiled pass: each host is one more compiled version, so the two that differ most
        return [Distill("kd", validate=False), BTKD("dkd", warmup=1, validate=False)]
    return [None, Distill("kd", validate=False), Distill("dkd", warmup=2, validate=False),
            BTKD("kd", schedule="cos2_iter", validate=False), BTKD("dkd", warmup=1, validate=False),
            BTKD("ctkd", validate=False), BTKD("mlkd", validate=False), Distill("sld", student_from=1, validate=False)]


def make_step(device, graph: bool, amp, channels_last: bool, teacher_precision: str, compile_: bool, few: bool):
    """The teacher, the students (all from one seed) and their losses (``few``: the compiled pass's)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=CLASSES).to(device, memory_format=fmt).eval().requires_grad_(False)
    loss_list = [None if loss is None else loss.to(device) for loss in losses(few)]
    students, opts = [], []
    for loss in loss_list:
        torch.manual_seed(1)
        student = build_model("resnet8", num_classes=CLASSES).to(device, memory_format=fmt)
        params = list(student.parameters()) + (list(loss.parameters()) if loss is not None else [])
        # as the trainer's on a GPU: fused SGD holding its lr in a device tensor
        opts.append(torch.optim.SGD(params, lr=torch.tensor(0.1, device=device), momentum=0.9, weight_decay=5e-4,
                                    nesterov=True, fused=True))
        students.append(torch.compile(student) if compile_ else student)
    if compile_:
        teacher = torch.compile(teacher)
    return TrainStep(students, opts, loss_list, teacher, EPOCHS + 1, amp, cuda_graph=graph, compile_loss=compile_,
                     lanes=[k % 2 for k in range(len(loss_list))], teacher_precision=teacher_precision)


def batches(device, channels_last: bool):
    """EPOCHS x STEPS steps of two lanes, each (weak, strong) views and labels: the same for both sides."""
    g = torch.Generator().manual_seed(7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for _ in range(EPOCHS * STEPS):
        xs = [tuple(torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(device, memory_format=fmt) for _ in range(2))
              for _ in range(2)]
        out.append((xs, [torch.randint(0, CLASSES, (BATCH,), generator=g).to(device) for _ in range(2)]))
    return out


def compare(name: str, device, *, amp=None, channels_last=False, teacher_precision="same", compile_=False,
            tol: float = 1e-3) -> Optional[str]:
    """Train both sides; None when they agree within ``tol``, else what differs."""
    eager = make_step(device, False, amp, channels_last, teacher_precision, False, few=compile_)
    graph = make_step(device, True, amp, channels_last, teacher_precision, compile_, few=compile_)
    start = [copy.deepcopy(s.state_dict()) for s in eager.students]
    data = batches(device, channels_last)
    worst, problem = (0.0, 0.0), None
    for epoch in range(EPOCHS):
        for step in (eager, graph):
            step.set_lr(0.1 * 0.2 ** epoch)  # as a multistep schedule, sharper
            step.set_epoch(epoch)
        for i in range(STEPS):
            xs, ys = data[epoch * STEPS + i]
            for step in (eager, graph):
                if i:
                    step.set_epoch(epoch + i / STEPS)  # a per-iteration schedule
                step(xs, ys)
        for k, loss in enumerate(eager.losses):
            a, b = eager.students[k].state_dict(), {n.replace("_orig_mod.", ""): v
                                                    for n, v in graph.students[k].state_dict().items()}
            a = {n.replace("_orig_mod.", ""): v for n, v in a.items()}
            floats = [n for n in a if a[n].is_floating_point()]
            moved = max((a[n].double() - start[k][n].double()).abs().max().item() for n in floats)
            weights = max((a[n].double() - b[n].double()).abs().max().item() for n in floats) / max(moved, 1e-12)
            e, g = eager.metric_tensor(k)[1].double(), graph.metric_tensor(k)[1].double()
            sums = ((e - g).abs() / e.abs().clamp_min(1.0)).max().item()
            if not (torch.isfinite(e).all() and torch.isfinite(g).all()):
                sums = float("inf")
            worst = (max(worst[0], weights), max(worst[1], sums))
            if problem is None and not (weights <= tol and sums <= tol):
                what = "CE" if loss is None else repr(loss).split("(")[0] + f"({getattr(loss, 'host', loss).name})"
                problem = (f"{name}: student {k} ({what}) after epoch {epoch + 1}: its weights are off the eager "
                           f"step's by {weights:.3g} of how far they moved, its metric sums by {sums:.3g} (tolerance "
                           f"{tol:g}). The replayed graph computes something the eager step does not: fix the fast "
                           "path before training with it (runtime.cuda_graph=off runtime.compile=off meanwhile)")
        for step in (eager, graph):
            step.reset_metrics()
    print(f"{name}: {len(eager.students)} students, weights within {worst[0]:.3g} of their movement, metric sums "
          f"within {worst[1]:.3g} (tolerance {tol:g}) -> {'FAILED' if problem else 'ok'}", flush=True)
    return problem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile", action="store_true", help="also compile, as runtime.compile does")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_preflight: no CUDA GPU here; nothing to check")
        return 2
    device = torch.device("cuda")
    t0 = time.perf_counter()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # deterministic cuDNN on both sides (the same kernels), so that rounding is all that may differ
    passes = [
        dict(name="fp32", deterministic=True, tf32=False, kw=dict(tol=1e-3)),
        # as a bench trains: bf16 students, an IEEE fp32 teacher, channels_last, TF32 allowed
        dict(name="bf16, fp32 teacher, channels_last", deterministic=True, tf32=True,
             kw=dict(amp=torch.bfloat16, channels_last=True, teacher_precision="fp32", tol=1e-2)),
    ]
    if args.compile:
        # compiled kernels add up in another order: a looser bound
        passes.append(dict(name="bf16, compiled", deterministic=False, tf32=True,
                           kw=dict(amp=torch.bfloat16, channels_last=True, compile_=True, tol=5e-2)))
    problems = []
    saved = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    for p in passes:
        cudnn.deterministic, cudnn.benchmark = p["deterministic"], not p["deterministic"]
        cudnn.allow_tf32 = matmul.allow_tf32 = p["tf32"]
        try:
            problem = compare(p["name"], device, **p["kw"])
        except Exception as err:  # a crash of the fast path is a finding too: name it and go on
            problem = f"{p['name']}: {type(err).__name__}: {err}"
            print(f"{p['name']}: FAILED with {type(err).__name__}", flush=True)
        if problem:
            problems.append(problem)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved  # for a caller (a test)
    for problem in problems:
        print("gpu_preflight FAILED:", problem)
    print(f"gpu_preflight: {'FAILED' if problems else 'ok'} ({time.perf_counter() - t0:.0f} s, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
