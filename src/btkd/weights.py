"""Published weights by name: ``weights/manifest.json`` maps a name to a half-precision safetensors
file with its sha256, its last-epoch test accuracy and how it was trained (epochs, batch, precision,
card, command). A checkpoint written ``weights:NAME`` (``model.teacher_checkpoint=weights:resnet32x4``,
``btkd eval weights:resnet32x4``) resolves through it, and its sha256 is checked before use.

The manifest is looked for in ``$BTKD_WEIGHTS``, then ``./weights``, then the ``weights/`` folder of
a source checkout of btkd. Teachers are the **last** epoch of their run: choosing the best test epoch
would leak the test set into every student.

Weights larger than ``MAX_FILE_BYTES`` (15 MiB: files that travel must stay under 16 MiB, and
vgg13's half-precision weights are 18 MiB) are stored in shards named as Hugging Face names them,
``NAME-00001-of-00002.safetensors``, ...; the first shard stands for the whole (`shard_files`), a
loader reads them all, and a checkpoint's sha256 (`checkpoint_sha256`) covers every shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["PREFIX", "MANIFEST", "MAX_FILE_BYTES", "weights_dirs", "read_manifest", "resolve_checkpoint",
           "published_record", "add_weights", "file_sha256", "checkpoint_sha256", "shard_files", "save_half",
           "read_weights"]

#: How a checkpoint reference names published weights: ``weights:resnet32x4``.
PREFIX = "weights:"
#: The file, in a weights folder, that maps each name to its file, sha256 and record.
MANIFEST = "manifest.json"
#: The largest file `save_half` writes (15 MiB); larger weights are stored in shards.
MAX_FILE_BYTES = 15 * 1024 * 1024
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")


def shard_files(path: os.PathLike) -> List[Path]:
    """Every file of the checkpoint ``path``: itself, or, for a shard ``NAME-0000i-of-0000n.safetensors``,
    all n shards in order (a missing one is a FileNotFoundError naming it)."""
    path = Path(path)
    match = _SHARD.match(path.name)
    if not match:
        return [path]
    count = int(match["count"])
    files = [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.safetensors") for i in range(1, count + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is one of {count} shards, and {', '.join(missing)} is missing beside it: "
                                "copy every shard")
    return files


def checkpoint_sha256(path: os.PathLike) -> str:
    """The sha256 of a checkpoint file, or of its shards' bytes in order."""
    h = hashlib.sha256()
    for f in shard_files(path):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_weights(path: os.PathLike) -> Dict[str, Any]:
    """The tensors of a safetensors file, or of all its shards."""
    from safetensors.torch import load_file

    state: Dict[str, Any] = {}
    for f in shard_files(path):
        part = load_file(f, device="cpu")
        twice = sorted(set(part) & set(state))
        if twice:
            raise ValueError(f"{f} repeats tensors of an earlier shard ({', '.join(twice[:3])}): the shards do not "
                             "belong together")
        state.update(part)
    return state


def save_half(state: Dict[str, Any], folder: os.PathLike, stem: str,
              max_bytes: Optional[int] = None) -> List[Path]:
    """Save ``state`` with its floating-point tensors in half precision as ``folder/stem.safetensors``,
    or, when that would pass ``max_bytes`` (default `MAX_FILE_BYTES`), as shards ``stem-0000i-of-0000n.safetensors`` of at most
    ``max_bytes`` each (tensors kept whole, in order); returns the files written, first shard first."""
    from safetensors.torch import save_file

    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    # a file: an 8-byte length, a JSON header (a tensor's entry: its name, dtype, shape and offsets,
    # under 128 bytes beside the name), the data
    base = 1024
    groups: List[Dict[str, Any]] = [{}]
    size = base
    for k, v in half.items():
        n = v.numel() * v.element_size() + 128 + len(k.encode()) + 24 * v.dim()
        if base + n > max_bytes:
            raise ValueError(f"tensor {k} alone takes {n} bytes, over the {max_bytes} a file may hold")
        if groups[-1] and size + n > max_bytes:
            groups.append({})
            size = base
        groups[-1][k] = v
        size += n
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(groups) == 1:
        names = [f"{stem}.safetensors"]
    else:
        names = [f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    for stale in list(folder.glob(f"{stem}.safetensors")) + list(folder.glob(f"{stem}-?????-of-?????.safetensors")):
        stale.unlink()  # a republished checkpoint must not leave shards of an older one beside it
    for name, group in zip(names, groups):
        save_file(group, folder / name)
        if (folder / name).stat().st_size > max_bytes:  # the estimate above must hold
            raise AssertionError(f"{folder / name} came out over {max_bytes} bytes")
    return [folder / name for name in names]


def weights_dirs() -> List[Path]:
    """The folders searched for a weights manifest, in order: ``$BTKD_WEIGHTS`` (when set),
    ``./weights`` (relative to the current directory), and a source checkout's ``weights/``."""
    dirs = [Path(os.environ["BTKD_WEIGHTS"])] if os.environ.get("BTKD_WEIGHTS") else []
    dirs.append(Path("weights"))
    # a source checkout's weights/ (src/btkd/weights.py -> ./weights); an installed package
    # (site-packages/btkd/) has no such folder two levels up, and naming one there would mislead
    src = Path(__file__).resolve().parents[1]
    if src.name == "src" and (src.parent / "pyproject.toml").is_file():
        dirs.append(src.parent / "weights")
    return dirs


def read_manifest(folder: Path) -> Dict[str, Any]:
    """The manifest of ``folder`` (``folder/manifest.json``): name -> entry (``file``, ``sha256``,
    ``model``, ``test_acc_last``, how it was trained); ``{}`` when the folder has none. A manifest
    that is not valid JSON is a DamagedFileError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        from ._checks import DamagedFileError

        raise DamagedFileError(f"{path} is not valid JSON; restore it from the repository") from None


def file_sha256(path: Path) -> str:
    """The sha256 of one file, as hex (`checkpoint_sha256` covers every shard of a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def published_record(ref: str) -> Dict[str, Any]:
    """The run config (``config.yaml`` in its record folder) of the published teacher
    ``weights:NAME``: what its model and data were. Without a record, ``{"model": {"student": NAME's
    model}}`` from the manifest; a name in no manifest is a FileNotFoundError, as for
    `resolve_checkpoint`."""
    name = str(ref)[len(PREFIX):]
    for folder in weights_dirs():
        entry = read_manifest(folder).get(name)
        if entry is not None:
            record = folder / entry.get("record", f"{name}/") / "config.yaml"
            if record.is_file():
                import yaml

                return yaml.safe_load(record.read_text()) or {}
            return {"model": {"student": entry.get("model")}}
    resolve_checkpoint(ref)  # raises, naming the known names
    return {}


def resolve_checkpoint(ref: str) -> Path:
    """A checkpoint path from ``ref``: ``weights:NAME`` through a manifest (sha256 checked), else ``ref``
    itself as a path.

    The manifests are searched in `weights_dirs`' order; the first that lists NAME decides. A name
    in no manifest, or a listed file that is missing, is a FileNotFoundError (naming the known
    names); a file whose sha256 differs from its entry's is a DamagedFileError."""
    if not str(ref).startswith(PREFIX):
        return Path(ref)
    name = str(ref)[len(PREFIX):]
    seen = []
    for folder in weights_dirs():
        entry = read_manifest(folder).get(name)
        if entry is None:
            seen += sorted(read_manifest(folder))
            continue
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{ref}: {folder / MANIFEST} lists {entry['file']}, which is missing from {folder}")
        if checkpoint_sha256(path) != entry["sha256"]:
            from ._checks import DamagedFileError

            raise DamagedFileError(f"{path}: its sha256 differs from {folder / MANIFEST}'s; the file is damaged or "
                                   "was replaced: restore it from the repository")
        return path
    known = f" Known names: {sorted(set(seen))}." if seen else (
        " No weights manifest was found: publish a finished run with btkd.weights.add_weights (or, in a source "
        "checkout, scripts/add_teacher.py), or set BTKD_WEIGHTS to a folder holding a manifest.json.")
    raise FileNotFoundError(f"{ref}: no such name in a weights manifest (looked in "
                            f"{', '.join(str(d) for d in weights_dirs())}).{known}")


def add_weights(folder: Path, name: str, run_dir: Path, card: str, command: str,
                weights_file: Optional[Path] = None, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Publish the last-epoch weights of the finished run in ``run_dir`` (``weights_file``, default
    ``run_dir/last.safetensors``) as ``folder/<name>.safetensors`` in half precision, with the run's
    config, per-epoch log, summary and meta.json beside it in ``folder/<name>/``, and an entry in
    ``folder``'s manifest (replacing one of the same name); returns the entry. ``card`` (the GPU or
    CPU it trained on) and ``command`` (the command that trained it) are recorded in the entry, as
    is ``extra``. A run that diverged or did not finish is a ValueError."""
    import torch

    run_dir, folder = Path(run_dir), Path(folder)
    if not (run_dir / "summary.json").is_file():  # written when a run ends: a killed or paused run has none
        raise ValueError(f"{run_dir} is not a finished run (it holds no summary.json, which a run writes when it "
                         "ends); publish only finished runs")
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    if summary.get("diverged") or summary.get("epochs_done", summary["epochs"]) != summary["epochs"]:
        raise ValueError(f"{run_dir} is not a finished run ({summary.get('epochs_done')} of {summary['epochs']} "
                         "epochs); publish only finished runs")
    state = read_weights(Path(weights_file) if weights_file else run_dir / "last.safetensors")
    files = save_half(state, folder, name)
    target = files[0]
    (folder / name).mkdir(exist_ok=True)
    for stale in ("inspect_teacher.json", "inspect_teacher.md"):  # a check of weights published before
        (folder / name / stale).unlink(missing_ok=True)
    # inspect_teacher.*: `btkd inspect-teacher --compare-bf16` on the finished teacher, when its unit ran it
    for f in ("config.yaml", "log.jsonl", "summary.json", "meta.json", "inspect_teacher.json", "inspect_teacher.md"):
        if (run_dir / f).is_file():
            shutil.copy(run_dir / f, folder / name / f)
    entry = {"file": target.name, **({"shards": [f.name for f in files]} if len(files) > 1 else {}),
             "sha256": checkpoint_sha256(target), "model": summary["student"],
             "test_acc_last": summary["last_acc"], "epochs": summary["epochs"],
             # the same weights with an fp32 test forward, when the run evaluated under bf16 autocast
             **({"test_acc_last_fp32": summary["last_acc_fp32"]}
                if summary.get("last_acc_fp32") not in (None, summary["last_acc"]) else {}),
             "batch": meta.get("effective_batch_size"), "precision": meta.get("precision"),
             "stored_as": str(torch.float16).replace("torch.", ""), "card": card, "command": command,
             "record": f"{name}/", **(extra or {})}
    manifest = read_manifest(folder)
    manifest[name] = entry
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry
