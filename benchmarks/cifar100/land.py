"""File what a CIFAR-100 window returned, then rebuild the evidence table from every unit filed so far.

    python benchmarks/cifar100/land.py RETURNED     # RETURNED: the folder of files a unit sent back
    python benchmarks/cifar100/land.py --table      # only rebuild benchmarks/results/cifar100/README.md

What a unit returned (unit.json, record.tar with the run's small files, and weights or checkpoint
parts: unit.sh's header) decides where it goes:
- a paused unit (checkpoint.part.*; also one that failed after a checkpoint) is not filed: its files
  are kept in .data/paused/<its arguments> (ignored, so they outlast the session and do not travel)
  for `stage.sh` to stage in the next window, which resumes it;
- a finished teacher is published under weights/ (half-precision safetensors, in shards when over
  15 MiB, its config, per-epoch log, summary, precision check and unit record, and a manifest
  entry: `add_teacher.py`'s work);
- an `inspect` unit's precision check joins its published teacher's record (as does the check a
  bench unit ran first on a published teacher that had none);
- a finished bench unit is unpacked into benchmarks/results/cifar100/<bench>/unit_s<seeds>/ (with
  _<methods> when it trained part of them: `bench.only`), and the bench's units are pooled into one
  report over all their methods and seeds (`btkd report UNIT ... --out`).

The table (benchmarks/results/cifar100/README.md) holds the teachers against their published
accuracy and, per bench, the pooled last-epoch and best-epoch accuracy, the paired differences with
95 % intervals and the students against their teacher, beside the published (best-epoch) figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from btkd.bench import load_bench, write_bench_report
from btkd.bench.results import collect_units, format_difference, format_mean_std, format_number, verdict
from btkd.config import ConfigError
from btkd.weights import PREFIX, add_weights, read_manifest

ROOT = Path(__file__).resolve().parents[2]

# docs/BENCHMARKS.md: the published teachers (RepDistiller) ...
PUBLISHED_TEACHERS = {"resnet32x4": 79.42, "wrn_40_2": 75.61, "vgg13": 74.64, "resnet56": 72.34, "resnet110": 74.31}
TEACHER_TARGET = 0.5  # the tolerance, in points
# ... and students (student alone, KD: RepDistiller; DKD: mdistiller, mean of 5 runs, best epoch;
# +LS: logit-standardization-KD, best epoch), by bench and method label
PUBLISHED_STUDENTS = {
    "bench_res32x4_res8x4": {"ce": 72.50, "kd": 73.33, "dkd": 76.32, "kd_ls": 76.62, "dkd_ls": 77.01},
    "bench_wrn40_2_wrn16_2": {"ce": 73.26, "kd": 74.92, "dkd": 76.23, "kd_ls": 76.11, "dkd_ls": 76.39},
    "bench_vgg13_vgg8": {"ce": 70.36, "kd": 72.98, "dkd": 74.68, "kd_ls": 74.36, "dkd_ls": 74.81},
}


def read_unit(returned: Path) -> Dict[str, Any]:
    path = returned / "unit.json"
    if not path.is_file():
        raise SystemExit(f"{returned} holds no unit.json: is it the folder a unit.sh call returned?")
    unit = json.loads(path.read_text())
    words = unit["command"].split()
    unit["kind"], unit["name"] = words[2], words[3]  # bash benchmarks/cifar100/unit.sh KIND NAME ...
    return unit


def windows_note(unit: Dict[str, Any]) -> str:
    w = unit["windows"]
    parts = [f"window {i + 1}: {x['outcome']} after {x['seconds']} s (limit {x['limit_min']:g} min"
             f"{', resumed' if x['resumed'] else ''}"
             f"{', the fast path failed: trained again with ' + x['fallback'] if x.get('fallback') else ''}"
             f", commit {str(x['commit'])[:10]})" for i, x in enumerate(w)]
    return f"trained in {len(w)} window{'s' if len(w) > 1 else ''} of a GPU lent 15 minutes at a time: " + \
        "; ".join(parts)


def unpack(returned: Path, into: Path) -> None:
    """Unpack the unit's record.tar (its small files) into ``into``."""
    path = returned / "record.tar"
    if not path.is_file():
        raise SystemExit(f"{returned} holds no record.tar: the unit did not finish writing what it returns")
    with tarfile.open(path) as tar:
        if any(n.startswith("/") or ".." in Path(n).parts for n in tar.getnames()):
            raise SystemExit(f"{path} holds a path outside its folder; not unpacking it")
        tar.extractall(into, filter="data")


def file_check(source: Path, weights: Path, name: str, replace: bool) -> Optional[Path]:
    """Copy a precision check (inspect_teacher.json and .md) from ``source`` into the record of the
    published teacher ``name``; with ``replace`` False only where it has none. Returns the record."""
    entry = read_manifest(weights).get(name)
    if entry is None or not (source / "inspect_teacher.json").is_file():
        return None
    record = weights / entry["record"]
    if (record / "inspect_teacher.json").is_file() and not replace:
        return None
    for f in ("inspect_teacher.json", "inspect_teacher.md"):
        if (source / f).is_file():
            shutil.copy(source / f, record / f)
    return record


def unit_folder(bench: str, spec: Dict[str, Any]) -> str:
    """``unit_s<seeds>``, and ``_<methods>`` when the unit trained part of the bench's methods
    (``bench.only``)."""
    name = "unit_s" + "_".join(str(s) for s in spec["bench"]["seeds"])
    labels = list(spec["bench"]["methods"])
    try:
        full = [m.label for m in load_bench(f"cifar100/bench/{bench}").methods]
    except (ConfigError, FileNotFoundError):
        full = labels
    return name if labels == full else name + "_" + "+".join(labels)


def paused_key(unit: Dict[str, Any]) -> str:
    """The folder name a paused unit is kept under: its command's arguments, made a plain name."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", " ".join(unit["command"].split()[2:])).strip("_")[:120]


def file_smoke(returned: Path, results: Path) -> str:
    """What benchmarks/gpu_smoke.sh ran in a window's spare time: its verdicts into
    benchmarks/results/gpu_smoke.md, strong_view_gpu.json beside strong_view_cpu.json."""
    log = returned / "gpu_smoke.txt"
    if not log.is_file():
        return ""
    lines = [line for line in log.read_text().splitlines()
             if line.startswith("== ") and (": ok (" in line or ": FAILED (" in line) or "{'device'" in line]
    unit = read_unit(returned)
    out = results.parent / "gpu_smoke.md"
    out.write_text("# GPU smoke checks (benchmarks/gpu_smoke.sh)\n\nRun in the spare time of "
                   f"`{unit['command']}` (commit {str(unit['windows'][-1]['commit'])[:10]}); each step: ok or FAILED, "
                   "then what the students' runs recorded.\n\n```\n" + "\n".join(lines) + "\n```\n")
    if (returned / "strong_view_gpu.json").is_file():
        shutil.copy(returned / "strong_view_gpu.json", results.parent / "strong_view_gpu.json")
    failed = [line for line in lines if "FAILED" in line]
    return (f"; GPU smoke checks filed in {_rel(out)}" +
            (f", {len(failed)} FAILED: read {log}" if failed else ", all ok"))


GPU_BENCH = "gpu_bench_teacher_precision.json"


def file_gpu_bench(returned: Path, results: Path) -> str:
    """What benchmarks/gpu_bench.py measured in a window's spare time (a one-seed bench unit's seconds
    per epoch with a bf16, fp32 and TF32 teacher forward), into benchmarks/results/GPU_BENCH. A run
    cut short by its window keeps fewer grids: it never replaces a filed one that holds more."""
    measured = returned / "gpu_bench.json"
    if not measured.is_file():
        return ""
    try:
        result = json.loads(measured.read_text())
    except json.JSONDecodeError as err:
        return f"; {measured} is not JSON ({err}): not filed"
    out = results.parent / GPU_BENCH
    if out.is_file() and len(json.loads(out.read_text()).get("grids", {})) > len(result.get("grids", {})):
        return f"; {measured} holds fewer grids than the filed {_rel(out)}: not filed"
    unit = read_unit(returned)
    # its command named the device's return folder: record where it is filed, and the window it ran in
    result["command"] = re.sub(r"--out \S+", "--out benchmarks/results", result.get("command", ""))
    result["ran_in"] = (f"the spare time of `{unit['command']}` "
                        f"(commit {str(unit['windows'][-1]['commit'])[:10]})")
    out.write_text(json.dumps(result, indent=1) + "\n")
    over = result.get("over_same_teacher", {})
    return f"; teacher-precision cost filed in {_rel(out)} (x bf16 teacher: " + \
        (", ".join(f"{k} {v:.2f}" for k, v in over.items()) or "no ratio: a grid is missing") + ")"


def land(returned: Path, weights: Path, results: Path, card: Optional[str] = None,
         paused: Optional[Path] = None) -> str:
    """File the unit in ``returned``; returns what was done, in one line. A paused unit's files are
    kept in ``paused``/<its arguments> (an ignored folder that outlasts the session), for the next
    window to resume; a finished one's are deleted from there."""
    unit = read_unit(returned)
    kept = paused / paused_key(unit) if paused is not None else None
    if unit["windows"][-1]["outcome"] == "failed" and not list(returned.glob("checkpoint.part.*")):
        return (f"{unit['kind']} {unit['name']} failed before its first checkpoint ({windows_note(unit)}): nothing "
                "to file; the run call's output says why")
    if list(returned.glob("checkpoint.part.*")):
        where = returned
        if kept is not None and kept.resolve() != returned.resolve():
            if kept.exists():
                shutil.rmtree(kept)  # an earlier window of this unit: this one carries on from it
            shutil.copytree(returned, kept)
            where = _rel(kept)
        return (f"{unit['kind']} {unit['name']} paused ({windows_note(unit)}): nothing filed; its files are kept in "
                f"{where}; stage it with `bash benchmarks/cifar100/stage.sh {where}` and resume it in the next window")
    if kept is not None and kept.exists():
        shutil.rmtree(kept)  # finished: its paused state is spent
    if unit["kind"] in ("teacher", "inspect"):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp)
            unpack(returned, run)
            if unit["kind"] == "inspect":
                record = file_check(run, weights, unit["name"], replace=True)
                if record is None:
                    raise SystemExit(f"no precision check in {returned}, or no published teacher {unit['name']}")
                return f"teacher {unit['name']}: precision check filed in {record}"
            shards = sorted(returned.glob(f"teacher_{unit['name']}*.safetensors"))
            if not shards:
                raise SystemExit(f"{returned} holds no teacher_{unit['name']}.safetensors")
            meta = json.loads((run / "meta.json").read_text())
            entry = add_weights(weights, unit["name"], run, card or meta.get("device"), unit["command"],
                                weights_file=shards[0], extra={"windows": unit["windows"], "note": windows_note(unit)})
        shutil.copy(returned / "unit.json", weights / unit["name"] / "unit.json")
        return f"teacher {unit['name']}: last-epoch test accuracy {entry['test_acc_last']:.2f} %, published in {weights}"
    if unit["kind"] == "bench":
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            unpack(returned, Path(tmp))
            spec = yaml.safe_load((Path(tmp) / "bench.yaml").read_text())
            folder = results / spec["name"] / unit_folder(unit["name"], spec)
            if folder.exists():
                raise SystemExit(f"{folder} exists: seeds {spec['bench']['seeds']} of {spec['name']} were filed "
                                 "already")
            # only a unit that finished every member is filed: a window may lose returned files
            outcome = unit["windows"][-1]["outcome"]
            if outcome != "finished" or not collect_units([Path(tmp)])["complete"]:
                raise SystemExit(f"not filed: bench unit {unit['name']} did not finish (window outcome {outcome!r}, "
                                 f"its results.json unfinished; {windows_note(unit)}); run it again from its returned "
                                 "checkpoint, or anew")
            try:  # it must pool with the units filed before it, or it is not filed at all
                collect_units(units_of(folder.parent) + [Path(tmp)])
            except ConfigError as err:
                raise SystemExit(f"not filed: {err}") from None
            shutil.copytree(tmp, folder)
        shutil.copy(returned / "unit.json", folder / "unit.json")
        done = f"bench {spec['name']}: seeds {spec['bench']['seeds']} filed in {folder}"
        # a published teacher without a precision check was checked before the bench trained
        ref = str((spec.get("model") or {}).get("teacher_checkpoint", ""))
        if ref.startswith(PREFIX):
            record = file_check(folder, weights, ref[len(PREFIX):], replace=False)
            if record is not None:
                done += f"; the teacher's precision check filed in {record}"
        return done
    raise SystemExit(f"unknown unit kind {unit['kind']!r} in {returned / 'unit.json'}")


# ------------------------------------------------------------------------------------------ table


def _ci(c: Dict[str, Any]) -> str:
    v = verdict(c)
    fewer = f" (n={c['n']}, {c['dropped']} pair{'s' if c['dropped'] > 1 else ''} left out)" if c.get("dropped") else ""
    return format_difference(c) + fewer + (f", {v}" if v != "-" else "")


def teacher_rows(weights: Path) -> List[str]:
    manifest = read_manifest(weights)
    rows = ["| teacher | published | ours, last epoch | ours − published | within 0.5? | stored in half precision | "
            "epochs, batch | card | split decisions changed (bf16 / TF32 vs fp32, per epoch) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, published in PUBLISHED_TEACHERS.items():
        e = manifest.get(name)
        if e is None:
            rows.append(f"| {name} | {published:.2f} | not trained yet | | | | | | |")
            continue
        # the published teachers were evaluated in fp32: compare with our fp32 test forward where the run had one
        ours = e.get("test_acc_last_fp32", e["test_acc_last"])
        diff = ours - published
        check = weights / e.get("record", f"{name}/") / "inspect_teacher.json"
        changed, half = "not measured", "-"
        if check.is_file():
            report = json.loads(check.read_text())
            c = report["split_decisions_changed_by_precision"]
            changed = " / ".join(f"{sum(c[k]['per_epoch']) / len(c[k]['per_epoch']):.1f}" if k in c else "-"
                                 for k in ("bf16", "tf32")) + f" of {c['of']}"
            if "test_error" in report:  # the check ran on the published (half-precision) weights
                half = f"{100 - report['test_error']:.2f}"
        shown = f"{ours:.2f}" + (f" (bf16 forward {e['test_acc_last']:.2f})" if ours != e["test_acc_last"] else "")
        rows.append(f"| {name} | {published:.2f} | {shown} | {diff:+.2f} | "
                    f"{'yes' if abs(diff) <= TEACHER_TARGET else 'no'} | {half} | {e['epochs']}, {e['batch']} | "
                    f"{e['card']} | {changed} |")
    return rows


def _rel(path: Path) -> Path:
    """``path`` relative to the working directory when inside it: folders named in a committed
    results.json must not carry this machine's paths."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def units_of(bench: Path) -> List[Path]:
    """The unit folders filed for a bench."""
    if not bench.is_dir():
        return []
    return sorted(p for p in bench.iterdir() if p.is_dir() and (p / "bench.yaml").is_file())


def bench_section(bench: Path) -> List[str]:
    units = [_rel(p) for p in units_of(bench)]
    r = write_bench_report(units, out=bench, command="python benchmarks/cifar100/land.py --table")
    published = PUBLISHED_STUDENTS.get(r["name"], {})
    t = r["teacher"] or {}
    lines = [f"### {r['name']}: {t.get('model')} -> {', '.join(r['student'])}", "",
             f"{len(units)} unit{'s' if len(units) > 1 else ''}, seeds {r['seeds']}, "
             f"{'complete' if r['complete'] else '**unfinished**'}; {r['epochs']} epochs, batch "
             f"{r['data']['batch_size']}; {r['environment'].get('device')}, students in "
             f"{r['environment'].get('precision')}, teacher forward in {r['environment'].get('teacher_precision')} "
             f"(BN {'folded' if r['environment'].get('teacher_bn_folded') else 'as trained'}), from `btkd bench` "
             f"(one grid per unit); teacher `{t.get('checkpoint')}` at {format_number(t.get('test_acc'))} % "
             f"(wrong on {format_number(100 * t['frac_wrong_mean'] if t.get('frac_wrong_mean') is not None else None)} % of its "
             f"augmented training batches). Full report: [{bench.name}/results.md]({bench.name}/results.md)."
             + (f" **{len(r['missing'])} (method, seed) pairs not trained yet**: those means are over fewer seeds "
                "(the report lists them)." if r.get("missing") else ""), "",
             "| method | last epoch | last epoch, fp32 test forward | best epoch (optimistic) | published (best epoch) | "
             "student − teacher |",
             "|---|---|---|---|---|---|"]
    vs_teacher = {c["a"]: c for c in r["vs_teacher"]}
    n_seeds = len(r["seeds"])
    for c in r["cells"]:
        pub = published.get(c["label"])
        last, fp32 = c["last_acc_stats"], c.get("last_acc_fp32_stats")  # the published recipes evaluate in fp32
        # the fp32 column only where it covers the same seeds as the last-epoch one
        same = fp32 and fp32.get("n") and [a is None for a in c["last_acc_fp32"]] == [a is None for a in c["last_acc"]]
        diverged = f" (diverged: seeds {', '.join(c['diverged'])})" if c["diverged"] else ""
        lines.append(f"| {c['title']}{diverged} | {_seeds(format_mean_std(last), last['n'], n_seeds)} | "
                     f"{_seeds(format_mean_std(fp32), fp32['n'], n_seeds) if same else '-'} | "
                     f"{_seeds(format_mean_std(c['best_acc_stats']), c['best_acc_stats']['n'], n_seeds)} | "
                     f"{format_number(pub) if pub is not None else '-'} | "
                     f"{_ci(vs_teacher[c['label']]) if c['label'] in vs_teacher else '-'} |")
    titles = {c["label"]: c["title"] for c in r["cells"]}
    if r["comparisons"]:
        lines += ["", "| A | B | A − B, last epoch, paired by seed (95 % interval) |", "|---|---|---|"]
        lines += [f"| {titles[c['a']]} | {titles[c['b']]} | {_ci(c)} |" for c in r["comparisons"]]
    return lines


def _seeds(figure: str, n: int, seeds: int) -> str:
    """A figure over fewer than all the bench's seeds says over how many."""
    return figure if n == seeds or figure == "-" else f"{figure} (n={n} of {seeds})"


def build_table(weights: Path, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    lines = ["# CIFAR-100 evidence", "",
             "Rebuilt by `python benchmarks/cifar100/land.py --table` from every unit filed so far (how a unit runs: "
             "[benchmarks/cifar100/README.md](../../cifar100/README.md)). Last-epoch accuracy is the headline; the "
             "best epoch is chosen on the test set and so optimistic, reported because the published figures are "
             "best-epoch. Students distil from the teacher's **last-epoch** weights.", "",
             "## Teachers (`btkd train`, the standard recipe, cross-entropy only)", ""]
    lines += teacher_rows(weights)
    benches = sorted(p for p in results.iterdir() if p.is_dir() and any(p.glob("unit_s*/bench.yaml")))
    lines += ["", "## Benches (`btkd bench`, units pooled over their seeds and methods)", ""]
    if not benches:
        lines.append("No bench unit filed yet.")
    for bench in benches:
        lines += bench_section(bench) + [""]
    path = results / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("returned", nargs="?", type=Path, help="the folder a unit.sh call returned")
    ap.add_argument("--table", action="store_true", help="only rebuild the table")
    ap.add_argument("--card", help="the GPU, when meta.json's device name is not the whole story")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights", help="the weights folder (default weights/)")
    ap.add_argument("--paused", type=Path, default=ROOT / ".data" / "paused",
                    help="where a paused unit's files are kept for the next window (default .data/paused/, ignored)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "cifar100",
                    help="where bench units and the table go (default benchmarks/results/cifar100/)")
    args = ap.parse_args(argv)
    if not args.table and args.returned is None:
        ap.error("give the returned folder, or --table")
    args.weights, args.results, args.paused = args.weights.resolve(), args.results.resolve(), args.paused.resolve()
    args.returned = args.returned.resolve() if args.returned is not None else None
    here = Path.cwd()
    os.chdir(ROOT)  # the repository's own folders are then named relative to it
    try:
        if args.returned is not None:
            print(land(args.returned, args.weights, args.results, args.card, args.paused)
                  + file_smoke(args.returned, args.results) + file_gpu_bench(args.returned, args.results))
            if (args.returned / "fast_path_failure.txt").is_file():
                print(f"the GPU's fast path failed in this window and it trained again without it: read "
                      f"{args.returned / 'fast_path_failure.txt'} and fix the fast path before the next window")
        print(f"table: {build_table(args.weights, args.results)}")
    finally:
        os.chdir(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
