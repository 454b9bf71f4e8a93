"""The dynamic weight and the balancer."""

import math

import pytest
import torch

from btkd import Constant, Cos2, DynamicBalancer, Linear, Step, cos2_weight, make_schedule


def test_cos2_hand_values():
    assert cos2_weight(0, 240) == 1.0
    assert cos2_weight(120, 240) == pytest.approx(0.5)
    assert cos2_weight(60, 240) == pytest.approx(math.cos(math.pi / 8) ** 2)
    assert 0 < cos2_weight(239, 240) < 1e-4


def test_per_epoch_floors_and_per_iteration_does_not():
    assert Cos2()(10.7, 20) == cos2_weight(10, 20)
    assert Cos2(per_iteration=True)(10.7, 20) == cos2_weight(10.7, 20)
    assert make_schedule("cos2_iter")(10.7, 20) == cos2_weight(10.7, 20)
    assert Linear()(5.5, 10) == pytest.approx(0.5)
    assert Linear(per_iteration=True)(5.5, 10) == pytest.approx(0.45)


def test_constant_and_step():
    assert Constant()(3, 10) == 0.5
    assert make_schedule("constant", value=1.0)(9, 10) == 1.0
    with pytest.raises(ValueError, match="value must lie in"):
        Constant(1.5)
    assert [Step()(e, 10) for e in (0, 4, 5, 9)] == [1.0, 1.0, 0.0, 0.0]
    # an odd number of epochs switches at floor(E / 2): the later half is the longer one
    assert [Step()(e, 9) for e in (3, 4, 5)] == [1.0, 0.0, 0.0]
    assert [Step(at=2, before=0.8, after=0.3)(e, 10) for e in (1, 2)] == [0.8, 0.3]


@pytest.mark.parametrize("name", ["cos2", "cos2_iter", "linear", "linear_iter", "constant", "step"])
def test_every_schedule_stays_in_unit_interval_and_starts_high(name):
    s = make_schedule(name)
    values = [s(e / 3, 12) for e in range(36)]
    assert all(0.0 <= v <= 1.0 for v in values)
    if name != "constant":
        assert values[0] == 1.0 and values[-1] < 0.2


def test_schedule_errors_name_the_option():
    with pytest.raises(ValueError, match=r"schedule='cosine'.*'cos2'"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="bad options"):
        make_schedule("cos2", value=3)
    custom = lambda e, n: 0.25  # noqa: E731
    assert make_schedule(custom) is custom


def test_dynamic_balancer_weights_and_total():
    bal = DynamicBalancer("cos2", ce_weight=0.5, kd_weight=0.5)
    w = bal.weights(5, 10)
    assert w == pytest.approx({"ce": 0.5, "distill_right": 0.25, "distill_rectified": 0.25})
    losses = {"ce": torch.tensor(2.0), "distill_right": torch.tensor(4.0), "distill_rectified": torch.tensor(8.0)}
    assert float(bal(losses, 5, 10)) == pytest.approx(0.5 * 2 + 0.25 * 4 + 0.25 * 8)
    with pytest.raises(ValueError, match="distill_rectified"):
        bal({"ce": torch.tensor(1.0), "distill_right": torch.tensor(1.0)}, 0, 10)


def test_step_values_must_lie_in_unit_interval():
    with pytest.raises(ValueError, match=r"Step schedule before=1.5 must lie in \[0, 1\]"):
        Step(before=1.5)
    with pytest.raises(ValueError, match=r"after=-0.1"):
        Step(after=-0.1)
    with pytest.raises(ValueError, match=r"at=2.5 must be an epoch"):
        Step(at=2.5)
    assert [Step(at=0)(e, 10) for e in (0, 9)] == [0.0, 0.0]  # switched from the start: allowed
    with pytest.raises(ValueError, match=r"at=10 never switches in 10 epochs; give at below 10"):
        Step(at=10)(0, 10)


def test_a_step_past_the_last_epoch_is_a_config_error():
    from btkd.config import ConfigError, load_config

    base = ["model.teacher=convnet", "distill.method=kd", "distill.btkd.enabled=true", "distill.btkd.schedule=step",
            "optim.epochs=20", "optim.milestones=[10]"]
    with pytest.raises(ConfigError, match=r"schedule_options.at=500 never switches in optim.epochs=20"):
        load_config(None, base + ["distill.btkd.schedule_options={at: 500}"])
    assert load_config(None, base + ["distill.btkd.schedule_options={at: 19}"]).distill.btkd.schedule_options == {"at": 19}


@pytest.mark.parametrize("kwargs, match", [
    ({"ce_weight": -1.0}, r"ce_weight=-1.0 must be a finite number >= 0"),
    ({"kd_weight": float("nan")}, r"kd_weight=nan must be a finite number >= 0"),
])
def test_dynamic_balancer_checks_its_weights(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicBalancer("cos2", **kwargs)


def test_dynamic_balancer_refuses_a_schedule_outside_unit_interval():
    bal = DynamicBalancer(lambda e, n: -0.5)
    with pytest.raises(ValueError, match=r"gave beta=-0.5 at epoch 3 of 10"):
        bal.weights(3, 10)
