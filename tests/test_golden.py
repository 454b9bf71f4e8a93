"""Every loss on a fixed input must keep the values stored when it was written (tests/golden.py)."""

import json

import pytest

from golden import CASES, FIXTURE, compute

STORED = json.loads(FIXTURE.read_text())


def test_fixture_covers_every_case():
    assert set(STORED["values"]) == set(CASES)
    # the fixed input has both right and wrong teacher predictions, so both parts are exercised
    n_wrong = STORED["values"]["btkd_kd_swap"]["n_wrong"]
    assert 0 < n_wrong < len(STORED["input"]["labels"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_values(name):
    got = compute(STORED["input"])[name]
    want = STORED["values"][name]
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), f"{name}.{key}"
