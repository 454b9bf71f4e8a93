"""Benches: many students against one teacher in one pass, paired by seed, with honest statistics.

`spec` reads bench configs, `run` trains one as a single grid (engine/grid.py), `results`
collects the members' logs into ``results.json`` and a Markdown table, `stats` holds the
statistics, `plots` the figures.
"""

from .results import collect, collect_units, results_table
from .run import resume_bench, run_bench, write_bench_report
from .spec import BenchSpec, load_bench
from .stats import describe, paired_difference

__all__ = ["BenchSpec", "load_bench", "run_bench", "resume_bench", "write_bench_report", "collect", "collect_units", "results_table",
           "describe", "paired_difference"]
