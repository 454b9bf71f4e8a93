#!/usr/bin/env bash
# Prepare what the GPU calls of a CIFAR-100 window carry, and check that every call fits.
#
#   bash benchmarks/cifar100/stage.sh [RETURNED]      # RETURNED: the folder a paused unit sent back
#   UNIT="bench res32x4_res8x4 model.teacher_checkpoint=weights:resnet32x4 bench.seeds=[0]" bash benchmarks/cifar100/stage.sh
#
# A call carries the working tree (tracked files and untracked ones git does not ignore) plus its
# `carry` folders, 64 MiB in all. The shards go in four ignored folders (.data/a: train-0..2,
# .data/b: train-3..5, .data/c: train-6, train-7 and SHA256SUMS, .data/d: test), and a paused unit's
# checkpoint parts in .data/k1, .data/k2, ... (two parts each, with the run's small files and
# unit.json in k1).
# It prints each call's size and fails, naming the call, if one would not fit; then every call's
# carry and command, the last one running UNIT (default "teacher resnet32x4"; a paused unit's own).
set -euo pipefail
SHARDS=${SHARDS:-../shared/data/cifar100}
LIMIT=$((64 * 1024 * 1024))
rm -rf .data/a .data/b .data/c .data/d .data/k[0-9]*
mkdir -p .data/a .data/b .data/c .data/d
cp "$SHARDS"/train-{0,1,2}.npz .data/a/
cp "$SHARDS"/train-{3,4,5}.npz .data/b/
cp "$SHARDS"/{train-6.npz,train-7.npz,SHA256SUMS} .data/c/
cp "$SHARDS"/test.npz .data/d/
folders=(.data/a .data/b .data/c)
if [ -n "${1:-}" ]; then
  parts=("$1"/checkpoint.part.*)
  [ -e "${parts[0]}" ] || { echo "no checkpoint.part.* in $1"; exit 2; }
  k=0
  for ((i = 0; i < ${#parts[@]}; i += 2)); do
    k=$((k + 1))
    mkdir -p ".data/k$k"
    cp "${parts[@]:i:2}" ".data/k$k/"
    folders+=(".data/k$k")
  done
  # the run's record (a teacher's config, meta and log, or a bench's members.tar) rides with the first parts
  for f in config.yaml meta.json log.jsonl members.tar unit.json; do [ -f "$1/$f" ] && cp "$1/$f" .data/k1/; done
fi
folders+=(.data/d)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
ok=yes
for f in "${folders[@]}"; do
  size=$(( tree + $(du -sb "$f" | cut -f1) ))
  printf '%-9s %5.1f MiB with the working tree (limit 64)\n' "$f" "$(echo "$size / 1048576" | bc -l)"
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
first=yes
for f in "${folders[@]}"; do
  case $f in
    .data/a) cmd="mkdir -p \$HOME/stage/ckpt && cp .data/a/* \$HOME/stage/" ;;
    .data/k*) cmd="cp $f/* \$HOME/stage/ckpt/" ;;
    .data/d) cmd="cp .data/d/* \$HOME/stage/ && ${resume}BTKD_GIT_COMMIT=$(git rev-parse HEAD) BUDGET=540 OUT=\$OUT bash benchmarks/cifar100/unit.sh $unit" ;;
    *) cmd="cp $f/* \$HOME/stage/" ;;
  esac
  echo "  [\"$f\"]  $cmd"
done
echo "before the last call: BUDGET = status's budget_left_s - 90 (at most 570), and the call's timeout_s = BUDGET + 20"
