"""The ``btkd`` command line: train, distill, bench, eval, inspect-teacher, demo, report, configs, methods,
models."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

EPILOG_OVERRIDES = ("Overrides are key=value pairs with dotted keys, read as YAML values, e.g.\n"
                    "  optim.epochs=10 optim.milestones=[5,8] data.batch_size=128 distill.btkd.enabled=true seed=1\n"
                    "Every key, its default and allowed values: docs/CONFIG.md")
EPILOG_PATHS = ("Paths: model.teacher_checkpoint, data.root, output_dir and every file or folder given on the "
                "command line\nare relative to the current directory (inherit: in a YAML file is relative to that "
                "file, or a\nbuilt-in config name).")
EPILOG_NAMES = ("Run folder: output_dir/name. A built-in config's name stands for its student, teacher, method,\n"
                "BTKD switch and dataset; when key=value overrides (or a file of yours that inherits it without a\n"
                "name of its own) change any of them and name=... is not given, the run is named after what it is:\n"
                "[<dataset>_]<method>[_btkd]_<teacher>_<student>, or teacher_<student> with distill.method=ce\n"
                "(<dataset>_ left out for cifar100); so is a run whose config sets no name. A name you wrote is kept.\n"
                "btkd prints the name when it derives one.")
EPILOG_BENCH_NAMES = ("Bench folder: output_dir/name. When key=value overrides change the student, teacher or dataset\n"
                      "of a built-in bench and name=... is not given, the bench is named\n"
                      "[<dataset>_]bench_<teacher>_<student> (<dataset>_ left out for cifar100).")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a YAML file or a built-in config name (see `btkd configs`)")
    # default=[]: argparse would otherwise list the optional overrides among the missing arguments
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or paused run from its last checkpoint "
                   "(key=value overrides may then change optim.lr, optim.epochs, data.root and how the run computes: "
                   "runtime.device, precision, compile, time_limit, ...; the change is logged in meta.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btkd", description="Knowledge distillation without the teacher's bias.",
                                     epilog=EPILOG_PATHS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a model with cross-entropy (a teacher, or a student alone)",
                       description="Train model.student with cross-entropy only (distill.method=ce).",
                       epilog="Example: btkd train cifar100/teachers/resnet32x4 optim.epochs=240\n" + EPILOG_OVERRIDES
                              + "\n" + EPILOG_NAMES + "\n" + EPILOG_PATHS,
                       formatter_class=fmt)
    _add_run_args(p)
    p = sub.add_parser("distill", help="distil a student from a trained teacher (KD, DKD, +BTKD)",
                       description="Distil model.student from model.teacher with distill.method, optionally "
                                   "wrapped in BTKD (distill.btkd.enabled=true).",
                       epilog="Example: btkd distill cifar100/kd_btkd/res32x4_res8x4 "
                              "model.teacher_checkpoint=teacher.pth\n" + EPILOG_OVERRIDES + "\n" + EPILOG_NAMES + "\n"
                              + EPILOG_PATHS, formatter_class=fmt)
    _add_run_args(p)
    p = sub.add_parser("bench", help="several methods x seeds against one teacher in one pass, with paired statistics",
                       description="Train every method of a bench config on every seed as one grid (one teacher "
                                   "forward per batch and seed; students of a seed see identical batches), then "
                                   "write results.json, results.md and plots into the bench folder.",
                       epilog="Examples:\n  btkd bench cifar100/bench/res32x4_res8x4\n"
                              "  btkd bench cifar100/bench/res32x4_res8x4 bench.seeds=[0,1] optim.epochs=10 optim.milestones=[5,8]\n"
                              "  btkd bench --resume runs/bench_res32x4_res8x4\n" + EPILOG_OVERRIDES + "\n"
                              + EPILOG_BENCH_NAMES + "\n" + EPILOG_PATHS,
                       formatter_class=fmt)
    _add_run_args(p)
    p = sub.add_parser("eval", help="test accuracy of a checkpoint",
                       description="Evaluate a btkd, mdistiller or RepDistiller checkpoint (or safetensors file). "
                                   "A checkpoint inside a btkd run folder uses that run's config.",
                       epilog="Examples:\n  btkd eval runs/kd_btkd_res32x4_res8x4/best.safetensors\n"
                              "  btkd eval ckpt_epoch_240.pth --model resnet32x4 --data cifar100\n" + EPILOG_PATHS,
                       formatter_class=fmt)
    p.add_argument("checkpoint", help="the weights file")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="config overrides, e.g. data.root=...")
    p.add_argument("--model", help="model name, e.g. resnet32x4 (default: the run's student)")
    p.add_argument("--data", help="dataset name (default: the run's, else cifar100)")
    p.add_argument("--root", help="dataset folder (default: the dataset's usual place)")
    p.add_argument("--config", help="a config file or built-in name to take model and data from")
    # no defaults here: a flag left out must not override data.eval_batch_size=... / runtime.device=...
    p.add_argument("--batch-size", type=int, help="test batch size (default 500, or data.eval_batch_size=N)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto, or runtime.device=...)")
    p = sub.add_parser("inspect-teacher", help="the teacher's bias: errors under augmentation, per class, confusions, "
                       "calibration", description="Measure a teacher before distilling from it: train and test error, "
                       "the samples BTKD would rectify per epoch under the training augmentation, error per class, the "
                       "most confused class pairs, and calibration (ECE, reliability diagram). Markdown + PNG.",
                       epilog="Examples:\n  btkd inspect-teacher cifar100/kd/res32x4_res8x4\n"
                              "  btkd inspect-teacher runs/teacher_resnet32x4/last.safetensors\n"
                              "  btkd inspect-teacher ckpt_epoch_240.pth --model resnet32x4 --data cifar100\n"
                              + EPILOG_OVERRIDES + "\n" + EPILOG_PATHS, formatter_class=fmt)
    p.add_argument("source", help="a distillation or bench config (its model.teacher), a weights file, or weights:NAME "
                   "(a published teacher, with the model and data of its training run)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="config overrides, e.g. data.root=...")
    p.add_argument("--model", help="the teacher's model name, with a weights file outside a run folder")
    p.add_argument("--data", help="dataset name, with a weights file outside a run folder (default cifar100)")
    p.add_argument("--out", help="report folder (default reports/inspect_<teacher>)")
    p.add_argument("--aug-epochs", type=int, default=3, help="training epochs of augmentation to measure (default 3)")
    p.add_argument("--compare-bf16", action="store_true",
                   help="also count the split decisions (teacher right or wrong) that a bf16 forward, and on a GPU a "
                        "TF32 one, change against an IEEE fp32 forward (runtime.teacher_precision picks one)")
    p = sub.add_parser("demo", help="teacher, KD and KD+BTKD on Fashion-MNIST (or digits) with a report",
                       description="Train a small teacher, then students with KD and KD+BTKD, print a table with "
                                   "the teacher's error on its augmented training samples and the samples BTKD "
                                   "rectified, and write a report folder. Fashion-MNIST when installed (Debian's "
                                   "dataset-fashion-mnist), else scikit-learn's digits with a small, briefly trained "
                                   "teacher that gets part of its training set wrong.")
    p.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    p.add_argument("--runs", default="runs/demo", help="run folders go here (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=("auto", "fashion_mnist", "digits"), default="auto",
                   help="the dataset (default auto: Fashion-MNIST if installed, else digits)")
    p = sub.add_parser("report", help="a Markdown table and plots from run folders or a bench folder",
                       description="Run folders: one row per run. A bench folder: mean and spread over seeds, "
                                   "paired differences with 95 % intervals, student vs teacher, and plots. "
                                   "Several bench folders of one bench (each trained on its own seeds, e.g. "
                                   "bench.seeds=[0] and bench.seeds=[1]): one report pooled over all their seeds. "
                                   "Works on runs still in progress.")
    p.add_argument("runs", nargs="+", help="run folders, or a bench folder, or several bench folders of one bench "
                                           "(units trained on different seeds: pooled into one report, needs --out)")
    p.add_argument("--out", help="output folder (default: reports/report; for a bench, the bench folder)")
    p.add_argument("--title", help="the report's heading (default: 'btkd report'; for a bench, its name)")
    p = sub.add_parser("configs", help="list the built-in configs, or print one fully resolved",
                       description="Without NAME: the names of the built-in configs. With NAME (a built-in name or a "
                                   "YAML file) and optional key=value overrides: the config fully resolved (every "
                                   "key, after inherit: and overrides; the run name btkd would use as a comment), as YAML.",
                       epilog="Examples:\n  btkd configs\n  btkd configs cifar100/kd_btkd/res32x4_res8x4\n"
                              "  btkd configs cifar100/kd/res32x4_res8x4 model.student=resnet20 > my.yaml\n"
                              + EPILOG_OVERRIDES, formatter_class=fmt)
    p.add_argument("name", nargs="?", help="a built-in config name or a YAML file")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    p = sub.add_parser("models", help="every model name with its parameter count",
                       description="The registered models (model.student / model.teacher) and their parameter "
                                   "counts with a head of --num-classes classes.")
    p.add_argument("--num-classes", type=int, default=100, help="classes of the head (default 100)")
    sub.add_parser("methods", help="every distillation method (host loss): paper, needs, BTKD, defaults",
                   description="List the registered host losses: their paper, what they need from the training "
                               "loop, whether BTKD can wrap them, their CE / KD weights and default options.")
    return parser


def _check_command_fits(command: str, method: str, resume: Optional[str] = None) -> None:
    """`btkd train` trains with cross-entropy alone, `btkd distill` distils: the config (or, on
    --resume, the run folder's saved config) must agree with the subcommand."""
    from .config import ConfigError

    if command == "train" and method != "ce":
        if resume:
            raise ConfigError(f"{resume} holds a distillation run (distill.method={method!r}); continue it with "
                              f"`btkd distill --resume {resume}`")
        raise ConfigError(f"this config distils (distill.method={method!r}); "
                          "use `btkd distill`, or distill.method=ce to train with cross-entropy")
    if command == "distill" and method == "ce":
        if resume:
            raise ConfigError(f"{resume} holds a run trained with cross-entropy alone (distill.method='ce', no "
                              f"teacher); continue it with `btkd train --resume {resume}`")
        raise ConfigError("this config has distill.method=ce (no teacher); use `btkd train`")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler's pre-emption or time limit, torchrun stopping its workers),
    raised where Ctrl-C's KeyboardInterrupt is: a run stops the same way and says what it kept."""


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c():
    """While the command runs, SIGTERM raises `Terminated` in the main thread; the previous handler is
    back afterwards (a program that calls `main` keeps its own; the library itself installs none)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a handler
        return

    chld = []

    def stop(signum, frame):
        # Once: a second SIGTERM (under srun a worker gets Slurm's and torchrun's) must not cut the
        # clean-up short. A process that hangs in it still goes with SIGKILL.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A scheduler signals every process of the job: DataLoader workers (an imagefolder run's) die
        # of it, and torch's SIGCHLD handler would raise over the clean-up that this stop starts.
        if hasattr(signal, "SIGCHLD"):  # POSIX
            chld.append(signal.signal(signal.SIGCHLD, signal.SIG_DFL))
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        for handler, sig in ((previous, signal.SIGTERM), *((h, signal.SIGCHLD) for h in chld)):
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def main(argv: Optional[List[str]] = None) -> int:
    with _sigterm_stops_like_ctrl_c():
        try:
            code = _main(argv)
        except Terminated:  # outside a command (while it parsed its arguments): nothing to say
            _leave_process_group(None)
            return 128 + signal.SIGTERM
        except BaseException:
            _leave_process_group(None)
            raise
        _leave_process_group(code)
        return code


def _leave_process_group(exit_code: Optional[int]) -> None:
    """A run under torchrun joined a process group: leave it. After a clean end (``exit_code``) the
    process exits at once: gloo's worker threads may still hold tensors when the interpreter tears
    down, and freeing them then aborts the process now and then (SIGABRT, "terminate called without
    an active exception"), which torchrun reports as a failed run though all its files are written."""
    if "torch.distributed" not in sys.modules:
        return
    from .engine import distributed

    if distributed.leave() and exit_code is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def _main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # recorded with a bench's results
    # key=value overrides may also follow options (argparse stops collecting them after one)
    if extra and (not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra)):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        flags = [e.lstrip("-").split("=")[0] for e in extra if e.startswith("--")]
        hint = ""
        if flags and hasattr(args, "overrides"):  # --epochs=2: a config key, given as key=value
            from .config import config_keys

            keys = [k for k in config_keys() if k.split(".")[-1] == flags[0].replace("-", "_")]
            hint = (f"; config settings are key=value overrides, e.g. {keys[0]}=..." if keys else
                    "; config settings are key=value overrides (`btkd configs NAME` shows the keys)")
        sub.error(f"unrecognised arguments: {' '.join(extra)}{hint}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from ._checks import MissingExtra
    from .config import ConfigError

    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    # MissingExtra: a plain `pip install btkd` lacks the extras; its message names the one to install
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError, MissingExtra) as err:
        print(f"btkd {args.command}: error: {err}", file=sys.stderr)
        if isinstance(err, FileNotFoundError):
            print(f"(relative paths, in a config or on the command line, are read from the current directory: "
                  f"{Path.cwd()})", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `btkd configs | head`: the reader left; no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk: every file is written atomically, so what a run had saved is intact
        where = f" writing {err.filename}" if err.filename else ""
        # a run stopped before its first checkpoint removes its folder (nothing to resume)
        then = (f". Files are written atomically, so the last finished epoch's checkpoint is intact: free some "
                f"space, then continue the run with `btkd {args.command} --resume <its folder>` (a run stopped "
                "before its first checkpoint leaves no folder: run the same command again)"
                if args.command in ("train", "distill", "bench") else ": free some space and run it again")
        print(f"btkd {args.command}: error: {err.strerror}{where}{then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: a run says what it kept (the trainer's message)
        terminated = isinstance(err, Terminated)
        if os.environ.get("RANK", "0") == "0":  # once under torchrun, which stops every worker
            print(f"\nbtkd {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}"
                  + (f"; {err}" if str(err) else ""), file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)  # 143 or 130, as a shell reports them


def _dispatch(args) -> int:
    from .config import ConfigError, builtin_configs, load_config

    if args.command == "configs":
        if args.name is None:
            if args.overrides:
                raise ConfigError("key=value overrides go after a config name: btkd configs NAME key=value ...")
            print("\n".join(builtin_configs()))
        else:
            print(resolved_yaml(args.name, args.overrides), end="")
        return 0
    if args.command == "models":
        print(_models_table(args.num_classes))
        return 0
    if args.command == "methods":
        print(_methods_table())
        return 0
    if args.command in ("train", "distill"):
        from .engine import Trainer

        if args.resume:
            # `btkd distill --resume RUN optim.lr=0.01`: the overrides land in the config slot.
            overrides = ([args.config] if args.config else []) + list(args.overrides)
            if any("=" not in o for o in overrides):
                raise ConfigError("--resume continues a run with the config saved in its folder; drop the config "
                                  "name (key=value overrides of the learning rate and runtime are allowed)")
            from .bench.spec import is_bench_folder

            if is_bench_folder(Path(args.resume)):
                raise ConfigError(f"{args.resume} is a bench folder: continue it with `btkd bench --resume "
                                  f"{args.resume}`")
            from .engine.run_folder import RunFolder, bench_of_member

            bench = bench_of_member(args.resume)
            if bench is not None:
                raise ConfigError(f"{args.resume} is a member of the bench {bench}, whose checkpoint holds every "
                                  f"member: continue it with `btkd bench --resume {bench}`")
            method = (RunFolder(Path(args.resume)).read_config().get("distill") or {}).get("method", "ce")
            _check_command_fits(args.command, method, resume=args.resume)
            trainer = Trainer.from_run_dir(args.resume, overrides)
        else:
            if not args.config:
                raise ConfigError(f"btkd {args.command} needs a config (a YAML file or a name from `btkd configs`)")
            _refuse_bench_config(args.config, args.command)
            cfg = load_config(args.config, _with_run_name(args.config, list(args.overrides)))
            _check_command_fits(args.command, cfg.distill.method)
            trainer = Trainer(cfg)
        summary = trainer.fit()
        if summary.get("paused"):
            if trainer.ctx.is_main:
                print(f"{summary['name']}: paused after epoch {summary['epochs_done']} of {summary['epochs']} "
                      f"(runtime.time_limit); continue with: btkd {args.command} --resume {trainer.run_dir}")
        elif trainer.ctx.is_main:
            fp32 = summary.get("last_acc_fp32")
            fp32 = f" ({fp32:.2f}% with an fp32 test forward)" if fp32 not in (None, summary["last_acc"]) else ""
            print(f"{summary['name']}: last-epoch acc {summary['last_acc']:.2f}%{fp32}, best-epoch acc "
                  f"{summary['best_acc']:.2f}% (epoch {summary['best_epoch']}); run folder {trainer.run_dir}")
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "inspect-teacher":
        return _inspect_teacher(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "demo":
        from .demo import DemoDataMissing, run_demo

        try:
            run_demo(out=Path(args.out), runs=Path(args.runs), quick=args.quick, seed=args.seed, data=args.data)
        except DemoDataMissing as err:
            print(f"btkd demo: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "report":
        from .bench.spec import is_bench_folder
        from .report import write_report

        folders = [Path(r) for r in args.runs]
        for f in folders:
            if not f.is_dir():
                raise FileNotFoundError(f"no such folder: {f}")
        firsts = {}  # a folder named twice (runs/a runs/*) is one run, reported once
        for f in folders:
            firsts.setdefault(f.resolve(), f)
        folders = list(firsts.values())
        benches = [f for f in folders if is_bench_folder(f)]
        if benches:
            if len(benches) < len(folders):
                raise ConfigError("give bench folders or run folders, not both (a bench's runs are in its runs/)")
            from .bench import write_bench_report

            if len(folders) > 1 and not args.out:
                raise ConfigError("several bench folders are pooled into one report (units of one bench, each with "
                                  "its own seeds): give --out FOLDER for it")
            out = Path(args.out) if args.out else folders[0]
            # one bench folder keeps the command that ran it; a pooled report names this one, which
            # rebuilds it (each unit's folder keeps its own)
            import shlex

            command = "btkd " + shlex.join(args.argv) if len(folders) > 1 else None
            write_bench_report(folders, out, command=command, title=args.title)
            print((out / "results.md").read_text())
            print(f"report written to {out / 'results.md'}")
            return 0
        path = write_report(folders, Path(args.out or "reports/report"), title=args.title or "btkd report")
        print(path.read_text())
        print(f"report written to {path}")
        return 0
    raise AssertionError(args.command)


def _version() -> str:
    import platform

    import torch

    from . import __version__

    return f"btkd {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _with_run_name(source: str, overrides: List[str], kind: Optional[str] = None) -> List[str]:
    """``overrides`` plus ``name=...`` where the config's own name does not describe the run (see
    `btkd.config.derived_run_name`); says so on stdout."""
    from .config import _name_source, _read_yaml, derived_run_name, resolve_config_path

    name = derived_run_name(source, overrides, kind)
    if name is None:
        return overrides
    origin = _name_source(resolve_config_path(source))
    if origin is None:
        why = "the config sets no name"
    else:
        old = _read_yaml(origin).get("name")
        why = f"{old!r}, the config's name, describes another run"
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"run name: {name} ({why}; set name=... to choose one)")
    return overrides + [f"name={name}"]


def resolved_yaml(source: str, overrides: List[str] = ()) -> str:
    """A config (built-in name or file) fully resolved, with the run name the command line would give it,
    as YAML; a bench config also gets its resolved ``bench:`` section."""
    from .config import _read_yaml, config_from_dict, config_to_dict, derived_run_name, resolve_config_path, yaml_dump

    raw = _read_yaml(resolve_config_path(source))
    overrides = list(overrides)
    if "bench" in raw:
        from .bench import load_bench

        name = derived_run_name(source, overrides, "bench")
        spec = load_bench(source, overrides + ([f"name={name}"] if name else []))
        out = config_to_dict(config_from_dict(spec.base))
        out["bench"] = spec.to_dict()["bench"]
    else:
        from .config import load_config

        from .engine.build import check_names

        name = derived_run_name(source, overrides)
        cfg = load_config(source, overrides + ([f"name={name}"] if name else []))
        check_names(cfg)  # what train and distill would refuse later: print no config that cannot run
        out = config_to_dict(cfg)
    header = f"# {source}{' ' + ' '.join(overrides) if overrides else ''}, fully resolved (btkd configs)\n"
    # The run name as a comment, not a key: a file saved from this and edited (another student,
    # BTKD on) then names its runs after what they are, instead of keeping this config's name.
    run_name = out.pop("name")
    header += f"# name: {run_name}   (the run name btkd gives it; set name: to fix one of your own)\n"
    return header + yaml_dump(out, sort_keys=False)


def _models_table(num_classes: int) -> str:
    from .models import MODELS, build_model

    if num_classes < 1:
        raise ValueError(f"--num-classes={num_classes} must be >= 1")
    rows = []
    for name in sorted(MODELS, key=str.lower):
        model = build_model(name, num_classes)
        rows.append((name, sum(p.numel() for p in model.parameters())))
    width = max(len(n) for n, _ in rows)
    lines = [f"{'model':<{width}}  parameters ({num_classes} classes)"]
    lines += [f"{n:<{width}}  {count / 1e6:>7.2f} M  ({count:,})" for n, count in rows]
    lines += ["", "Counted for 3 input channels (the trainer sets in_channels from the data). convnet and mlp are "
              "small models for small images of any size", "(builder options, in model.student_options: convnet "
              "{width: 32}, mlp {hidden: 128})."]
    return "\n".join(lines)


def _methods_table() -> str:
    from .losses import HOSTS, NEEDS

    lines = []
    for name, cls in sorted(HOSTS.items()):
        try:
            host = cls()
            ce, kd = host.default_ce_weight, host.default_kd_weight
        except (TypeError, ValueError):  # a host that needs options to be built
            ce, kd = cls.default_ce_weight, cls.default_kd_weight
        btkd = "refused (it rectifies the teacher itself)" if cls.rectifies else "yes"
        needs = ", ".join(cls.needs) if cls.needs else "-"
        options = ", ".join(f"{k}={v!r}" for k, v in cls.defaults().items()) or "-"
        lines += [f"{name}: {cls.paper or cls.__doc__.splitlines()[0]}",
                  f"    distill.method={name}; CE weight {ce:g}, KD weight {kd:g}; BTKD: {btkd}",
                  f"    needs: {needs}; options (distill.options): {options}"]
    lines += ["", "needs:"] + [f"  {k}: {v}" for k, v in NEEDS.items()]
    lines += ["", "ce: cross-entropy only (a teacher, or a student alone); distill.btkd.enabled=true wraps a host "
              "in BTKD (docs/METHOD.md)"]
    return "\n".join(lines)


def _refuse_bench_config(source: str, command: str) -> None:
    from .config import ConfigError, _read_yaml, resolve_config_path

    if "bench" in _read_yaml(resolve_config_path(source)):
        raise ConfigError(f"{source} is a bench config (it has a bench: section); run it with `btkd bench {source}`, "
                          f"or give `btkd {command}` a run config")


def _bench(args) -> int:
    from .bench import load_bench, resume_bench, run_bench
    from .config import ConfigError

    import shlex

    command = "btkd " + shlex.join(args.argv)
    if args.resume:
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        if any("=" not in o for o in overrides):
            raise ConfigError("--resume continues a bench with the config saved in its folder; drop the config name")
        results = resume_bench(Path(args.resume), overrides, command=command)
    else:
        if not args.config:
            raise ConfigError("btkd bench needs a bench config (a YAML file with a bench: section, or a built-in "
                              "name such as cifar100/bench/res32x4_res8x4)")
        results = run_bench(load_bench(args.config, _with_run_name(args.config, list(args.overrides), "bench")),
                            command=command)
    if results:
        from .bench import results_table

        print(results_table(results))
        print(f"bench folder: {results['folder']} (results.json, results.md, plots)")
    return 0


def _is_weights_file(path: Path) -> bool:
    """A weights file by its suffix or, under another name (mdistiller's ``student_best``, a ``.bin``), by its
    bytes: torch's zip and pickle files and safetensors' length prefix hold NUL bytes, a YAML config none."""
    if path.suffix in (".safetensors", ".pth", ".pt", ".tar"):
        return True
    if path.suffix in (".yaml", ".yml") or not path.is_file():
        return False
    with open(path, "rb") as f:
        return b"\0" in f.read(1024)


def _inspect_teacher(args) -> int:
    from .config import ConfigError, _read_yaml, config_to_dict, load_config, resolve_config_path
    from .inspect_teacher import inspect_teacher

    from .weights import PREFIX, published_record

    source = Path(args.source)
    published = args.source.startswith(PREFIX)  # weights:NAME, a teacher from a weights manifest
    if published or _is_weights_file(source):
        run_config = source.parent / "config.yaml"
        if published:  # its training run's model and data, not the data folder of the machine it ran on
            base = published_record(args.source)
            (base.get("data") or {}).pop("root", None)
        else:
            base = _read_yaml(run_config) if run_config.is_file() else {}
        base.pop("bench", None)
        model = args.model or (base.get("model") or {}).get("student")
        if not model:
            raise ConfigError("a weights file outside a run folder needs --model NAME (e.g. --model resnet32x4)")
        student_options = (base.get("model") or {}).get("student_options", {}) if not args.model else {}
        data = dict(base.get("data") or {})
        if args.data and args.data != data.get("name"):  # another dataset: the run's options are not its
            data = {k: v for k, v in data.items() if k not in ("options", "root")} | {"name": args.data}
        cfg = load_config({**{k: v for k, v in base.items() if k in ("seed", "runtime")}, "data": data,
                           "model": {"teacher": model, "teacher_checkpoint": args.source if published else str(source),
                                     "teacher_options": student_options}, "distill": {"method": "kd"}},
                          args.overrides)
    else:
        if args.model or args.data:
            raise ConfigError("--model and --data go with a weights file; a config names its teacher and data")
        if source.is_dir() and (source / "config.yaml").is_file():  # a run folder: which file to pass
            run = _read_yaml(source / "config.yaml")
            if (run.get("distill") or {}).get("method") == "ce" and (source / "last.safetensors").is_file():
                raise ConfigError(f"{source} is a teacher's run folder: inspect its weights, btkd inspect-teacher "
                                  f"{source / 'last.safetensors'}")
            raise ConfigError(f"{source} is a run folder: inspect the teacher of its config, btkd inspect-teacher "
                              f"{source / 'config.yaml'}")
        data = _read_yaml(resolve_config_path(args.source))
        data.pop("bench", None)
        cfg = load_config(data, args.overrides)
    cfg = load_config(config_to_dict(cfg))
    out = Path(args.out or f"reports/inspect_{cfg.model.teacher}")
    inspect_teacher(cfg, out, aug_epochs=args.aug_epochs, compare_bf16=args.compare_bf16)
    from .inspect_teacher import PLOTS_SKIPPED

    skipped = PLOTS_SKIPPED in (out / "report.md").read_text()
    print(f"report: {out / 'report.md'} " + (f"(teacher.json beside it; {PLOTS_SKIPPED[1:-1]})" if skipped
                                             else "(teacher.json and plots beside it)"))
    return 0


def _eval(args) -> int:
    from .config import ConfigError, load_config
    from ._checks import DamagedFileError
    from .engine.evaluate import evaluate_checkpoint
    from .weights import PREFIX, published_record

    source = args.config
    folder = Path(args.checkpoint)
    if not args.checkpoint.startswith(PREFIX) and folder.is_dir():
        weights = [f for f in ("last.safetensors", "best.safetensors") if (folder / f).is_file()]
        raise FileNotFoundError(f"btkd eval: {args.checkpoint} is a folder; pass a weights file in it"
                                + (f", e.g. btkd eval {folder / weights[0]}" if weights else
                                   " (a run's last.safetensors, best.safetensors or checkpoint.pt)"))
    if not args.checkpoint.startswith(PREFIX) and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"btkd eval: no file at {args.checkpoint} (a run's last.safetensors, best.safetensors "
                                "or checkpoint.pt, a published .pth, or weights:NAME)")
    if Path(args.checkpoint).suffix in (".yaml", ".yml", ".json", ".jsonl", ".csv", ".md", ".txt"):
        near = Path(args.checkpoint).parent / "last.safetensors"
        raise ValueError(f"btkd eval: {args.checkpoint} is not a weights file; pass one"
                         + (f", e.g. btkd eval {near}" if near.is_file() else
                            " (a run's last.safetensors, best.safetensors or checkpoint.pt, a published .pth, or "
                            "weights:NAME)"))
    run_config = Path(args.checkpoint).parent / "config.yaml"
    if source is None and args.checkpoint.startswith(PREFIX):
        # weights:NAME: the model (and its options) and data of the teacher's own training run
        source = published_record(args.checkpoint)
        source.pop("bench", None)
        (source.get("data") or {}).pop("root", None)  # the folder of the machine it ran on
    elif source is None and run_config.is_file():
        source = str(run_config)
    # The flags override the key=value overrides; without a flag, eval's defaults apply beneath them.
    given = {o.split("=", 1)[0].strip() for o in args.overrides}
    defaults = [f"{k}={v}" for k, v in (("data.eval_batch_size", 500), ("runtime.device", "auto")) if k not in given]
    extra = [f"data.eval_batch_size={args.batch_size}"] if args.batch_size is not None else []
    extra += [f"runtime.device={args.device}"] if args.device is not None else []
    extra += [f"model.student={args.model}"] if args.model else []
    extra += [f"data.name={args.data}"] if args.data else []
    extra += [f"data.root={args.root}"] if args.root else []
    cfg = load_config(source, defaults + list(args.overrides) + extra)  # --model drops another model's options
    if source is None and not args.model:
        raise ConfigError("btkd eval needs --model NAME (or a checkpoint inside a run folder, or --config)")
    data_given = args.data or args.config or any(o.startswith("data.name=") for o in args.overrides)
    try:
        result = evaluate_checkpoint(cfg, args.checkpoint)
    except (FileNotFoundError, ValueError) as err:  # missing data, or a head or input layer of other data
        if source is not None or data_given or isinstance(err, DamagedFileError):
            raise
        raise type(err)(f"{err} (btkd eval took --data {cfg.data.name}, its default, as no run folder or --config "
                        "names the data; give --data NAME)") from None
    if os.environ.get("RANK", "0") != "0":  # once under torchrun
        return 0
    print(f"{cfg.model.student} on {cfg.data.name} test: top-1 {result['acc']:.2f}%, top-5 {result['top5']:.2f}%, "
          f"loss {result['loss']:.4f} ({result['n']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
