"""The teacher precision of a CIFAR-100 bench unit (unit.sh runs it): BTKD's split decides on the
teacher's argmax, so the teacher runs in IEEE fp32 unless its precision check (`btkd inspect-teacher
--compare-bf16`) found that a bf16 forward changes no split decision.

    python teacher_precision.py BENCH_CONFIG [key=value ...]                   # same | fp32 | inspect NAME
    python teacher_precision.py BENCH_CONFIG --check inspect_teacher.json [key=value ...]

Prints `same` or `fp32`, with the reason on stderr; or `inspect NAME` when the teacher is a published
one (weights:NAME) with no check yet and none was given: unit.sh then runs the check and asks again.
"""

import json
import sys
from pathlib import Path

from btkd.bench.spec import load_bench
from btkd.weights import PREFIX, read_manifest, weights_dirs


def published_check(name: str):
    for folder in weights_dirs():
        entry = read_manifest(folder).get(name)
        if entry is not None:
            check = folder / entry.get("record", name + "/") / "inspect_teacher.json"
            return check if check.is_file() else None
    return None


def main(argv):
    config, args = argv[0], argv[1:]
    check = None
    if args[:1] == ["--check"]:
        check, args = Path(args[1]), args[2:]
    spec = load_bench(config, [a for a in args if not a.startswith("runtime.teacher_precision=")])
    ref = spec.config(spec.methods[0].label, spec.seeds[0]).model.teacher_checkpoint
    if check is None and ref.startswith(PREFIX):
        check = published_check(ref[len(PREFIX):])
        if check is None:
            print(f"inspect {ref[len(PREFIX):]}")
            return 0
    changed = None
    if check is not None and check.is_file():
        changed = sum(json.loads(check.read_text())["split_decisions_changed_by_precision"]["bf16"]["per_epoch"])
    choice = "same" if changed == 0 else "fp32"
    why = f"no precision check for {ref}" if changed is None else f"bf16 changed {changed} split decisions ({check})"
    print(f"teacher precision: {choice} ({why})", file=sys.stderr)
    print(choice)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
