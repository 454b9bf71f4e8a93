"""Kill a run at its write boundaries, resume it as documented, and compare with an uninterrupted run.

A tiny teacher, a KD+BTKD `btkd distill` run and a 4-member `btkd bench` (KD and KD+BTKD, 2 seeds) on
synthetic data, one CPU thread. Each trial starts the command in a fresh folder in a child process that
dies (``os._exit``, no clean-up: as SIGKILL) at its Nth write boundary: the lock taken, an atomic
write's temp file complete but not renamed, a file just renamed into place, a log line half appended.
With probability ``--second`` the resume is killed too, at a seeded boundary. Then the documented
command finishes it (``--resume FOLDER`` once the folder exists, else the same command again), and
the folder must equal the reference: every tensor of every safetensors file and of the checkpoint,
log.jsonl / log.csv / summary / results without timing fields, no missing or extra files, no temp
files left (also none beside the folder). Deterministic given ``--seed``.

    PYTHONPATH=src python benchmarks/kill_fuzz.py                 # every boundary of the single run
    PYTHONPATH=src python benchmarks/kill_fuzz.py --kind bench --sample 30 --seed 1

Prints one line per trial and exits 1 if any differed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = {"images_per_s", "epoch_time", "wall_time", "images_per_s_mean", "wall_time_s", "time", "resumes"}
DATA = {"name": "synthetic", "options": {"size": 600, "num_classes": 10, "image_size": 8, "prototypes": True},
        "batch_size": 32, "eval_batch_size": 200}
RUN = {"seed": 0, "data": DATA, "optim": {"epochs": 4, "milestones": [3], "lr": 0.05},
       "runtime": {"progress": False, "threads": 1}}


def child(n: int, argv) -> None:
    """The CLI, dying at write boundary ``n`` (0: list them on stderr)."""
    import btkd.engine.run_folder as rf
    from btkd.cli import main

    count = [0]
    fsync, replace, append, acquire = os.fsync, os.replace, rf.RunFolder.append_log, rf.RunLock.acquire

    def hit(what):
        count[0] += 1
        if n == 0:
            print(f"BOUNDARY {count[0]} {what}", file=sys.stderr)
        return count[0] == n

    def fsync_(fd):
        fsync(fd)
        if hit("temp file written"):
            os._exit(137)

    def replace_(a, b):
        replace(a, b)
        if hit(f"renamed {Path(b).name}"):
            os._exit(137)

    def append_(self, record):
        if hit("log append"):
            line = rf.json_line(record)
            with open(self.file(rf.LOG), "a") as f:
                f.write(line[: len(line) // 2])
            os._exit(137)
        append(self, record)

    def acquire_(self):
        acquire(self)
        if hit("lock"):
            os._exit(137)

    os.fsync, os.replace, rf.RunFolder.append_log, rf.RunLock.acquire = fsync_, replace_, append_, acquire_
    sys.exit(main(argv))


def btkd(work: Path, argv, kill_at=None):
    paths = [os.path.abspath(x) for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]  # from work
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-m", "btkd.cli"] if kill_at is None else [sys.executable, __file__, "--child", str(kill_at)]
    return subprocess.run(cmd + list(argv), cwd=work, env=env, capture_output=True, text=True)


def command(kind: str, root: Path, work: Path):
    """The documented next command: --resume once the folder exists, else the same command again."""
    folder = work / ("dist" if kind == "distill" else "bench")
    return [kind, "--resume", folder.name] if folder.is_dir() else [kind, str(root / f"{kind}.yaml"), "output_dir=."]


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    return [strip(v) for v in obj] if isinstance(obj, list) else obj


def differences(ref: Path, got: Path):
    import torch
    from safetensors.torch import load_file

    out = []
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    if names(ref) != names(got):
        out.append(f"files: {sorted(set(names(got)) ^ set(names(ref)))}")
    for rel in names(ref):
        a, b = ref / rel, got / rel
        if not (a.is_file() and b.is_file()) or rel.endswith((".lock", ".png")):
            continue
        if rel.endswith((".safetensors", ".pt")):
            ta = load_file(str(a)) if rel.endswith(".safetensors") else torch.load(a, weights_only=True)
            tb = load_file(str(b)) if rel.endswith(".safetensors") else torch.load(b, weights_only=True)
            flat = lambda t, p="": ({p: t} if not isinstance(t, dict) else  # noqa: E731
                                    {k: v for key, x in t.items() for k, v in flat(x, f"{p}/{key}").items()})
            fa, fb = flat(ta), flat(tb)
            same = fa.keys() == fb.keys() and all(
                torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else (fa[k] == fb[k] or k.endswith("wall_time"))
                for k in fa)
            ok = same
        elif rel.endswith(".jsonl"):
            ra, rb = ([json.loads(x) for x in p.read_text().splitlines()] for p in (a, b))
            ok = strip(ra) == strip(rb) and [r["epoch"] for r in rb] == list(range(1, len(rb) + 1))
        elif rel.endswith(".csv"):
            ok = strip(list(csv.DictReader(open(a)))) == strip(list(csv.DictReader(open(b))))
        elif rel.endswith(".json"):
            ok = strip(json.loads(a.read_text())) == strip(json.loads(b.read_text()))
        else:  # yaml, md (results.md says the wall time)
            wall = lambda p: re.sub(r"wall time [0-9.]+ s", "", p.read_text())  # noqa: E731
            ok = wall(a) == wall(b)
        if not ok:
            out.append(f"{rel} differs")
    return out


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("distill", "bench"), default="distill")
    p.add_argument("--sample", type=int, default=0, help="this many boundaries, drawn with --seed (0: all)")
    p.add_argument("--second", type=float, default=0.3, help="probability of killing the resume too")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import yaml

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="btkd_kill_fuzz_"))
    (root / "teacher.yaml").write_text(yaml.safe_dump({**RUN, "name": "teacher", "output_dir": str(root), "model": {
        "student": "convnet", "student_options": {"width": 8}}, "distill": {"method": "ce"}}))
    run = {**RUN, "name": "dist", "model": {"student": "convnet", "student_options": {"width": 4}, "teacher": "convnet",
           "teacher_options": {"width": 8}, "teacher_checkpoint": str(root / "teacher" / "last.safetensors")},
           "distill": {"method": "kd", "btkd": {"enabled": True}}}
    (root / "distill.yaml").write_text(yaml.safe_dump(run))
    (root / "bench.yaml").write_text(yaml.safe_dump({**run, "name": "bench", "bench": {"seeds": [0, 1], "methods": {
        "kd": {"distill": {"method": "kd"}}, "kd_btkd": {"distill": {"method": "kd", "btkd": {"enabled": True}}}}}}))
    assert btkd(root, ["train", str(root / "teacher.yaml")]).returncode == 0
    ref = root / "ref"
    ref.mkdir()
    listed = btkd(ref, command(args.kind, root, ref), kill_at=0)
    assert listed.returncode == 0, listed.stderr[-2000:]
    bounds = [line.split(" ", 2)[1:] for line in listed.stderr.splitlines() if line.startswith("BOUNDARY ")]
    picks = range(1, len(bounds) + 1) if not args.sample else sorted(rng.sample(range(1, len(bounds) + 1),
                                                                             min(args.sample, len(bounds))))
    folder = "dist" if args.kind == "distill" else "bench"
    bad = 0
    for n in picks:
        work = root / f"n{n}"
        work.mkdir()
        steps = [f"killed at {n} ({bounds[n - 1][1]})"]
        assert btkd(work, command(args.kind, root, work), kill_at=n).returncode == 137
        if rng.random() < args.second:
            m = rng.randint(1, len(bounds))
            r = btkd(work, command(args.kind, root, work), kill_at=m)
            steps.append(f"its {'resume' if 'resume' in ' '.join(r.args) else 'restart'} at {m}: rc {r.returncode}")
        r = btkd(work, command(args.kind, root, work))
        diffs = [f"the finishing command failed: {r.stderr.strip()[-300:]}"] if r.returncode else \
            differences(ref / folder, work / folder)
        diffs += [f"left behind: {p.name}" for p in work.glob(".*")]
        bad += bool(diffs)
        print(f"{'OK  ' if not diffs else 'DIFF'} {'; '.join(steps)}" + "".join(f"\n     {d}" for d in diffs),
              flush=True)
    print(f"{args.kind}: {len(picks)} of {len(bounds)} boundaries, {bad} differed (folders in {root})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
