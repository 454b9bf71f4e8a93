"""One table over every committed CPU bench: does distillation pay, does BTKD help its host, how near
does a student come to its teacher.

Reads each bench's results.json (and its bench.yaml, for the members' loss weights) under
benchmarks/results/ and prints Markdown: one row per pair of a host and host + BTKD (full BTKD, its
default options; the ablations stay in each bench's own results.md), with the host against the student
trained alone and BTKD against its host, each a paired difference with its 95 % t interval, as the
bench computed it. The headline counts only the planned benches (not the diagnostics written after
one to explain it) and only hosts at their own loss weights.

    python benchmarks/evidence_summary.py                                    # print it
    python benchmarks/evidence_summary.py --out benchmarks/results/evidence_summary.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from btkd.bench.results import load_units
from btkd.bench.spec import BenchSpec, load_bench
from btkd.config import BTKDConfig
from btkd.losses import make_host
from btkd.strategy import AUTHORS_WEIGHTS

ROOT = Path(__file__).resolve().parent / "results"

# (folder under benchmarks/results, role): "planned" benches were set before they ran (their setting
# was committed first, or they are a setting's first bench); "diagnostic" ones were written after a
# planned bench, to explain what it showed, and do not enter the headline; a "unit" is one part of a
# bench whose pooled table (`btkd report` on its units) is listed as planned: listed, not counted.
BENCHES: List[Tuple[str, str]] = [
    ("fashion_mnist/bench", "planned"),
    ("fashion_mnist/conv_student", "planned"),
    ("fashion_mnist/small_data", "planned"),
    ("fashion_mnist/hosts", "planned"),
    ("fashion_mnist/authors_weights", "diagnostic"),
    ("fashion_mnist/mlkd_levels", "diagnostic"),
    ("fashion_mnist/dist_terms", "diagnostic"),
    ("cifar100_cpu/bench", "planned"),
    ("cifar100_cpu/authors_weights", "diagnostic"),
    ("cifar100_cpu_resnet8/bench", "planned"),
    ("cifar100_cpu_resnet8/convnet8", "planned"),
    ("cifar100_cpu_resnet8/convnet16", "unit"),
    ("cifar100_cpu_resnet8/convnet16_more_seeds", "unit"),
    ("cifar100_cpu_resnet8/convnet16_6seeds", "planned"),
    ("cifar100_cpu_resnet8/convnet16_long", "planned"),
]


def reading(ci: List[float]) -> str:
    """What a paired difference says: only an interval that excludes 0 is a difference."""
    return "lower" if ci[1] < 0 else "higher" if ci[0] > 0 else "no clear difference"


def diff(c: Optional[Dict[str, Any]]) -> str:
    if c is None:
        return ""
    return f"{c['mean']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"


def weights_kind(cfg) -> str:
    """``own`` (the host framework's own CE and distillation weights), ``authors`` (the BTKD authors'
    0.5 / 0.5) or ``CE a / KD b``."""
    d = cfg.distill
    host = make_host(d.method, **d.options)
    ce = host.default_ce_weight if d.ce_weight is None else d.ce_weight
    kd = host.default_kd_weight if d.kd_weight is None else d.kd_weight
    if (ce, kd) == (host.default_ce_weight, host.default_kd_weight):
        return "own"
    if (ce, kd) == (AUTHORS_WEIGHTS["ce_weight"], AUTHORS_WEIGHTS["kd_weight"]):
        return "authors"
    return f"CE {ce:g} / KD {kd:g}"


def bench_spec(folder: Path, results: Dict[str, Any], root: Path) -> BenchSpec:
    """The spec of the bench in ``folder``: its bench.yaml, or for a table pooled from units (`btkd
    report UNIT UNIT --out`, no bench.yaml of its own) its units' (named in results.json relative to
    the repo root, read under ``root``, the results folder)."""
    if (folder / "bench.yaml").is_file() or not results.get("units"):
        return load_bench(folder / "bench.yaml", [])
    units = []
    for unit in results["units"]:
        rel = Path(unit["folder"])
        if rel.is_absolute() or rel.parts[:2] != ("benchmarks", "results"):
            raise SystemExit(f"{folder}/results.json pools a unit outside benchmarks/results ({rel}): pool the "
                             "committed unit folders, from the repo root (`btkd report benchmarks/results/...`)")
        units.append(root.joinpath(*rel.parts[2:]))
    return load_units(units)


def summarise(folder: Path, role: str, name: Optional[str] = None, root: Path = ROOT) -> Dict[str, Any]:
    """A bench's setting, its pairs of host and host + full BTKD, and its students against the teacher;
    ``name`` (default: the folder) heads its rows; ``root``: the results folder (a pooled table's units
    are read there)."""
    results = json.loads((folder / "results.json").read_text())
    spec = bench_spec(folder, results, root)
    seed = results["seeds"][0]
    cells = {c["label"]: c for c in results["cells"]}
    by_pair = {(c["kind"], c["a"], c["b"]): c for c in results["comparisons"]}
    full_btkd = BTKDConfig(enabled=True)
    pairs = []
    for (kind, a, b), c in by_pair.items():
        if kind != "btkd_vs_host" or spec.config(a, seed).distill.btkd != full_btkd:
            continue  # an ablation: its own bench's results.md has it
        vs_alone = next((x for (k, h, _), x in by_pair.items() if k == "host_vs_alone" and h == b), None)
        pairs.append({"host": cells[b]["title"], "weights": weights_kind(spec.config(b, seed)),
                      "host_acc": cells[b]["last_acc_stats"]["mean"], "btkd_acc": cells[a]["last_acc_stats"]["mean"],
                      "host_vs_alone": vs_alone, "btkd_vs_host": c})
    alone = next((c for c in results["cells"] if c["method"] == "ce"), None)
    best = max(results["vs_teacher"], key=lambda c: c["mean"]) if results["vs_teacher"] else None
    return {"name": name or str(folder), "role": role, "data": results["data"]["name"],
            "teacher": results["teacher"]["model"], "teacher_acc": results["teacher"]["test_acc"],
            "students": "/".join(results["student"]), "seeds": len(results["seeds"]), "complete": results["complete"],
            "alone_acc": alone["last_acc_stats"]["mean"] if alone else None, "pairs": pairs,
            "best_vs_teacher": best, "best_title": cells[best["a"]]["title"] if best else None}


def plain_loop_reruns(root: Path = ROOT) -> List[Dict[str, Any]]:
    """The benches rerun by `benchmarks/plain_loop.py` (its finished full runs under ``root/plain_loop``;
    smoke runs and unfinished ones left out): each one's bench folder under ``root`` and its paired
    differences, plain loop and bench side by side."""
    reruns = []
    for path in sorted((root / "plain_loop").glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("smoke") or r.get("complete") is False:  # a smoke run, or seeds still running
            continue
        bench = r["bench"].split("benchmarks/results/", 1)[-1]
        reruns.append({"bench": bench, "file": path.name, "seeds": len(r["seeds"]),
                       "differences": r["comparison"]["differences"]})
    return reruns


def markdown(benches: List[Dict[str, Any]], missing: List[str], reruns: List[Dict[str, Any]] = ()) -> str:
    planned = [(b, p) for b in benches if b["role"] == "planned" for p in b["pairs"] if p["weights"] == "own"]
    btkd = [reading(p["btkd_vs_host"]["ci"]) for _, p in planned]
    host = [reading(p["host_vs_alone"]["ci"]) for _, p in planned if p["host_vs_alone"]]
    out = ["# Evidence so far: every CPU bench in one table", "",
           "Made by `python benchmarks/evidence_summary.py --out benchmarks/results/evidence_summary.md` from "
           "the committed results.json of each bench (last-epoch test accuracy, %; differences paired by seed "
           "with 95 % t intervals; a difference counts only when its interval excludes 0). Each bench's own "
           "results.md has its ablations, best-epoch figures and plots. Role: *planned* benches were set before "
           "they ran; *diagnostic* ones were written after a planned bench to explain it, and a *unit* is one "
           "part of a planned bench listed here pooled (`btkd report` on its units): neither enters the "
           "headline.", "",
           f"**Headline (planned benches, hosts at their own loss weights):** BTKD against its host is lower in "
           f"{btkd.count('lower')} of {len(btkd)} pairs, higher in {btkd.count('higher')}, with no clear difference "
           f"in {btkd.count('no clear difference')}. The host (without BTKD) against the student trained alone is "
           f"lower in {host.count('lower')} of {len(host)}, higher in {host.count('higher')}, with no clear "
           f"difference in {host.count('no clear difference')}.", "",
           "| bench | role | data | teacher (test %) | student | seeds | host | weights | alone | host | "
           "host vs alone | host + BTKD | BTKD vs host | reading |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in benches:
        name = b["name"]
        if not b["complete"]:
            name += " (in progress)"
        alone = "" if b["alone_acc"] is None else f"{b['alone_acc']:.2f}"
        for p in b["pairs"]:
            out.append(f"| {name} | {b['role']} | {b['data']} | {b['teacher']} ({b['teacher_acc']:.2f}) | "
                       f"{b['students']} | {b['seeds']} | {p['host']} | {p['weights']} | {alone} | "
                       f"{p['host_acc']:.2f} | {diff(p['host_vs_alone'])} | {p['btkd_acc']:.2f} | "
                       f"{diff(p['btkd_vs_host'])} | {reading(p['btkd_vs_host']['ci'])} |")
    out += ["", "Nearest student to its teacher, per bench (the student's last epoch minus the teacher's test "
            "accuracy):", "", "| bench | teacher (test %) | nearest student | vs teacher |", "|---|---|---|---|"]
    for b in benches:
        if b["best_vs_teacher"]:
            out.append(f"| {b['name']} | {b['teacher']} ({b['teacher_acc']:.2f}) | {b['best_title']} | "
                       f"{diff(b['best_vs_teacher'])} |")
    if reruns:
        out += ["", "Benches rerun by a plain PyTorch loop written apart from btkd (`benchmarks/plain_loop.py`; its "
                "tables, with each method's mean against the bench's, in `plain_loop/README.md`), paired "
                "differences of the loop and of the bench, the bench's over the seeds the loop ran:", "",
                "| bench | seeds | KD vs alone: loop | bench | KD+BTKD vs KD: loop | bench |", "|---|---|---|---|---|---|"]
        for r in reruns:
            d = r["differences"]
            out.append(f"| {r['bench']} | {r['seeds']} | {diff(d['KD - alone']['plain'])} | "
                       f"{diff(d['KD - alone']['bench'])} | {diff(d['KD+BTKD - KD']['plain'])} | "
                       f"{diff(d['KD+BTKD - KD']['bench'])} |")
    if missing:
        out += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the results folder (default: benchmarks/results)")
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    benches, missing = [], []
    for rel, role in BENCHES:
        folder = args.root / rel
        if (folder / "results.json").is_file():
            benches.append(summarise(folder, role, rel, args.root))
        else:
            missing.append(rel)
    if not benches:
        print(f"no bench results under {args.root}: run a CPU bench script first (benchmarks/README.md)",
              file=sys.stderr)
        return 2
    text = markdown(benches, missing, plain_loop_reruns(args.root))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
