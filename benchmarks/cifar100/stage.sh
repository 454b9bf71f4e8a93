#!/usr/bin/env bash
# Prepare what the GPU calls of a CIFAR-100 window carry, check that every call fits, and print them.
#
#   bash benchmarks/cifar100/stage.sh [RETURNED]      # RETURNED: the folder a paused unit sent back
#   UNIT="bench res32x4_res8x4 model.teacher_checkpoint=weights:resnet32x4 bench.seeds=[0]" bash benchmarks/cifar100/stage.sh
#
# A call carries the working tree (tracked files and untracked ones git does not ignore) plus its
# `carry` folders, 64 MiB in all. The shards go in four ignored folders (.data/a: train-0..2,
# .data/b: train-3..5, .data/c: train-6, train-7 and SHA256SUMS, .data/d: test). A paused unit's
# files (checkpoint parts of 15 MiB, record.tar, unit.json) go into the room those leave, in a
# ckpt/ subfolder (c first, then d), and what is left into .data/k1, .data/k2, ...: so a resnet32x4
# teacher's 4 parts need one extra call, not two. Every call copies its folder into $HOME/stage
# (the parts land in $HOME/stage/ckpt/); the last one, with .data/d, runs the unit: UNIT (default
# "teacher resnet32x4") or the paused unit's own kind and name.
# It prints each call's size and fails, naming the call, if one would not fit.
set -euo pipefail
SHARDS=${SHARDS:-../shared/data/cifar100}
LIMIT=$((64 * 1024 * 1024))
ROOM=$((LIMIT - 1024 * 1024))  # a MiB of margin: the tree may grow by a commit before the window
rm -rf .data/a .data/b .data/c .data/d .data/k[0-9]*
mkdir -p .data/a .data/b .data/c .data/d
cp "$SHARDS"/train-{0,1,2}.npz .data/a/
cp "$SHARDS"/train-{3,4,5}.npz .data/b/
cp "$SHARDS"/{train-6.npz,train-7.npz,SHA256SUMS} .data/c/
cp "$SHARDS"/test.npz .data/d/
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
size_of() { du -sb "$1" | cut -f1; }
extra=()
if [ -n "${1:-}" ]; then
  ls "$1"/checkpoint.part.* >/dev/null 2>&1 || { echo "no checkpoint.part.* in $1: is it a paused unit's folder?"; exit 2; }
  [ -f "$1/record.tar" ] && [ -f "$1/unit.json" ] || { echo "$1 lacks record.tar or unit.json"; exit 2; }
  # the small files first, then the parts, each into the first carry with room
  for f in "$1/unit.json" "$1/record.tar" "$1"/checkpoint.part.*; do
    placed=no
    for c in .data/c .data/d "${extra[@]}"; do
      if [ $(( tree + $(size_of "$c") + $(stat -c %s "$f") )) -lt "$ROOM" ]; then
        mkdir -p "$c/ckpt" && cp "$f" "$c/ckpt/" && placed=yes && break
      fi
    done
    if [ "$placed" = no ]; then
      k=.data/k$(( ${#extra[@]} + 1 ))
      mkdir -p "$k/ckpt" && cp "$f" "$k/ckpt/" && extra+=("$k")
    fi
  done
fi
folders=(.data/a .data/b .data/c "${extra[@]}" .data/d)
ok=yes
for f in "${folders[@]}"; do
  size=$(( tree + $(size_of "$f") ))
  printf '%-9s %5.1f MiB with the working tree (limit 64)%s\n' "$f" "$(echo "$size / 1048576" | bc -l)" \
    "$( [ -d "$f/ckpt" ] && echo ", with $(ls "$f/ckpt" | wc -l) file(s) of the paused unit" )"
  [ "$size" -lt "$LIMIT" ] || { echo "  $f does not fit: split it, or leave results out of the tree"; ok=no; }
done
[ "$ok" = yes ] || exit 1
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
for f in "${folders[@]}"; do
  cmd="mkdir -p \$HOME/stage && cp -r $f/. \$HOME/stage/"
  [ "$f" = .data/d ] && cmd="$cmd && ${resume}BTKD_GIT_COMMIT=$(git rev-parse HEAD) BUDGET=540 OUT=\$OUT bash benchmarks/cifar100/unit.sh $unit"
  echo "  [\"$f\"]  $cmd"
done
echo "before the last call: BUDGET = status's budget_left_s - 90 (at most 570), and the call's timeout_s = BUDGET + 20"
