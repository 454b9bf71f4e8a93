#!/usr/bin/env bash
# Prepare what the GPU calls of a CIFAR-100 window carry, check it, and print the calls.
#
#   bash benchmarks/cifar100/stage.sh [RETURNED]      # RETURNED: the folder a paused unit sent back
#   UNIT="bench res32x4_res8x4 model.teacher_checkpoint=weights:resnet32x4 bench.seeds=[0]" bash benchmarks/cifar100/stage.sh
#
# A call carries the working tree (tracked files and untracked ones git does not ignore: committed
# teachers' weights too) plus its `carry`, 64 MiB in all. So the data (CIFAR-100's shards packed by
# pack.py: 99 MiB instead of 161, cached in .data/packed) and, for a paused unit, what it returned
# (checkpoint parts, record.tar, unit.json, under ckpt/) go into one tar bundle, cut into pieces as
# large as the tree leaves room for: one piece a call, .data/piece.00, .data/piece.01, ... Each call
# copies its piece into $HOME/bundle; the last one joins them, checks the bundle's sha256, unpacks it
# into $HOME/stage (pack.py unpack checks every array against the source's sha256) and runs the
# unit: UNIT (default "teacher resnet32x4"), or the paused unit's own kind and name with RESUME_FROM.
# TREE_EXTRA (bytes) adds to the tree's size, to rehearse a tree with teachers not yet committed.
# PYTHON (default .venv/bin/python) packs.
set -euo pipefail
SHARDS=${SHARDS:-../shared/data/cifar100}
PYTHON=${PYTHON:-.venv/bin/python}
MIB=$((1024 * 1024))
LIMIT=$((64 * MIB))
# the tree as it travels: every tracked or untracked-but-not-ignored file present on disk
tree=$( { git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null || true; } \
  | awk '{s += $1} END {print s + 0}')  # (a tracked file deleted from disk does not travel)
tree=$((tree + ${TREE_EXTRA:-0}))
room=$((LIMIT - MIB - tree))  # a MiB of margin: the tree may grow by a commit before the window
[ "$room" -ge $((4 * MIB)) ] || { echo "the working tree ($((tree / MIB)) MiB) leaves no room for data in a 64 MiB call"; exit 1; }
if [ -n "${1:-}" ]; then
  ls "$1"/checkpoint.part.* >/dev/null 2>&1 || { echo "no checkpoint.part.* in $1: is it a paused unit's folder?"; exit 2; }
  [ -f "$1/record.tar" ] && [ -f "$1/unit.json" ] || { echo "$1 lacks record.tar or unit.json"; exit 2; }
  # the parts must be the ones the unit paused with: all of them (the device may have dropped files)
  python3 - "$1" <<'PY'
import hashlib, json, sys
from pathlib import Path

folder = Path(sys.argv[1])
window = json.loads((folder / "unit.json").read_text())["windows"][-1]
parts = sorted(folder.glob("checkpoint.part.*"))
h = hashlib.sha256()
for p in parts:
    h.update(p.read_bytes())
if "parts" in window and window["parts"] != len(parts):
    sys.exit(f"{folder}: {len(parts)} checkpoint parts, but the unit wrote {window['parts']}: some did not come back")
if window.get("checkpoint_sha256") and h.hexdigest() != window["checkpoint_sha256"]:
    sys.exit(f"{folder}: the checkpoint parts do not join into the checkpoint the unit paused with (sha256 differs)")
PY
fi
rm -rf .data/a .data/b .data/c .data/d .data/k[0-9]* .data/piece.* .data/bundle.tar
mkdir -p .data
"$PYTHON" benchmarks/cifar100/pack.py pack "$SHARDS" .data/packed  # checks SHARDS' SHA256SUMS; cached
tar -cf .data/bundle.tar -C .data packed
if [ -n "${1:-}" ]; then
  tar -rf .data/bundle.tar -C "$1" --transform 's,^,ckpt/,' $(cd "$1" && ls unit.json record.tar checkpoint.part.*)
fi
sha=$(sha256sum .data/bundle.tar | cut -d' ' -f1)
split -b "$room" -d -a 2 .data/bundle.tar .data/piece.
rm .data/bundle.tar
pieces=(.data/piece.*)
printf 'working tree %.1f MiB; bundle %.1f MiB in %d pieces of at most %.1f MiB, one a call\n' \
  "$(echo "$tree / $MIB" | bc -l)" "$(du -cb "${pieces[@]}" | tail -1 | cut -f1 | awk -v m=$MIB '{print $1 / m}')" \
  "${#pieces[@]}" "$(echo "$room / $MIB" | bc -l)"
for p in "${pieces[@]}"; do
  [ $((tree + $(stat -c %s "$p"))) -lt "$LIMIT" ] || { echo "$p does not fit beside the tree"; exit 1; }
done
# The unit the last call runs: a paused one's kind and name (its unit.json; its overrides live in its
# checkpoint, and a resume takes none but the runtime's), else UNIT.
if [ -n "${1:-}" ]; then
  unit=$(python3 -c "import json,sys; print(*json.load(open(sys.argv[1]))['command'].split()[2:4])" "$1/unit.json")
  resume="RESUME_FROM=\$HOME/stage/ckpt "
else
  unit=${UNIT:-teacher resnet32x4} resume=""
fi
[ -z "$(git status --porcelain)" ] || echo "warning: the working tree has uncommitted changes; commit them first, so that BTKD_GIT_COMMIT names what runs"
echo "calls, in order, under 30 s apart (run's carry, then its command):"
last=${pieces[-1]}
for p in "${pieces[@]}"; do
  cmd="mkdir -p \$HOME/bundle && cp $p \$HOME/bundle/"
  if [ "$p" = "$last" ]; then
    cmd="$cmd && cat \$HOME/bundle/piece.* > \$HOME/bundle.tar && echo '$sha  '\$HOME/bundle.tar | sha256sum -c --quiet"
    cmd="$cmd && mkdir -p \$HOME/stage && tar -xf \$HOME/bundle.tar -C \$HOME/stage && rm -rf \$HOME/bundle \$HOME/bundle.tar"
    cmd="$cmd && \${PYTHON:-python3} benchmarks/cifar100/pack.py unpack \$HOME/stage/packed \$HOME/stage && rm -rf \$HOME/stage/packed"
    cmd="$cmd && ${resume}BTKD_GIT_COMMIT=$(git rev-parse HEAD) BUDGET=540 OUT=\$OUT bash benchmarks/cifar100/unit.sh $unit"
  fi
  echo "  [\"$p\"]  $cmd"
done
echo "before the last call: BUDGET = status's budget_left_s - 90 (at most 570), and the call's timeout_s = BUDGET + 20"
