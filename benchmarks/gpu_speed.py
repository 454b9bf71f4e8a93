"""GPU speed of the standard CIFAR-100 distillation recipe: the plain reference loop vs btkd's fast path.

resnet32x4 -> resnet8x4, batch 64, SGD, random crop + flip, 50,000 training and 10,000 test images.
In one process it measures:
  - the reference eager loop (DataLoader with per-sample transforms, fp32; benchmarks/reference.py):
    seconds per epoch = steps per epoch x seconds per step + its evaluation pass;
  - the fast path (`btkd distill` with runtime.cuda_graph=on, the default on one GPU: data resident on the GPU, batched
    augmentation, bf16 autocast, channels_last, fused SGD, BN folded into the teacher, the whole step
    in one CUDA graph, metrics read once per epoch): whole epochs through the Trainer, evaluation and
    checkpoints included;
  - KD+BTKD vs KD step time (graph replays timed with CUDA events, alternating blocks);
  - a grid of 4 students (KD, KD+BTKD, DKD, DKD+BTKD) sharing one teacher forward vs one student;
  - accuracy: 3 epochs of the plain fp32 eager path vs the fast path (and an fp32 graph) on the same
    data and seed; per-epoch training loss and test accuracy side by side.
Data: real CIFAR-100 shards with --root, else synthetic images of the same shape (speed does not
depend on pixel values; the accuracy check then compares losses, not accuracies). The teacher is
randomly initialised unless --teacher names a checkpoint.

    python benchmarks/gpu_speed.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import reference_loader, time_reference_eval, time_reference_steps  # noqa: E402

from btkd import BTKD, Distill  # noqa: E402
from btkd.config import load_config  # noqa: E402
from btkd.data import load_split  # noqa: E402
from btkd.engine import Trainer  # noqa: E402
from btkd.engine.checkpoint import export_weights  # noqa: E402
from btkd.engine.runinfo import device_name  # noqa: E402
from btkd.engine.step import TrainStep  # noqa: E402
from btkd.models import build_model  # noqa: E402


SIZES = {"train": 50000, "test": 10000}
REF_WORKERS = min(8, os.cpu_count() or 1)  # the reference loop's DataLoader workers (8 on a GPU machine)


def data_overrides(root):
    if root:
        return ["data.name=cifar100", f"data.root={root}"]
    return ["data.name=synthetic", f"data.options={{size: {SIZES['train']}, num_classes: 100, image_size: 32}}",
            f"data.test_subset={SIZES['test']}"]


def trainer(root, teacher_ckpt, out, name, *extra):
    cfg = load_config("cifar100/kd/res32x4_res8x4", data_overrides(root) + [
        f"model.teacher_checkpoint={teacher_ckpt}", f"output_dir={out}", f"name={name}", "runtime.progress=false",
        "optim.milestones=[]", *extra])
    return Trainer(cfg, echo=lambda *_: None)


def event_time(fn, steps):
    """Per-step milliseconds of ``fn`` with CUDA events."""
    if not torch.cuda.is_available():  # --smoke on CPU
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            out.append(1e3 * (time.perf_counter() - t0))
        return out
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    for i in range(steps):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def replay_fn(t: Trainer):
    x, y = next(iter(t.train_loader))
    return lambda: t.step(x, y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="CIFAR-100 shard folder (default: synthetic data)")
    ap.add_argument("--teacher", help="a resnet32x4 checkpoint (default: random weights)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--epochs", type=int, default=4, help="fast-path epochs run (the first is warm-up)")
    ap.add_argument("--ref-steps", type=int, default=200)
    ap.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    ap.add_argument("--smoke", action="store_true", help="a tiny CPU run of the whole script (no graph)")
    args = ap.parse_args(argv)
    if args.smoke:
        SIZES.update(train=640, test=128)
        args.ref_steps, args.epochs = 2, 2
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graph = "runtime.cuda_graph=" + ("off" if args.smoke else "on")
    steps = 3 if args.smoke else 200
    result = {"device": device_name(device), "torch_version": torch.__version__, "batch_size": 64,
              "data": "cifar100" if args.root else "synthetic (CIFAR-100 shapes)", "pair": "resnet32x4 -> resnet8x4",
              "reference_workers": REF_WORKERS}
    if args.teacher:
        teacher_ckpt = args.teacher
    else:
        torch.manual_seed(0)
        teacher_ckpt = work / "teacher.safetensors"
        export_weights(build_model("resnet32x4", 100), teacher_ckpt)
    log = {}

    # 1. reference eager loop
    train = load_split("cifar100" if args.root else "synthetic", args.root, "train",
                       **({} if args.root else {"size": SIZES["train"], "num_classes": 100, "image_size": 32}))
    test = load_split("cifar100" if args.root else "synthetic", args.root, "test",
                      **({} if args.root else {"size": SIZES["test"], "num_classes": 100, "image_size": 32}))
    teacher = build_model("resnet32x4", 100).to(device).eval().requires_grad_(False)
    student = build_model("resnet8x4", 100).to(device)
    ref_step = time_reference_steps(teacher, student, reference_loader(train, 64, REF_WORKERS), device, args.ref_steps,
                                    2 if args.smoke else 20)
    ref_eval = time_reference_eval(student, reference_loader(test, 64, REF_WORKERS, train=False), device)
    steps_per_epoch = len(train.labels) // 64
    result.update(sec_per_step_reference=ref_step, sec_eval_reference=ref_eval,
                  sec_per_epoch_reference=steps_per_epoch * ref_step + ref_eval)
    print(f"reference: {1e3 * ref_step:.2f} ms/step, eval {ref_eval:.2f} s -> {result['sec_per_epoch_reference']:.2f} s/epoch",
          flush=True)

    # 2. the fast path, whole epochs through the Trainer (epoch 0 includes capture and autotuning)
    fast = {}
    for name, extra in (("kd", []), ("kd_btkd", ["distill.btkd.enabled=true"])):
        t = trainer(args.root, teacher_ckpt, work, name, graph, f"optim.epochs={args.epochs}", "runtime.compile=off",
                    *extra)
        t.fit()
        epochs = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines()]
        fast[name] = t
        log[f"epochs_{name}"] = epochs
        result[f"sec_per_epoch_fast_{name}"] = statistics.median(e["epoch_time"] for e in epochs[1:])
        result[f"sec_train_fast_{name}"] = statistics.median(e["samples"] / e["images_per_s"] for e in epochs[1:])
        print(f"fast {name}: epochs {[round(e['epoch_time'], 3) for e in epochs]} s", flush=True)
    result["sec_per_epoch_fast"] = result["sec_per_epoch_fast_kd"]
    result["minutes_for_240_epochs_fast"] = 240 * result["sec_per_epoch_fast"] / 60
    result["speedup_over_reference"] = result["sec_per_epoch_reference"] / result["sec_per_epoch_fast"]

    # 3. KD+BTKD over KD, graph replays in alternating blocks
    kd_fn, btkd_fn = replay_fn(fast["kd"]), replay_fn(fast["kd_btkd"])
    kd_ms, btkd_ms = [], []
    for _ in range(5):
        kd_ms += event_time(kd_fn, steps)
        btkd_ms += event_time(btkd_fn, steps)
    result["ms_per_step_fast_kd"] = statistics.median(kd_ms)
    result["ms_per_step_fast_kd_btkd"] = statistics.median(btkd_ms)
    result["btkd_overhead"] = result["ms_per_step_fast_kd_btkd"] / result["ms_per_step_fast_kd"] - 1
    log["per_step_ms_kd"], log["per_step_ms_kd_btkd"] = kd_ms, btkd_ms

    # 4. a grid of 4 students sharing one teacher forward, one CUDA graph
    base = fast["kd"]
    students = [build_model("resnet8x4", 100).to(device, memory_format=torch.channels_last) for _ in range(4)]
    losses = [Distill("kd", validate=False), BTKD("kd", ce_weight=0.1, kd_weight=0.9, validate=False),
              Distill("dkd", validate=False), BTKD("dkd", ce_weight=1.0, kd_weight=1.0, validate=False)]
    opts = [torch.optim.SGD(s.parameters(), lr=torch.tensor(0.05, device=device), momentum=0.9, weight_decay=5e-4,
                            **({} if args.smoke else {"fused": True})) for s in students]
    grid = TrainStep(students, opts, losses, base.teacher, 240, None if args.smoke else torch.bfloat16,
                     cuda_graph=not args.smoke)
    grid.set_epoch(30)
    x, y = next(iter(base.train_loader))
    grid_ms = []
    single_ms = []
    for _ in range(3):
        grid_ms += event_time(lambda: grid(x, y), steps)
        single_ms += event_time(kd_fn, steps)
    result["ms_per_step_grid4"] = statistics.median(grid_ms)
    result["ms_per_step_single_same_block"] = statistics.median(single_ms)
    result["grid4_over_single"] = result["ms_per_step_grid4"] / result["ms_per_step_single_same_block"]
    log["per_step_ms_grid4"] = grid_ms

    # 5. accuracy must not move: on a learnable task (class prototypes + noise) with a teacher trained
    #    here, 3 epochs of the plain fp32 eager path vs an fp32 graph vs the fast path, same seed.
    #    Uncompiled, as measured: runtime.compile=auto (the default since) would compile the graph rows too.
    proto = ["data.name=synthetic", f"data.options={{size: {SIZES['train']}, num_classes: 100, image_size: 32, "
             "prototypes: true}", f"data.train_subset={min(10000, SIZES['train'])}",
             f"data.test_subset={SIZES['test']}", "optim.lr_schedule=cosine", "runtime.compile=off"]
    cfg = load_config("cifar100/teachers/resnet32x4", proto + [
        f"output_dir={work}", "name=proto_teacher", "runtime.progress=false", graph,
        f"optim.epochs={2 if args.smoke else 6}"])
    teacher_summary = Trainer(cfg, echo=lambda *_: None).fit()
    result["accuracy_check_teacher_acc"] = teacher_summary["best_acc"]
    acc = {}
    for name, extra in (("plain_fp32_eager", ["runtime.cuda_graph=off", "runtime.precision=fp32", "runtime.channels_last=off",
                                              "runtime.fold_teacher_bn=off"]),
                        ("graph_fp32", [graph, "runtime.precision=fp32",
                                        "runtime.channels_last=off", "runtime.fold_teacher_bn=off"]),
                        ("fast", [graph])):
        cfg = load_config("cifar100/kd_btkd/res32x4_res8x4", proto + [
            f"model.teacher_checkpoint={work / 'proto_teacher' / 'last.safetensors'}", f"output_dir={work}",
            f"name=acc_{name}", "runtime.progress=false", f"optim.epochs={2 if args.smoke else 3}", *extra])
        Trainer(cfg, echo=lambda *_: None).fit()
        acc[name] = [{k: e[k] for k in ("epoch", "loss_total", "loss_ce", "train_acc", "test_acc", "frac_wrong")}
                     for e in map(json.loads, (work / ("acc_" + name) / "log.jsonl").read_text().splitlines())]
        print(f"accuracy check {name}: {acc[name]}", flush=True)
    log["accuracy_check"] = acc

    def rel(a, b):
        return max(abs(x["loss_total"] - y["loss_total"]) / abs(y["loss_total"]) for x, y in zip(a, b))

    result["loss_rel_diff_graph_fp32_vs_eager_fp32"] = rel(acc["graph_fp32"], acc["plain_fp32_eager"])
    result["loss_rel_diff_fast_bf16_vs_eager_fp32"] = rel(acc["fast"], acc["plain_fp32_eager"])
    result["test_acc_last_epoch"] = {k: v[-1]["test_acc"] for k, v in acc.items()}

    if args.smoke:
        print(json.dumps(result, indent=1))
        return

    def save():
        (args.out / "gpu_speed.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu_speed_log.json").write_text(json.dumps(log) + "\n")

    save()
    if args.compile and not args.smoke:
        # the same, with torch.compile on both models and on the loss, inside the captured graph
        for name, extra in (("kd", []), ("kd_btkd", ["distill.btkd.enabled=true"])):
            try:
                t = trainer(args.root, teacher_ckpt, work, name + "_compiled", graph, "runtime.compile=on",
                            f"optim.epochs={args.epochs}", *extra)
                t.fit()
                epochs = [json.loads(line) for line in (work / (name + "_compiled") / "log.jsonl").read_text().splitlines()]
                log[f"epochs_{name}_compiled"] = epochs
                result[f"sec_per_epoch_compiled_{name}"] = statistics.median(e["epoch_time"] for e in epochs[1:])
                result[f"ms_per_step_compiled_{name}"] = statistics.median(event_time(replay_fn(t), steps))
                print(f"compiled {name}: epochs {[round(e['epoch_time'], 3) for e in epochs]} s", flush=True)
            except Exception as err:  # report, keep the rest of the benchmark
                result[f"compile_error_{name}"] = f"{type(err).__name__}: {str(err)[:500]}"
                print(f"compiled {name} failed: {result[f'compile_error_{name}']}", flush=True)
    save()
    print()
    print(f"{result['device']}, torch {result['torch_version']}, batch 64, {result['data']}")
    print(f"{'measure':<44}{'value':>12}")
    rows = [("reference s/epoch (train + eval)", result["sec_per_epoch_reference"]),
            ("fast s/epoch KD (train + eval + ckpt)", result["sec_per_epoch_fast"]),
            ("fast s/epoch KD+BTKD", result["sec_per_epoch_fast_kd_btkd"]),
            ("speed-up over reference", result["speedup_over_reference"]),
            ("240 epochs, minutes (fast KD)", result["minutes_for_240_epochs_fast"]),
            ("ms/step KD (graph)", result["ms_per_step_fast_kd"]),
            ("ms/step KD+BTKD (graph)", result["ms_per_step_fast_kd_btkd"]),
            ("BTKD overhead (%)", 100 * result["btkd_overhead"]),
            ("grid of 4 / single", result["grid4_over_single"]),
            ("loss rel diff fp32 graph vs eager", result["loss_rel_diff_graph_fp32_vs_eager_fp32"]),
            ("loss rel diff fast bf16 vs fp32 eager", result["loss_rel_diff_fast_bf16_vs_eager_fp32"])]
    rows += [(f"test acc, 3 epochs, {k}", v) for k, v in result["test_acc_last_epoch"].items()]
    rows += [(f"compiled s/epoch {k}", result[f"sec_per_epoch_compiled_{k}"]) for k in ("kd", "kd_btkd")
             if f"sec_per_epoch_compiled_{k}" in result]
    for label, value in rows:
        print(f"{label:<44}{value:>12.4g}")


if __name__ == "__main__":
    main()
