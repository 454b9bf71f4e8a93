"""A bench's results: collected from its members' run folders into ``results.json`` (schema below)
and a Markdown table. Works on an unfinished bench too (each member up to its last logged epoch,
and the results say so).

Several folders of one bench (units: each trained some of its methods on some seeds, with the same
recipe and teacher, e.g. in separate GPU windows) are collected as one bench over all their methods
and seeds (`collect_units`, ``btkd report UNIT UNIT ... --out``); a method configured otherwise in
two units, a (method, seed) trained twice, or another teacher is an error naming it.

``results.json`` (format ``btkd-bench-results-1``)::

    name, folder (null for several units), complete (every member finished), epochs, seeds, data,
    student, command
    units: one per bench folder: {folder, seeds, methods, complete, wall_time_s, environment, resumes
        (each `btkd bench --resume` that trained: at_epoch, changes {key: {from, to}}, environment)}
    missing: [label, seed] pairs no unit trained (left out of every figure)
    teacher: {model, checkpoint, checkpoint_sha256, test_acc (the first unit's), test_acc_measured (every
        unit's value), frac_wrong_mean} or null
    environment: {device, torch_version, btkd_version, git_commit, world_size, effective_batch_size}
    wall_time_s: the grid's training + evaluation time
    cells: one per method, in the config's order:
        label, title, method, btkd, btkd_options, student, seeds,
        last_acc / best_acc / best_epoch / epochs_done: one value per seed (null: diverged or not run),
        last_acc_stats / best_acc_stats: {n, mean, std}, diverged: {seed: {epoch, reason}},
        last_acc_fp32 / last_acc_fp32_stats: the last weights scored with an fp32 test forward (equal to
        last_acc for an fp32 run; null for runs of an older btkd),
        frac_wrong_mean (the teacher's error on the augmented training batches, averaged over epochs),
        n_rectified_per_epoch_mean, curves: {epoch: [...], test_acc_mean: [...], test_acc_std: [...],
        beta: [...], frac_wrong: [...], n_rectified: [...]} (means over seeds)
    comparisons: {kind (btkd_vs_host | ablation_vs_btkd | host_vs_alone | asked), a, b, metric: last_acc, seeds,
        n, mean, std, diffs, dropped, level, ci: [lo, hi] or null, t_crit, note}
    vs_teacher: per cell, student last-epoch accuracy minus the teacher's test accuracy as the unit that
        trained the seed measured it (same fields)
    A member counts as finished when it diverged, or its summary is of its log's last epoch and that is
    the bench's last; a comparison leaves out a pair whose members stopped at different epochs.
    Pooled units must agree on their base config and on how they ran (precision, teacher forward, batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..engine.run_folder import RunFolder
from ..report import resumes_text
from ..config import Config, ConfigError, config_from_dict, config_to_dict
from .spec import BenchSpec, Method, derived_comparisons, load_bench
from .stats import describe, paired_difference

__all__ = ["collect", "collect_units", "load_units", "results_table", "FORMAT", "UNIT_FREE_KEYS", "format_number", "format_mean_std",
           "format_difference", "verdict"]

FORMAT = "btkd-bench-results-1"


def member_dir(folder: Path, label: str, seed: int) -> Path:
    return Path(folder) / "runs" / f"{label}-s{seed}"


def _member(folder: Path, label: str, seed: int, epochs: int) -> Dict[str, Any]:
    run = RunFolder(member_dir(folder, label, seed))
    log = run.read_log()
    summary = None
    if run.file("summary.json").is_file():
        summary = json.loads(run.file("summary.json").read_text())
    diverged = summary.get("diverged") if summary else None
    best = max(log, key=lambda r: r["test_acc"]) if log else None
    done = log[-1]["epoch"] if log else 0
    return {"log": log, "summary": summary, "diverged": diverged, "epochs_done": done,
            # ended: diverged, or its summary is of the log's last epoch and that is the bench's last (a
            # summary from an earlier end, before a resume raised optim.epochs, is not)
            "finished": bool(summary) and (bool(diverged) or summary.get("epochs_done") == done == epochs),
            "last_acc": None if (diverged or not log) else log[-1]["test_acc"],
            # the summary's fp32 score, when it scored the weights of the log's last epoch (a resumed,
            # extended run that has not finished again still holds the earlier end's)
            "last_acc_fp32": (summary.get("last_acc_fp32") if summary and not diverged and log
                              and summary.get("epochs_done") == log[-1]["epoch"] else None),
            "best_acc": best["test_acc"] if best and not diverged else None,
            "best_epoch": best["epoch"] if best and not diverged else None,
            "meta": run.read_meta()}


def _curve_means(logs: List[List[Dict]], key: str, epochs: List[int]) -> List[Optional[float]]:
    out = []
    for e in epochs:
        vals = [r[key] for log in logs for r in log if r["epoch"] == e and key in r]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def _curve_stds(logs: List[List[Dict]], key: str, epochs: List[int]) -> List[Optional[float]]:
    return [describe([r[key] for log in logs for r in log if r["epoch"] == e and key in r])["std"] for e in epochs]


# Config keys that say where and how fast a unit ran, not what it computed: units may differ in them
# (the teacher's file may move: its sha256, which every member records, must agree).
UNIT_FREE_KEYS = ("seed", "name", "output_dir", "data.root", "data.workers", "model.teacher_checkpoint",
                  "runtime.device", "runtime.progress",
                  "runtime.tensorboard", "runtime.threads", "runtime.time_limit", "runtime.compile",
                  "runtime.cuda_graph", "runtime.channels_last")


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _pool(folders: List[Path], specs: List[BenchSpec]) -> Tuple[BenchSpec, Dict[Tuple[str, int], Path]]:
    """One bench spec over every unit's methods and seeds, and which folder trained each (method,
    seed). Refuses units that are not parts of one bench, naming what differs: a method configured
    otherwise in two units, or a (method, seed) trained twice."""
    owner: Dict[Tuple[str, int], Path] = {}
    methods: Dict[str, Method] = {}
    where: Dict[str, Tuple[Path, Config]] = {}  # a method's first unit, and its config there
    for folder, spec in zip(folders, specs):
        for m in spec.methods:
            cfg = spec.config(m.label, spec.seeds[0])
            if m.label in where:
                first, cfg0 = where[m.label]
                a, b = _flat(config_to_dict(cfg0)), _flat(config_to_dict(cfg))
                for key in sorted(set(a) | set(b)):
                    if key not in UNIT_FREE_KEYS and a.get(key) != b.get(key):
                        raise ConfigError(f"{folder} is not a unit of the bench in {first}: method {m.label!r} has "
                                          f"{key}={b.get(key)!r} there and {a.get(key)!r} here")
            else:
                where[m.label], methods[m.label] = (folder, cfg), m
            for seed in spec.seeds:
                if (m.label, seed) in owner:
                    raise ConfigError(f"method {m.label!r} with seed {seed} was trained in both "
                                      f"{owner[(m.label, seed)]} and {folder}: each unit of a bench adds seeds or "
                                      "methods of its own (bench.seeds=[...])")
                owner[(m.label, seed)] = folder
    # The base recipe must agree between all units, methods shared or not (units split by method share
    # none; a method sets only its own keys on top of the base, so this covers every other setting).
    base0 = _flat(config_to_dict(config_from_dict(specs[0].base)))
    for folder, spec in zip(folders[1:], specs[1:]):
        base = _flat(config_to_dict(config_from_dict(spec.base)))
        for key in sorted(set(base0) | set(base)):
            if key not in UNIT_FREE_KEYS and base0.get(key) != base.get(key):
                raise ConfigError(f"{folder} is not a unit of the bench in {folders[0]}: its base config has {key}="
                                  f"{base.get(key)!r} there and {base0.get(key)!r} here")
    seeds = sorted({s for _, s in owner})
    # where each unit ran (folders, time limit, ...) is the first unit's in the pooled configs, so
    # that the pairs derived from them (a method against itself with BTKD) do not see it
    ref = config_to_dict(specs[0].config(specs[0].methods[0].label, specs[0].seeds[0]))
    configs = {(label, s): dataclasses.replace(_where_of(cfg, ref), seed=s, name=f"{label}-s{s}")
               for label, (_, cfg) in where.items() for s in seeds}
    compare = list(dict.fromkeys(pair for spec in specs for pair in spec.compare))
    spec0 = specs[0]
    return BenchSpec(name=spec0.name, output_dir=spec0.output_dir, base=spec0.base, seeds=seeds,
                     methods=list(methods.values()), compare=compare, configs=configs), owner


def _where_of(cfg: Config, ref: Dict[str, Any]) -> Config:
    """``cfg`` with the where-it-ran settings (`UNIT_FREE_KEYS`, less seed and name) of ``ref``."""
    d = config_to_dict(cfg)
    for key in UNIT_FREE_KEYS:
        if key in ("seed", "name"):
            continue
        *path, last = key.split(".")
        src, dst = ref, d
        for part in path:
            src, dst = src[part], dst[part]
        dst[last] = src[last]
    return config_from_dict(d)


def _check_teacher(members: Dict, owner: Dict) -> None:
    shas = {}
    for key, v in members.items():
        sha = (v["meta"] or {}).get("teacher_checkpoint_sha256")
        if sha:
            shas.setdefault(sha, owner[key])
    if len(shas) > 1:
        (sha_a, where_a), (sha_b, where_b) = list(shas.items())[:2]
        raise ConfigError(f"the units distilled from different teacher weights: sha256 {sha_a[:12]}... in {where_a}, "
                          f"{sha_b[:12]}... in {where_b}")


ABSENT = {"log": [], "summary": None, "diverged": None, "epochs_done": 0, "finished": False, "last_acc": None,
          "last_acc_fp32": None,
          "best_acc": None, "best_epoch": None, "meta": {}}


def collect(folder: Path, command: Optional[str] = None) -> Dict[str, Any]:
    """The results of the bench in ``folder`` (its ``bench.yaml`` and member run folders)."""
    return collect_units([folder], command)


def _load_units(folders: List[Path]) -> Tuple[List[BenchSpec], BenchSpec, Dict[Tuple[str, int], Path]]:
    """Each unit's spec, the pooled spec and which folder trained each (method, seed)."""
    if not folders:
        raise ValueError("give at least one bench folder")
    specs: List[BenchSpec] = [load_bench(f / "bench.yaml") for f in folders]
    if len(folders) == 1:
        spec = specs[0]
        return specs, spec, {(m.label, s): folders[0] for m in spec.methods for s in spec.seeds}
    return (specs, *_pool(folders, specs))


def load_units(folders: List[Path]) -> BenchSpec:
    """The spec of the one bench that the units in ``folders`` are parts of (their bench.yaml files,
    pooled as `collect_units` pools them: every method on every seed); one folder: its own spec.
    A pooled report's folder holds no bench.yaml: this gives its spec from the units it names."""
    return _load_units([Path(f) for f in folders])[1]


def collect_units(folders: List[Path], command: Optional[str] = None) -> Dict[str, Any]:
    """The results of one bench trained in parts, in several bench folders (units: each its own
    seeds, or its own methods), pooled as if one bench had trained every method on every seed; a
    (method, seed) no unit trained is listed in ``missing`` and left out of every figure. One folder
    is a plain bench."""
    folders = [Path(f) for f in folders]
    specs, spec, owner = _load_units(folders)
    seeds = spec.seeds
    epochs_total = spec.config(spec.methods[0].label, spec.seeds[0]).optim.epochs
    members = {(m.label, s): _member(owner[(m.label, s)], m.label, s, epochs_total) if (m.label, s) in owner
               else dict(ABSENT) for m in spec.methods for s in seeds}
    trained = {k: v for k, v in members.items() if k in owner}
    _check_teacher(trained, owner)
    if len(folders) > 1:
        _check_environments(trained, owner)
    missing = [[label, s] for (label, s) in members if (label, s) not in owner]
    complete = all(v["finished"] for v in trained.values())
    cells = []
    for m in spec.methods:
        cfg = spec.config(m.label, spec.seeds[0])
        runs = [members[(m.label, s)] for s in seeds]
        logs = [r["log"] for r in runs]
        epochs = sorted({rec["epoch"] for log in logs for rec in log})
        frac = [rec["frac_wrong"] for log in logs for rec in log if "frac_wrong" in rec]
        rect = [rec["n_rectified"] for log in logs for rec in log if "n_rectified" in rec]
        cells.append({
            "label": m.label, "title": m.title, "method": cfg.distill.method, "btkd": cfg.distill.btkd.enabled,
            "btkd_options": _btkd_options(cfg), "student": cfg.model.student, "seeds": seeds,
            "last_acc": [r["last_acc"] for r in runs], "best_acc": [r["best_acc"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs], "epochs_done": [r["epochs_done"] for r in runs],
            "last_acc_stats": describe([r["last_acc"] for r in runs]),
            "last_acc_fp32": [r["last_acc_fp32"] for r in runs],
            "last_acc_fp32_stats": describe([r["last_acc_fp32"] for r in runs]),
            "best_acc_stats": describe([r["best_acc"] for r in runs]),
            "diverged": {str(s): r["diverged"] for s, r in zip(seeds, runs) if r["diverged"]},
            "frac_wrong_mean": sum(frac) / len(frac) if frac else None,
            "n_rectified_per_epoch_mean": sum(rect) / len(rect) if rect else None,
            "curves": {"epoch": epochs, "test_acc_mean": _curve_means(logs, "test_acc", epochs),
                       "test_acc_std": _curve_stds(logs, "test_acc", epochs),
                       "beta": _curve_means(logs, "beta", epochs),
                       "frac_wrong": _curve_means(logs, "frac_wrong", epochs),
                       "n_rectified": _curve_means(logs, "n_rectified", epochs)},
        })
    by_label = {c["label"]: c for c in cells}
    comparisons = []
    for kind, a, b in derived_comparisons(spec):
        comparisons.append({"kind": kind, "a": a, "b": b, "metric": "last_acc", "seeds": seeds,
                            **_paired(by_label[a], by_label[b])})
    teacher = _teacher(spec, members, cells)
    vs_teacher = []
    if teacher and teacher["test_acc"] is not None:
        for c in cells:  # each seed against the teacher's accuracy as the unit that trained it measured it
            accs = [_own_teacher_acc(members[(c["label"], s)]["meta"], teacher["test_acc"])
                    if (c["label"], s) in owner else None for s in seeds]
            vs_teacher.append({"a": c["label"], "b": "teacher", "metric": "last_acc", "seeds": seeds,
                               **paired_difference(c["last_acc"], accs)})
    units = []
    for folder, sp in zip(folders, specs):
        own = [v for key, v in members.items() if owner.get(key) == folder]
        walls = [v["summary"]["wall_time"] for v in own if v["summary"]]
        meta = next((v["meta"] for v in own if v["meta"]), {})
        units.append({"folder": str(folder), "name": sp.name, "seeds": list(sp.seeds), "methods": [m.label for m in sp.methods],
                      "complete": all(v["finished"] for v in own),
                      "wall_time_s": max(walls) if walls else None,  # the unit's members train side by side
                      "environment": {k: meta.get(k) for k in ENV_KEYS},
                      # the members resume together, so one member's record is the unit's
                      "resumes": [{k: r.get(k) for k in ("at_epoch", "changes", "environment")}
                                  for r in meta.get("resumes") or []]})
    first = next((v for v in members.values() if v["meta"]), {"meta": {}})["meta"]
    base = spec.config(spec.methods[0].label, spec.seeds[0])
    walls = [u["wall_time_s"] for u in units if u["wall_time_s"] is not None]
    return {
        "format": FORMAT, "name": spec.name, "folder": str(folders[0]) if len(folders) == 1 else None,
        "complete": complete, "epochs": epochs_total, "seeds": seeds, "student": sorted({c["student"] for c in cells}),
        "data": {"name": base.data.name, "train_size": first.get("train_size"), "test_size": first.get("test_size"),
                 # the global batch the members trained with (data.batch_size is per process)
                 "batch_size": first.get("effective_batch_size") or base.data.global_batch_size or base.data.batch_size,
                 "subsets": first.get("data_subsets")},
        "teacher": teacher, "environment": {k: first.get(k) for k in ENV_KEYS}, "units": units, "missing": missing,
        "wall_time_s": sum(walls) if walls else None, "command": command,
        "cells": cells, "comparisons": comparisons, "vs_teacher": vs_teacher,
    }


ENV_KEYS = ("device", "torch_version", "btkd_version", "git_commit", "world_size", "effective_batch_size",
            "precision", "cuda_graph", "teacher_precision", "teacher_bn_folded")


def _btkd_options(cfg) -> Optional[Dict[str, Any]]:
    return config_to_dict(cfg.distill.btkd) if cfg.distill.btkd.enabled else None


def _teacher(spec: BenchSpec, members, cells) -> Optional[Dict[str, Any]]:
    base = spec.config(spec.methods[0].label, spec.seeds[0])
    if not base.model.teacher:
        return None
    accs = [v["meta"]["teacher_test_acc"] for v in members.values() if v["meta"].get("teacher_test_acc") is not None]
    shas = [v["meta"].get("teacher_checkpoint_sha256") for v in members.values() if v["meta"]]
    frac = [c["frac_wrong_mean"] for c in cells if c["frac_wrong_mean"] is not None]
    return {"model": base.model.teacher, "checkpoint": base.model.teacher_checkpoint,
            "checkpoint_sha256": shas[0] if shas else None, "test_acc": accs[0] if accs else None,
            # units on other cards may score the same weights a sample apart: every value measured
            "test_acc_measured": sorted(set(accs)),
            "frac_wrong_mean": sum(frac) / len(frac) if frac else None}


def _own_teacher_acc(meta: Dict[str, Any], default: Optional[float]) -> Optional[float]:
    """The teacher's accuracy as a member's unit measured it; a unit that trained only students alone
    (CE) loaded no teacher and takes the bench's figure."""
    acc = (meta or {}).get("teacher_test_acc")
    return default if acc is None else acc


def _paired(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Two cells' last-epoch accuracies paired by seed; a pair whose members stopped at different
    epochs (units split by method, one still paused) is left out and named in the note."""
    xs, ys, uneven = list(a["last_acc"]), list(b["last_acc"]), []
    for i, (ea, eb) in enumerate(zip(a["epochs_done"], b["epochs_done"])):
        if ea != eb and xs[i] is not None and ys[i] is not None:
            xs[i] = ys[i] = None
            uneven.append(f"seed {a['seeds'][i]} ({ea} vs {eb} epochs)")
    out = paired_difference(xs, ys)
    if uneven:
        note = "left out, stopped at different epochs: " + ", ".join(uneven)
        out["note"] = f"{out['note']}; {note}" if out["note"] else note
    return out


# What each pooled member's meta.json must agree on: how its numbers were made.
POOLED_ENV_KEYS = ("precision", "teacher_precision", "teacher_bn_folded", "effective_batch_size", "world_size")


def _check_environments(members: Dict, owner: Dict) -> None:
    """Units pooled into one figure must have computed the same thing: the same student precision,
    teacher forward (it decides BTKD's split), and batch. Where they ran (card, commit) may differ
    and is listed per unit."""
    seen: Dict[str, Tuple[Any, Path]] = {}
    for key, v in members.items():
        meta = v["meta"] or {}
        for k in POOLED_ENV_KEYS:
            if meta.get(k) is None:  # a student alone (CE) has no teacher forward
                continue
            if k in seen and seen[k][0] != meta[k]:
                raise ConfigError(f"the units ran differently: {k}={seen[k][0]!r} in {seen[k][1]}, {meta[k]!r} in "
                                  f"{owner[key]}; pool only units that ran alike (same runtime.precision, "
                                  "runtime.teacher_precision, batch and number of processes)")
            seen.setdefault(k, (meta[k], owner[key]))


# ---------------------------------------------------------------------------------------------
# Markdown


def format_number(x: Optional[float], digits: int = 2, signed: bool = False) -> str:
    """``x`` with ``digits`` decimals (a sign with ``signed``); ``-`` for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_mean_std(stats: Dict[str, Any]) -> str:
    """``mean ± std`` of a `describe` record."""
    if not stats["n"]:
        return "-"
    return format_number(stats["mean"]) + (f" ± {format_number(stats['std'])}" if stats["std"] is not None else "")


def format_difference(c: Dict[str, Any]) -> str:
    """``mean [lo, hi]`` of a `paired_difference` record."""
    if not c["n"]:
        return "-"
    ci = f" [{format_number(c['ci'][0], signed=True)}, {format_number(c['ci'][1], signed=True)}]" if c["ci"] else " (one seed: no interval)"
    return format_number(c["mean"], signed=True) + ci


def verdict(c: Dict[str, Any]) -> str:
    """better / worse when the interval of a `paired_difference` record excludes 0."""
    if not c["ci"]:
        return "-"
    lo, hi = c["ci"]
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no clear difference"


def _teacher_forward(env: Dict[str, Any]) -> str:
    """", teacher forward fp32 with BN folded": how the teacher's logits (and BTKD's split) were made."""
    if env.get("teacher_precision") is None:
        return ""
    return (f", teacher forward {env['teacher_precision']}"
            + {True: " with BN folded", False: " with BN as trained"}.get(env.get("teacher_bn_folded"), ""))


def _resumes_text(unit: Dict[str, Any], brief: bool = False) -> str:
    """How a unit was continued from its checkpoint (``btkd bench --resume``). ``brief``: as a suffix
    of the unit's line in a pooled report."""
    resumes = unit.get("resumes") or []
    if not resumes:
        return ""
    text = resumes_text(resumes, unit.get("environment"))
    if brief:
        return f", resumed {text}"
    n = len(resumes)
    return f"resumed {n} time{'s' if n > 1 else ''} from the bench's checkpoint (`btkd bench --resume`): {text}"


def results_table(results: Dict[str, Any]) -> str:
    """The bench as Markdown: the cells, the paired comparisons, student vs teacher, and notes."""
    r = results
    t = r["teacher"]
    n_seeds = len(r["seeds"])
    names = list(dict.fromkeys(u.get("name", r["name"]) for u in r.get("units") or [])) or [r["name"]]
    lines = [f"# Bench `{names[0]}`" if len(names) == 1 else  # units named apart: the heading names them all
             "# Bench pooled from " + ", ".join(f"`{n}`" for n in names), ""]
    status = "complete" if r["complete"] else "**unfinished**: figures use each run's last logged epoch"
    lines += [f"- {status}; {r['epochs']} epochs; seeds {r['seeds']}; data {r['data']['name']} "
              f"({r['data']['train_size']} train / {r['data']['test_size']} test images, batch "
              f"{r['data']['batch_size']}); student {', '.join(r['student'])}",
              f"- device: {r['environment'].get('device')}, torch {r['environment'].get('torch_version')}, "
              f"precision {r['environment'].get('precision')}{_teacher_forward(r['environment'])}, btkd "
              f"{r['environment'].get('btkd_version')} (commit {str(r['environment'].get('git_commit'))[:10]})"]
    units = r.get("units") or []
    if len(units) > 1:
        lines.append(f"- pooled from {len(units)} units of this bench, each trained on its own seeds or methods:")
        for u in units:
            env = u["environment"]
            wall = f", {u['wall_time_s'] / 60:.1f} min" if u.get("wall_time_s") else ""
            lines.append(f"  - `{u['folder']}`: seeds {u['seeds']}, methods {', '.join(u['methods'])}, "
                         f"{'complete' if u['complete'] else 'unfinished'}, "
                         f"{env.get('device')}, torch {env.get('torch_version')}, commit "
                         f"{str(env.get('git_commit'))[:10]}{wall}{_resumes_text(u, brief=True)}")
    if t:
        measured = t.get("test_acc_measured") or []
        also = (f" (the units measured {', '.join(format_number(a) for a in measured)}; each seed is compared with "
                "its own unit's)") if len(measured) > 1 else ""
        lines.append(f"- teacher {t['model']} (`{t['checkpoint']}`): test acc {format_number(t['test_acc'])} %{also}, wrong on "
                     f"{format_number(100 * t['frac_wrong_mean'] if t['frac_wrong_mean'] is not None else None)} % of its "
                     "augmented training batches (mean over epochs)")
    if r.get("wall_time_s"):
        w = r["wall_time_s"]
        what = "the units together" if len(units) > 1 else "the whole grid"
        lines.append(f"- wall time {w / 60:.1f} min for {what}" if w >= 60 else f"- wall time {w:.0f} s for {what}")
    if r.get("command"):
        lines.append(f"- command: `{r['command']}`")
    if len(units) == 1 and units[0].get("resumes"):
        lines.append(f"- {_resumes_text(units[0])}")
    lines += ["", "## Test accuracy (%)", "",
              f"Mean ± standard deviation over {n_seeds} seed{'s' if n_seeds > 1 else ''}. **Last epoch** is the "
              "headline; *best epoch* is the highest test accuracy of any epoch, chosen on the test set itself, "
              "so it is optimistic (reported because the field reports it).", "",
              "| method | last epoch | best epoch (optimistic) | per-seed last epoch | teacher wrong (%) | "
              "rectified / epoch |", "|---|---|---|---|---|---|"]
    for c in r["cells"]:
        # a seed still short of the bench's last epoch says where it stands: its value is in the mean
        per_seed = ", ".join(format_number(v) + (f" (epoch {e})" if v is not None and e < r["epochs"] else "")
                             for v, e in zip(c["last_acc"], c["epochs_done"]))
        diverged = f" (diverged: seeds {', '.join(c['diverged'])})" if c["diverged"] else ""
        frac = format_number(100 * c["frac_wrong_mean"]) if c["frac_wrong_mean"] is not None else "-"
        rect = format_number(c["n_rectified_per_epoch_mean"], 0) if c["btkd"] else "-"
        lines.append(f"| {c['title']}{diverged} | {format_mean_std(c['last_acc_stats'])} | "
                     f"{format_mean_std(c['best_acc_stats'])} | {per_seed} | {frac} | {rect} |")
    rescored = [c for c in r["cells"] if any(a is not None and a != b for a, b in
                                                zip(c.get("last_acc_fp32", []), c["last_acc"]))]
    if rescored:  # the epochs were evaluated under bf16 autocast; the published recipes evaluate in fp32
        lines += ["", "The same last-epoch weights scored with an fp32 test forward (the epochs' test accuracy "
                  "above is taken under the run's bf16 autocast; the published recipes evaluate in fp32):", "",
                  "| method | last epoch, fp32 test forward | per seed |", "|---|---|---|"]
        for c in rescored:
            lines.append(f"| {c['title']} | {format_mean_std(c['last_acc_fp32_stats'])} | "
                         f"{', '.join(format_number(v) for v in c['last_acc_fp32'])} |")
    titles = {c["label"]: c["title"] for c in r["cells"]}
    if r["comparisons"]:
        lines += ["", "## Paired differences (last epoch, percentage points)", "",
                  "A minus B per seed (same data order, augmentation, teacher logits and initial weights), "
                  "mean and 95 % t interval over seeds. *better* / *worse*: the interval excludes 0.", "",
                  "| A | B | A - B | verdict | per seed |", "|---|---|---|---|---|"]
        for c in r["comparisons"]:
            lines.append(f"| {titles[c['a']]} | {titles[c['b']]} | {format_difference(c)} | {verdict(c)} | "
                         f"{', '.join(format_number(d, signed=True) for d in c['diffs'])} |")
    if r["vs_teacher"]:
        lines += ["", "## Student minus teacher (last epoch, percentage points)", "",
                  "| method | student - teacher | beats the teacher? |", "|---|---|---|"]
        for c in r["vs_teacher"]:
            v = verdict(c)
            beats = {"better": "yes", "worse": "no", "no clear difference": "not clearly"}.get(v, "-")
            lines.append(f"| {titles[c['a']]} | {format_difference(c)} | {beats} |")
    if r.get("missing"):
        lines += ["", "Not trained by any unit (left out of the figures above, and of the pairs that need them): "
                  + ", ".join(f"{titles[label]} seed {seed}" for label, seed in r["missing"]) + "."]
    if n_seeds == 1:
        lines += ["", "One seed only: no interval can be computed, and differences of a few tenths are noise."]
    return "\n".join(lines) + "\n"
