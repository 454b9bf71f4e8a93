"""Running a bench (one grid: every method x every seed against one teacher) and writing its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

from ..config import ConfigError, yaml_dump
from ..engine.grid import Grid, MemberSpec
from ..engine.run_folder import remove_stale_temp_files, write_json, write_text_atomic
from .plots import PLOT_FILES, bench_plots
from .results import collect_units, member_dir, results_table
from .spec import BenchSpec, load_bench

__all__ = ["run_bench", "resume_bench", "write_bench_report", "bench_grid"]

REPORT_FILES = ("results.json", "results.md")


COMMAND_LINE = "# command: "  # bench.yaml's record of the command that started the bench


def bench_grid(spec: BenchSpec, resume: bool = False, echo: Callable[[str], None] = print,
               command: Optional[str] = None) -> Grid:
    """The grid of a bench: members ``<label>-s<seed>`` in ``<folder>/runs/``, one lane per seed."""
    members = [MemberSpec(f"{m.label}-s{seed}", spec.config(m.label, seed), member_dir(spec.folder, m.label, seed))
               for seed in spec.seeds for m in spec.methods]
    text = "# The resolved bench config (btkd bench --resume reads it)\n"
    if command and "\n" not in command:  # kept from the start: a bench killed before its first report has no results.json
        text += f"{COMMAND_LINE}{command}\n"
    text += yaml_dump(spec.to_dict(), sort_keys=False)
    own = {f"{m.label}-s{seed}": f"bench.methods.{m.label}.distill.options." for m in spec.methods
           if "distill" in m.overrides for seed in spec.seeds}  # the base's distill does not reach these
    return Grid(members, spec.folder, resume=resume, echo=echo, title=spec.name, root_files={"bench.yaml": text},
                option_prefixes=own)


def run_bench(spec: BenchSpec, echo: Callable[[str], None] = print, command: Optional[str] = None,
              resume: bool = False) -> Dict[str, Any]:
    """Train the bench (or continue it, ``resume=True``) as one grid and write its report; returns
    the results.

    Every method x seed of ``spec`` trains against one teacher, the members of a seed on the same
    batches, into ``spec.folder`` (``bench.yaml``, ``runs/<label>-s<seed>/``, ``checkpoint.pt``); then
    `write_bench_report` writes ``results.json``, ``results.md`` and the plots there. The returned
    dict is ``results.json``'s: per-method cells (``cells``), the paired comparisons with their
    intervals (``comparisons``), student vs teacher (``vs_teacher``) and the (label, seed)
    members no unit trained (``missing``); docs/BENCH.md describes it. ``echo`` takes the progress lines; ``command``, the command line that started the
    bench, is recorded in the report. Under torchrun only rank 0 writes and returns the results
    (the others return ``{}``). A folder that already holds a bench is a FileExistsError unless
    ``resume``."""
    grid = bench_grid(spec, resume=resume, echo=echo, command=command)
    if not grid.ctx.is_main:
        echo = lambda *_: None  # noqa: E731  (once under torchrun)
    echo(f"bench {spec.name}: {len(spec.methods)} methods x {len(spec.seeds)} seeds = {len(grid.members)} "
         f"students, {spec.config(spec.methods[0].label, spec.seeds[0]).optim.epochs} epochs -> {spec.folder}")
    grid.fit()
    if not grid.ctx.is_main:
        return {}
    if grid.paused:
        echo(f"bench {spec.name}: paused after epoch {grid.epochs_done} of {grid.epochs} (runtime.time_limit); "
             f"continue with: btkd bench --resume {spec.folder}. The report so far is in the folder.")
    return write_bench_report(spec.folder, command=command, locked=True)


def resume_bench(folder: Path, overrides: Sequence[str] = (), echo: Callable[[str], None] = print,
                 command: Optional[str] = None) -> Dict[str, Any]:
    """Continue a killed (or paused, or finished and now longer) bench from its folder, with the
    config its ``bench.yaml`` saved, and return `run_bench`'s results. ``overrides`` may change only
    what a resume may change (the learning rate, the number of epochs, ``data.root`` and runtime
    settings: the keys marked *resume* in docs/CONFIG.md), recorded in every member's meta.json; a
    method's ``distill`` settings, or anything else, is a ConfigError. A folder without
    ``bench.yaml`` is a FileNotFoundError."""
    folder = Path(folder)
    bench_yaml = folder / "bench.yaml"
    if not bench_yaml.is_file():
        raise FileNotFoundError(f"{folder} holds no bench.yaml: is it a bench folder? (a single run resumes with "
                                "`btkd distill --resume`)")
    changed = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] == "distill"]
    if changed:  # said here: the bench's own refusal would suggest a per-method key, which a resume refuses too
        raise ConfigError(f"a resume cannot change {changed}: the methods are what the bench measures; start a new "
                          "bench to change them")
    spec = load_bench(bench_yaml, overrides)
    spec.output_dir, spec.name = str(folder.parent), folder.name  # wherever the folder now is
    command = started_by(folder) or command  # the command that started the bench stays its record
    return run_bench(spec, echo=echo, command=command, resume=True)


def started_by(folder: Path) -> Optional[str]:
    """The command that started the bench in ``folder``: its report's, else the one bench.yaml records."""
    if (folder / "results.json").is_file():
        command = json.loads((folder / "results.json").read_text()).get("command")
        if command:
            return command
    if (folder / "bench.yaml").is_file():
        for line in (folder / "bench.yaml").read_text().splitlines():
            if line.startswith(COMMAND_LINE):
                return line[len(COMMAND_LINE):]
    return None


def write_bench_report(folder: Union[Path, Sequence[Path]], out: Optional[Path] = None,
                       command: Optional[str] = None, title: Optional[str] = None,
                       locked: bool = False) -> Dict[str, Any]:
    """``results.json``, ``results.md`` and the plots of the bench in ``folder``, written into ``out``
    (default: the bench folder itself); returns the results (`collect_units`). Works on an unfinished
    bench. Several folders are units of one bench (each its own seeds or methods), pooled into one
    report in ``out``, which they need (without it, a ValueError). ``title`` heads results.md
    (default: the bench's name). ``locked``: the caller holds the bench's lock (its own run)."""
    folders = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    if len(folders) > 1 and out is None:
        raise ValueError("a report pooled from several bench folders needs an output folder")
    out = Path(out) if out else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    # of a report that a kill interrupted; without the bench's lock (`btkd report` beside a running
    # bench) only old ones, not the bench's own write in flight
    remove_stale_temp_files(out, REPORT_FILES + PLOT_FILES, older_than=0.0 if locked else 600.0)
    if command is None:  # keep the command that ran the bench (a report written elsewhere: the bench's own)
        command = started_by(out) or (started_by(folders[0]) if len(folders) == 1 else None)
    results = collect_units(folders, command=command)
    write_json(out / REPORT_FILES[0], results)
    md = results_table(results)
    if title:  # the reader's heading; the bench's own name stays, as the line under it
        heading, rest = md.split("\n", 1)
        md = f"# {title}\n\n{heading.lstrip('# ')}\n{rest}"
    plots = bench_plots(results, out, title=title)
    md += "".join(f"\n## {caption}\n\n![{caption}]({name})\n" for name, caption in plots)
    if not plots:
        from ..report import no_plots_note

        md += f"\n{no_plots_note()}\n"
    write_text_atomic(out / REPORT_FILES[1], md)
    return results
