"""A run folder: what one student's run leaves on disk, and the lock that keeps it to one writer.

    config.yaml      the fully resolved config
    meta.json        versions, device, world size, seed, data subsets, resumes
    log.jsonl        one JSON line per finished epoch (log.csv: the same as a table)
    tensorboard/     event files of every logged number (runtime.tensorboard=true)
    best.safetensors / last.safetensors   weights of the best-test and of the last epoch
    summary.json     written when the run finishes
    checkpoint.pt    the grid's resumable state (in the grid's root folder: the run folder itself
                     for a single run, the bench folder for a bench)
    .lock            held (flock) by the process that writes into the folder

Every file is replaced atomically (temp file + rename), so a kill at any moment leaves the old
version or the new one; the temp files a kill leaves behind are removed when the folder is opened.
A new folder appears with its config.yaml already inside (`create_locked`): one that exists can be
resumed.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from .._checks import DamagedFileError
from .checkpoint import _DIR_MODE, write_atomic

__all__ = ["RunFolder", "RunLock", "FolderBusyError", "read_log", "write_json", "write_text_atomic",
           "remove_stale_temp_files", "create_locked"]

CONFIG, META, LOG, CSV, SUMMARY = "config.yaml", "meta.json", "log.jsonl", "log.csv", "summary.json"
CHECKPOINT, BEST, LAST, LOCK = "checkpoint.pt", "best.safetensors", "last.safetensors", ".lock"
TENSORBOARD = "tensorboard"  # a folder of event files (runtime.tensorboard=true)
OWN_FILES = (CONFIG, META, LOG, CSV, SUMMARY, CHECKPOINT, BEST, LAST)


class FolderBusyError(FileExistsError):
    """Another live process holds the folder's lock."""


def write_text_atomic(path: os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def config_text(cfg_dict: Dict[str, Any]) -> str:
    """config.yaml's text for a resolved config."""
    from ..config import yaml_dump  # quotes a string such as '1e3', which a config reads as a number

    return yaml_dump(cfg_dict, sort_keys=False)


def write_json(path: os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temp_files(folder: os.PathLike, names: Iterable[str], older_than: float = 0.0) -> None:
    """The temp files that a kill left of atomic writes of ``names`` in ``folder``
    (``.<name>.<random>.tmp``, possibly tens of MB); nothing else is touched. ``older_than``
    (seconds) spares recent ones, for a caller that does not hold the folder's lock: a live writer's
    temp file lives for milliseconds."""
    folder, prefixes = Path(folder), tuple(f".{name}." for name in names)
    if folder.is_dir() and prefixes:
        now = time.time()
        for p in folder.glob(".*.tmp"):
            try:
                if p.name.startswith(prefixes) and now - p.stat().st_mtime >= older_than:
                    p.unlink(missing_ok=True)
            except FileNotFoundError:  # renamed into place by its writer meanwhile
                pass


def bench_of_member(run_dir: os.PathLike) -> Optional[Path]:
    """The bench folder whose member ``run_dir`` is (``<bench>/runs/<member>``, the bench's bench.yaml
    beside runs/, and trained in that bench's grid by its meta.json), or None. A bench config of the
    user's named bench.yaml beside the runs/ folder of single runs does not make them members."""
    run_dir = Path(run_dir)
    bench = run_dir.parent.parent
    if run_dir.parent.name != "runs" or not (bench / "bench.yaml").is_file():
        return None
    grid_root = (RunFolder(run_dir).read_meta().get("grid") or {}).get("root")
    return bench if grid_root is None or Path(grid_root).name == bench.resolve().name else None


def read_log(path: os.PathLike) -> List[Dict[str, Any]]:
    """The records of a ``log.jsonl``. A torn last line (a kill during the append) is dropped: that
    epoch had not been checkpointed, so it runs again. Damage anywhere else is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the last line, without its newline: torn by a kill
                break
            raise DamagedFileError(f"{path}: line {i + 1} is not valid JSON; the log is damaged. Restore it from a "
                                   "backup, or delete the damaged line and every line after it") from None
    return records


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock`` for the life of a run. The kernel drops it when the
    process dies, so a crash never leaves a stale lock; a second writer is refused with the holder's PID."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(
                f"{self.path.parent} is in use by another btkd process (PID {holder}); wait for it to finish, "
                "stop it, or write this run into another folder (name=... or output_dir=...)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def create_locked(path: os.PathLike, files: Dict[str, str]) -> Optional[RunLock]:
    """Create the folder ``path`` with ``files`` ({name: text}) inside and its lock held, at once: they
    are made in a temp folder beside it, renamed into place. A kill at any moment leaves no folder, or
    one that holds them (a run folder that exists holds the config ``--resume`` reads). Returns the
    held lock; None when ``path`` exists (also when another process made it meanwhile)."""
    path = Path(path)
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # of a start killed while it made them
        probe = RunLock(old)
        if old.is_dir() and probe.path.is_file():
            try:
                probe.acquire()
            except OSError:  # busy: a live process is making it
                continue
            shutil.rmtree(old, ignore_errors=True)
            probe.release()
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    lock = RunLock(stage)
    try:
        lock.acquire()
        os.chmod(stage, _DIR_MODE)
        for name, text in files.items():
            write_text_atomic(stage / name, text)
        os.rename(stage, path)
    except BaseException as err:
        lock.release()
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(err, OSError) and path.exists():  # made meanwhile by another process: its lock decides
            return None
        raise
    lock.path = path / LOCK
    return lock


class RunFolder:
    """The files of one student's run (see the module docstring)."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def remove_stale_temp_files(self) -> None:
        """Temp files of writes of the run's own files that a kill interrupted."""
        remove_stale_temp_files(self.path, OWN_FILES)

    def clear(self, keep: Iterable[str] = ()) -> None:
        """Remove btkd's own files (never anything else, nor ``keep``), so a fresh run starts from a clean state."""
        for name in OWN_FILES:
            if name not in keep:
                self.file(name).unlink(missing_ok=True)
        events = self.file(TENSORBOARD)
        if events.is_dir():
            for f in events.glob("events.out.tfevents.*"):
                f.unlink()
            try:
                events.rmdir()
            except OSError:
                pass
        self.remove_stale_temp_files()

    def remove_if_unstarted(self) -> None:
        """After a failure before the first checkpoint: leave no half-made folder behind."""
        if not self.path.is_dir() or self.has_checkpoint():
            return
        self.clear()
        self.file(LOCK).unlink(missing_ok=True)
        try:
            self.path.rmdir()  # only if nothing of the user's is inside
        except OSError:
            pass

    # ------------------------------------------------------------------ contents

    def write_config(self, cfg_dict: Dict[str, Any]) -> None:
        write_text_atomic(self.file(CONFIG), config_text(cfg_dict))

    def holds_foreign_config(self, cfg_dict: Dict[str, Any]) -> bool:
        """Whether config.yaml is a file btkd did not write here (no meta.json beside it, and not what this
        run would write): the user's own config file, kept in the folder the run is about to clear."""
        path = self.file(CONFIG)
        return path.is_file() and not self.file(META).is_file() and path.read_text() != config_text(cfg_dict)

    def read_config(self) -> Dict[str, Any]:
        path = self.file(CONFIG)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no such folder: {self.path} (--resume takes a run folder, output_dir/name)")
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} holds no config.yaml: is it a btkd run folder?")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise DamagedFileError(f"{path} is not valid YAML ({err}); restore it from the run's start") from None
        if not isinstance(data, dict):
            raise DamagedFileError(f"{path} does not hold a config mapping; restore it from the run's start")
        return data

    def read_meta(self) -> Dict[str, Any]:
        path = self.file(META)
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DamagedFileError(f"{path} is not valid JSON; delete it (it is rewritten on resume)") from None

    def write_meta(self, meta: Dict[str, Any]) -> None:
        write_json(self.file(META), meta)

    def read_log(self) -> List[Dict[str, Any]]:
        return read_log(self.file(LOG))

    def keep_log_before(self, epochs_done: int) -> None:
        """Keep the records of the first ``epochs_done`` epochs (a resume reruns the rest)."""
        records = [r for r in self.read_log() if r["epoch"] <= epochs_done]
        write_text_atomic(self.file(LOG), "".join(json_line(r) for r in records))
        self.write_csv(records)

    def append_log(self, record: Dict[str, Any]) -> None:
        with open(self.file(LOG), "a") as f:
            f.write(json_line(record))
            f.flush()
        self.write_csv(self.read_log())

    def write_csv(self, records: List[Dict[str, Any]]) -> None:
        """``log.csv``, the log for spreadsheets and pandas: one row per epoch, a column per key (the
        JSON log stays the reference; it is rewritten from it, so the two never disagree)."""
        import csv
        import io

        keys = sorted({k for r in records for k in r}, key=lambda k: (k != "epoch", k))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        write_text_atomic(self.file(CSV), out.getvalue())

    def write_summary(self, summary: Dict[str, Any]) -> None:
        write_json(self.file(SUMMARY), summary)


def json_line(record: Dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"
