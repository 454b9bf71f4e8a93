"""BTKD: the total against a hand-computed case, properties, ablation switches and input errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy as np

from btkd import BTKD, Distill
from btkd.strategy import AUTHORS_WEIGHTS

LN2 = math.log(2)
KEYS = {"ce", "distill_right", "distill_rectified", "beta", "n_wrong", "n_rectified", "total"}


def logp(rows, tau=1.0):
    return tau * torch.tensor(rows, dtype=torch.float64).log().float()


# sample 0: teacher right; sample 1: teacher wrong (top class 1), swap gives [.5, .25, .25]
TEACHER = logp([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
STUDENT = logp([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])
LABELS = torch.tensor([0, 0])
F_RIGHT = 0.25 * LN2  # KL([.5,.25,.25] || [.25,.5,.25])
F_RECT = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)  # KL([.5,.25,.25] || uniform)
CE = (math.log(4) + math.log(3)) / 2


def test_btkd_total_hand_case():
    loss = BTKD(tau=1.0, **AUTHORS_WEIGHTS)  # the authors' defaults otherwise: swap, subset, cos2
    at0 = loss(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    assert set(at0) == KEYS
    assert float(at0["ce"]) == pytest.approx(CE, rel=1e-6)
    assert float(at0["distill_right"]) == pytest.approx(F_RIGHT, rel=1e-5)
    assert float(at0["distill_rectified"]) == pytest.approx(F_RECT, rel=1e-5)
    assert (float(at0["beta"]), float(at0["n_wrong"]), float(at0["n_rectified"])) == (1.0, 1.0, 1.0)
    assert float(at0["total"]) == pytest.approx(0.5 * CE + 0.5 * F_RIGHT, rel=1e-5)
    at1 = loss(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)  # beta = cos^2(pi/4) = 1/2
    assert float(at1["total"]) == pytest.approx(0.5 * CE + 0.5 * (0.5 * F_RIGHT + 0.5 * F_RECT), rel=1e-5)
    batch = BTKD(tau=1.0, reduction="batch", **AUTHORS_WEIGHTS)(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)
    assert float(batch["distill_right"]) == pytest.approx(F_RIGHT / 2, rel=1e-5)
    assert float(batch["distill_rectified"]) == pytest.approx(F_RECT / 2, rel=1e-5)


def test_a_teacher_tied_on_the_label_is_split_as_right():
    # sample 0's teacher ties the label (class 1) with class 0 for its top: right, whatever the order
    teacher = logp([[0.4, 0.4, 0.2], [0.25, 0.5, 0.25]])
    labels = torch.tensor([1, 0])
    out = BTKD(tau=1.0, **AUTHORS_WEIGHTS)(STUDENT, teacher, labels, epoch=0, epochs=2)
    assert (float(out["n_wrong"]), float(out["n_rectified"])) == (1.0, 1.0)
    kl_right = sum(p * math.log(p / q) for p, q in zip([0.4, 0.4, 0.2], [0.25, 0.5, 0.25]))
    assert float(out["distill_right"]) == pytest.approx(kl_right, rel=1e-5)
    assert float(out["distill_rectified"]) == pytest.approx(F_RECT, rel=1e-5)


def test_reweight_hand_case():
    out = BTKD(tau=1.0, rectify="reweight")(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    # a = .25, b = .5, s = .75, a' = .625, b' = .25 -> target [.75*.625/.875, .75*.25/.875, .25]
    target = [0.75 * 0.625 / 0.875, 0.75 * 0.25 / 0.875, 0.25]
    expected = sum(p * math.log(p / (1 / 3)) for p in target)
    assert float(out["distill_rectified"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["distill_right"]) == pytest.approx(F_RIGHT, rel=1e-5)


def test_ablation_switches():
    none = BTKD(tau=1.0, rectify="none", **AUTHORS_WEIGHTS)(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)
    # elimination only: the wrong sample is dropped and the right part keeps the whole weight
    assert float(none["distill_rectified"]) == 0.0 and float(none["n_rectified"]) == 0.0
    assert float(none["beta"]) == 1.0
    assert float(none["total"]) == pytest.approx(0.5 * CE + 0.5 * F_RIGHT, rel=1e-5)
    nosplit = BTKD(tau=1.0, split=False, **AUTHORS_WEIGHTS)(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)
    # rectify every sample (a no-op on the right one) and distil the batch as one part
    assert float(nosplit["distill_right"]) == 0.0
    assert float(nosplit["distill_rectified"]) == pytest.approx((F_RIGHT + F_RECT) / 2, rel=1e-5)
    assert float(nosplit["total"]) == pytest.approx(0.5 * CE + 0.5 * (F_RIGHT + F_RECT) / 2, rel=1e-5)
    const = BTKD(tau=1.0, schedule="constant", schedule_options={"value": 0.25}, **AUTHORS_WEIGHTS)
    for e in (0, 1):
        out = const(STUDENT, TEACHER, LABELS, epoch=e, epochs=2)
        assert float(out["total"]) == pytest.approx(0.5 * CE + 0.5 * (0.25 * F_RIGHT + 0.75 * F_RECT), rel=1e-5)


@pytest.mark.parametrize("switch", [{"rectify": "none"}, {"split": False}])
@pytest.mark.parametrize("schedule", [{"schedule": "linear"}, {"schedule": "constant", "schedule_options": {"value": 0.5}},
                                      {"schedule_options": {"per_iteration": True}}])
def test_a_schedule_that_one_part_would_ignore_is_refused(switch, schedule):
    # with one distilled part beta is held (at 1 or 0): a schedule given for it would silently do nothing
    with pytest.raises(ValueError, match="no effect; leave schedule and schedule_options at their defaults"):
        BTKD(**switch, **schedule)
    BTKD(**switch, schedule="cos2")  # the default, as a config passes it, is fine


def test_dkd_host_keeps_its_options_and_needs_logits():
    loss = BTKD(host="dkd", alpha=1.0, beta=2.0, warmup=5, ce_weight=1.0, kd_weight=1.0)
    assert (loss.host.alpha, loss.host.beta, loss.host.warmup) == (1.0, 2.0, 5)
    with pytest.raises(ValueError, match="rectify='reweight'.*'dkd'.*rectify='swap'"):
        BTKD(host="dkd", rectify="reweight")
    with pytest.raises(ValueError, match="split=False"):
        BTKD(split=False, rectify="none")


def make_batch(seed, n, c, scale, mode):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g) * scale
    t = torch.randn(n, c, generator=g) * scale
    y = torch.randint(0, c, (n,), generator=g)
    rows = torch.arange(n)
    if mode == "all_right":
        t[rows, y] = t.max(1).values + 1.0
    elif mode == "all_wrong":
        t[rows, y] = t.min(1).values - 1.0
    return s.requires_grad_(), t.requires_grad_(), y


batches = st.builds(make_batch, st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(2, 10),
                    st.floats(0.01, 30.0), st.sampled_from(["mixed", "all_right", "all_wrong"]))
configs = st.fixed_dictionaries({
    "host": st.sampled_from(["kd", "dkd"]),
    "rectify": st.sampled_from(["swap", "reweight", "none"]),
    "reduction": st.sampled_from(["subset", "batch"]),
    "schedule": st.sampled_from(["cos2", "cos2_iter", "linear", "constant", "step"]),
    "split": st.booleans(),
})


@settings(max_examples=150, deadline=None)
@given(batches, configs, st.floats(0, 0.999))
def test_finite_loss_and_gradients_and_no_teacher_gradient(b, cfg, frac):
    s, t, y = b
    if cfg["host"] == "dkd" and cfg["rectify"] == "reweight":
        cfg["rectify"] = "swap"
    if not cfg["split"] and cfg["rectify"] == "none":
        cfg["split"] = True
    if not cfg["split"] or cfg["rectify"] == "none":
        cfg["schedule"] = "cos2"  # one part: the schedule does not apply (refused otherwise)
    out = BTKD(**cfg)(s, t, y, epoch=frac * 10, epochs=10)
    assert all(math.isfinite(float(v.detach())) for v in out.values())
    out["total"].backward()
    assert bool(torch.isfinite(s.grad).all())
    assert t.grad is None, "no gradient may reach the teacher logits"


@settings(max_examples=100, deadline=None)
@given(batches)
def test_empty_parts_contribute_exactly_zero(b):
    s, t, y = b
    out = BTKD()(s, t, y, epoch=3, epochs=10)
    right = (t.argmax(1) == y)
    if bool(right.all()):
        assert out["distill_rectified"].item() == 0.0 and out["n_wrong"].item() == 0.0
    if not bool(right.any()):
        assert out["distill_right"].item() == 0.0 and out["n_wrong"].item() == len(y)


@settings(max_examples=100, deadline=None)
@given(batches, st.sampled_from(["kd", "dkd"]))
def test_all_right_teacher_beta_one_batch_reduction_equals_plain_distillation(b, host):
    s, t, y = b
    rows = torch.arange(len(y))
    t = t.detach().clone()
    t[rows, y] = t.max(1).values + 1.0  # a teacher that is right on every sample
    kw = dict(ce_weight=0.3, kd_weight=0.7)
    btkd = BTKD(host, reduction="batch", schedule="constant", schedule_options={"value": 1.0}, **kw)
    plain = Distill(host, **kw)
    a = btkd(s, t, y, epoch=2, epochs=10)
    p = plain(s, t, y, epoch=2, epochs=10)
    torch.testing.assert_close(a["total"], p["total"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["distill_right"], p["distill"], rtol=1e-5, atol=1e-6)


def test_custom_balancer():
    class Fixed:
        def weights(self, epoch, epochs):
            return {"ce": 1.0, "distill_right": 2.0, "distill_rectified": 3.0}

        def __call__(self, losses, epoch, epochs):
            raise AssertionError("BTKD sums with weights()")

    out = BTKD(tau=1.0, balancer=Fixed())(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    assert float(out["total"]) == pytest.approx(CE + 2 * F_RIGHT + 3 * F_RECT, rel=1e-5)
    assert float(out["beta"]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="balancer must have"):
        BTKD(balancer=object())


def test_a_custom_balancer_needs_only_weights_and_must_weigh_every_term():
    class Fixed:  # no __call__: the total is always the weighted sum
        def __init__(self, w):
            self.w = w

        def weights(self, epoch, epochs):
            return self.w

    out = BTKD(tau=1.0, balancer=Fixed({"ce": 1.0, "distill_right": 0.0, "distill_rectified": 1.0}))(
        STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    assert float(out["total"]) == pytest.approx(CE + F_RECT, rel=1e-5)
    with pytest.raises(ValueError, match=r"gave weights for \['ce', 'distill_right'\]; it must give exactly "
                                         r"\['ce', 'distill_right', 'distill_rectified'\]"):
        BTKD(balancer=Fixed({"ce": 1.0, "distill_right": 1.0}))(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    for given in ({"schedule": "linear"}, {"schedule_options": {"value": 0.5}}):
        with pytest.raises(ValueError, match="schedule and schedule_options set the default balancer"):
            BTKD(balancer=Fixed({}), **given)


@pytest.mark.parametrize("kwargs, match", [
    ({"rectify": "flip"}, r"rectify='flip'.*\['swap', 'reweight', 'none'\]"),
    ({"reduction": "mean"}, r"reduction='mean'.*\['subset', 'batch'\]"),
    ({"schedule": "cos"}, r"schedule='cos'.*'cos2'"),
    ({"host": "dkdd"}, r"host='dkdd'.*'dkd'"),
])
def test_unknown_options_list_the_valid_ones(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BTKD(**kwargs)


@pytest.mark.parametrize("student, teacher, labels, kw, match", [
    (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), torch.tensor([0]), {}, "student_logits contains NaN"),
    (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), torch.tensor([0]), {}, "teacher_logits contains NaN or inf"),
    # -inf alone is most often a masked class: the error says how to mask, not that the run diverged
    (torch.zeros(1, 2), torch.tensor([[-math.inf, 0.0]]), torch.tensor([1]), {},
     r"teacher_logits contains -inf entries.*to mask a class.*-1e4"),
    (torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]), {}, r"same shape.*\(2, 3\) and \(2, 4\)"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3]), {}, r"labels must lie in \[0, 3\).*\[0, 3\]"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, -1]), {}, r"labels must lie in \[0, 3\)"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.0, 1.0]), {}, "integer tensor of class indices"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0]), {}, r"labels must have shape \[2\]"),
    (torch.zeros(3), torch.zeros(3), torch.tensor([0]), {}, r"student_logits must have shape \[N, C\]"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), {"epoch": 10}, r"epoch must lie in \[0, epochs\) = \[0, 10\)"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), {"epoch": -1}, "epoch must lie in"),
    (torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), {"epochs": 0}, "epochs must be a positive integer"),
])
def test_bad_input_is_a_clear_value_error(student, teacher, labels, kw, match):
    args = {"epoch": 0, "epochs": 10, **kw}
    with pytest.raises(ValueError, match=match):
        BTKD()(student, teacher, labels, **args)


def test_int32_labels_are_accepted():
    out = BTKD(tau=1.0, **AUTHORS_WEIGHTS)(STUDENT, TEACHER, LABELS.int(), epoch=0, epochs=2)
    assert float(out["total"]) == pytest.approx(0.5 * CE + 0.5 * F_RIGHT, rel=1e-5)


def test_bf16_logits_give_float32_terms():
    out = BTKD()(STUDENT.bfloat16(), TEACHER.bfloat16(), LABELS, epoch=0, epochs=2)
    assert out["total"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Numbers given to the API are checked


@pytest.mark.parametrize("kwargs, match", [
    ({"ce_weight": -0.1}, r"ce_weight=-0.1 must be a finite number >= 0"),
    ({"kd_weight": float("nan")}, r"kd_weight=nan must be a finite number >= 0"),
    ({"kd_weight": float("inf")}, r"kd_weight=inf must be a finite number >= 0"),
    ({"ce_weight": "0.5"}, r"ce_weight must be a real number.*got '0.5'"),
    ({"tau": 0.0}, r"tau=0.0 must be a finite number > 0"),
    ({"tau": float("inf")}, r"tau=inf must be a finite number > 0"),
    ({"tau": float("nan")}, r"tau=nan must be a finite number > 0"),
    ({"host": "dkd", "tau": -1.0}, r"tau=-1.0 must be a finite number > 0"),
    ({"host": "dkd", "alpha": -1.0}, r"alpha=-1.0 must be a finite number >= 0"),
    ({"host": "dkd", "beta": float("nan")}, r"beta=nan must be a finite number >= 0"),
    ({"host": "dkd", "warmup": 2.5}, r"warmup=2.5 must be a whole number of epochs >= 0"),
    ({"host": "dkd", "warmup": -1}, r"warmup=-1 must be a whole number of epochs >= 0"),
])
def test_bad_numbers_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BTKD(**kwargs)
    host_only = {k: v for k, v in kwargs.items() if k not in ("ce_weight", "kd_weight")}
    weights_only = {k: v for k, v in kwargs.items() if k in ("ce_weight", "kd_weight")}
    with pytest.raises(ValueError, match=match):
        Distill(**host_only, **weights_only)


def test_weights_with_a_custom_balancer_are_refused():
    class Fixed:
        def weights(self, epoch, epochs):
            return {"ce": 1.0, "distill_right": 1.0, "distill_rectified": 1.0}

        def __call__(self, losses, epoch, epochs):
            raise AssertionError

    with pytest.raises(ValueError, match="ce_weight.*balancer"):
        BTKD(balancer=Fixed(), ce_weight=0.3)


def test_custom_schedule_outside_unit_interval_names_schedule_and_epoch():
    def too_big(epoch, epochs):
        return 1.0 + epoch

    loss = BTKD(tau=1.0, schedule=too_big)
    assert loss.beta(0, 4) == 1.0
    with pytest.raises(ValueError, match=r"schedule .*too_big.* gave beta=3.0 at epoch 2 of 4.*\[0, 1\]"):
        loss.weights(2, 4)
    with pytest.raises(ValueError, match="too_big"):
        loss(STUDENT, TEACHER, LABELS, epoch=2, epochs=4)
    nan = BTKD(tau=1.0, schedule=lambda e, n: float("nan"))
    with pytest.raises(ValueError, match=r"beta=nan at epoch 1 of 4"):
        nan.beta(1, 4)


def test_custom_balancer_with_a_negative_weight_is_refused():
    class Negative:
        def weights(self, epoch, epochs):
            return {"ce": 1.0, "distill_right": -1.0, "distill_rectified": 2.0}

        def __call__(self, losses, epoch, epochs):
            raise AssertionError

    with pytest.raises(ValueError, match=r"distill_right=-1.0 at epoch 0 of 2.*finite number >= 0"):
        BTKD(balancer=Negative())(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)


@pytest.mark.parametrize("epoch", [1, 1.0, np.float32(1.0), np.float64(1.0), np.int64(1), np.int32(1),
                                   torch.tensor(1.0), torch.tensor(1), torch.tensor(1.0, dtype=torch.float64)])
def test_epoch_may_be_any_real_number_type(epoch):
    loss = BTKD(tau=1.0, **AUTHORS_WEIGHTS)
    want = loss(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)
    got = loss(STUDENT, TEACHER, LABELS, epoch=epoch, epochs=2)
    assert float(got["total"]) == pytest.approx(float(want["total"]), rel=1e-6)
    assert float(got["beta"]) == pytest.approx(0.5)
    assert float(Distill("kd", tau=1.0)(STUDENT, TEACHER, LABELS, epoch=epoch, epochs=2)["total"]) > 0
    got = BTKD(tau=1.0)(STUDENT, TEACHER, LABELS, epoch=0, epochs=np.int64(2))
    assert float(got["beta"]) == 1.0


@pytest.mark.parametrize("epoch, match", [
    (True, "epoch must be a real number"),
    (np.bool_(True), "epoch must be a real number"),
    (torch.tensor(True), "epoch must be a real number"),
    (float("nan"), "epoch must lie in"),
    (torch.tensor([1.0]), r"epoch must be a real number.*shape \(1,\)"),
    (torch.tensor([1.0, 2.0]), r"epoch must be a real number.*shape \(2,\)"),
    ("1", "epoch must be a real number"),
])
def test_epoch_that_is_not_one_real_number_is_refused(epoch, match):
    with pytest.raises(ValueError, match=match):
        BTKD()(STUDENT, TEACHER, LABELS, epoch=epoch, epochs=2)
    with pytest.raises(ValueError, match=match):
        Distill()(STUDENT, TEACHER, LABELS, epoch=epoch, epochs=2)


@pytest.mark.parametrize("host", ["kd", "dkd"])
def test_btkd_defaults_to_the_host_frameworks_weights_like_distill(host):
    # One recipe per host: Distill(host) and BTKD(host) used to weigh CE and KD differently.
    btkd, plain = BTKD(host), Distill(host)
    w = btkd.weights(0, 10)
    assert (w["ce"], w["distill_right"] + w["distill_rectified"]) == (plain.ce_weight, plain.kd_weight)
    assert (btkd.balancer.ce_weight, btkd.balancer.kd_weight) == (btkd.host.default_ce_weight,
                                                                  btkd.host.default_kd_weight)
    authors = BTKD(host, **AUTHORS_WEIGHTS)
    assert (authors.balancer.ce_weight, authors.balancer.kd_weight) == (0.5, 0.5)
    assert BTKD(host, ce_weight=0.2).balancer.kd_weight == btkd.host.default_kd_weight


@pytest.mark.parametrize("kw", [
    {"host": "kd", "rectify": "swap"},
    {"host": "kd", "rectify": "reweight"},
    {"host": "dkd", "rectify": "swap", "warmup": 0},
    {"host": "kd", "rectify": "swap", "split": False, "reduction": "batch"},
])
def test_btkd_gradcheck_in_float64(kw):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    t[:3].scatter_(1, y[:3, None], 9.0)  # the teacher is right on the first three rows only
    loss = BTKD(tau=2.0, **kw)
    assert int(loss(s, t, y, epoch=3, epochs=10)["n_wrong"]) == 3
    out = loss(s, t, y, epoch=3, epochs=10)
    assert out["total"].dtype == out["ce"].dtype == out["distill_rectified"].dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a: loss(a, t, y, epoch=3, epochs=10)["total"], (s,))


@pytest.mark.parametrize("rectify", ["swap", "reweight"])
def test_no_split_reports_the_teachers_real_error_count(rectify):
    # With split=False every row goes through the rectifier, but only the wrong ones change: n_wrong
    # used to report the batch size.
    out = BTKD(tau=1.0, split=False, rectify=rectify)(STUDENT, TEACHER, LABELS, epoch=0, epochs=2)
    assert (float(out["n_wrong"]), float(out["n_rectified"])) == (1.0, 1.0)
    right = BTKD(tau=1.0, split=False)(TEACHER, TEACHER, TEACHER.argmax(1), epoch=0, epochs=2)
    assert (float(right["n_wrong"]), float(right["n_rectified"])) == (0.0, 0.0)


def test_btkd_takes_both_parts_from_host_parts_and_passes_set_epoch_on():
    from btkd import HostLoss

    calls, epochs = [], []

    class Batchy(HostLoss):
        def per_sample(self, s, t, y, target_probs=None):
            raise AssertionError("BTKD must go through parts")

        def parts(self, s, t, y, masks, reduction="subset", target_probs=None):
            calls.append((masks.clone(), t.clone(), reduction))
            return masks.sum(dim=1) + 1.0

        def scale(self, epoch):
            return 2.0

        def set_epoch(self, epoch, epochs_):
            epochs.append((epoch, epochs_))

    loss = BTKD(Batchy(), reduction="batch", ce_weight=0.0, kd_weight=1.0)
    out = loss(STUDENT, TEACHER, LABELS, epoch=1, epochs=2)
    (masks, target, reduction), = calls
    assert masks.tolist() == [[1.0, 0.0], [0.0, 1.0]] and reduction == "batch"  # right, wrong
    torch.testing.assert_close(target, torch.stack([TEACHER[0], TEACHER[1][[1, 0, 2]]]))  # swap-rectified
    assert (float(out["distill_right"]), float(out["distill_rectified"])) == (4.0, 4.0)  # scale * (1 + 1)
    assert epochs == [(1, 2)]


@pytest.mark.parametrize("make", [lambda: BTKD("ctkd"), lambda: Distill("ctkd")])
def test_ctkd_takes_several_calls_before_one_backward(make):
    # micro-batches summed before a backward, or an extra call for logging: set_epoch's in-place update
    # of the gradient reversal's strength must not invalidate the first call's graph
    torch.manual_seed(0)
    loss_fn = make()
    s, t, y = torch.randn(16, 5, requires_grad=True), torch.randn(16, 5), torch.randint(0, 5, (16,))
    a = loss_fn(s[:8], t[:8], y[:8], epoch=0, epochs=10)["total"]
    b = loss_fn(s[8:], t[8:], y[8:], epoch=1, epochs=10)["total"]
    (a + b).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert all(p.grad is not None for p in loss_fn.parameters())


def test_a_loss_in_your_own_loop_warns_where_the_trainer_would():
    s, t, y = torch.randn(128, 10), torch.randn(128, 10), torch.randint(0, 10, (128,))
    with pytest.warns(UserWarning, match=r"20-epoch warm-up outlasts the 3 epochs"):
        BTKD("dkd")(s, t, y, epoch=0, epochs=3)
    # (128 / 10)^2 / (64 / 100)^2 = 400
    with pytest.warns(UserWarning, match=r"MLKD's class-level term .* 400 times .* class_weight=0.0025"):
        Distill("mlkd")([s, s], [t, t], y, epoch=0, epochs=3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BTKD("dkd")(s, t, y, epoch=0, epochs=240)  # a warm-up inside the run: nothing to say
        BTKD("dkd", validate=False)(s, t, y, epoch=0, epochs=3)  # the trainer's path: it warns itself


def test_btkd_models_is_there_after_a_plain_import():
    import subprocess
    import sys

    code = "import btkd; print(btkd.models.build_model('resnet8', 10).fc.out_features)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "10"


def test_probabilities_passed_as_logits_are_warned_about():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    with pytest.warns(UserWarning, match="teacher_logits look like probabilities.*before softmax"):
        BTKD()(torch.zeros(2, 3), probs, torch.tensor([0, 1]), epoch=0, epochs=10)


@pytest.mark.parametrize("loss", [BTKD("kd", validate=False), BTKD("dkd", validate=False),
                                  BTKD("kd", rectify="reweight", validate=False), Distill("kd", validate=False)],
                         ids=["btkd_kd", "btkd_dkd", "btkd_reweight", "distill_kd"])
def test_a_call_with_validate_off_makes_no_host_sync(loss):
    # The README: turn validate off in a hot loop "to skip its host synchronisation". beta, a Python
    # float in forward, was made a tensor by torch.as_tensor(beta, device=...): on a GPU a blocking
    # copy from the host, so every step of such a loop still waited for the GPU.
    from host_syncs import HostSyncs

    s = torch.randn(8, 5, requires_grad=True)
    t, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    with HostSyncs() as syncs:
        terms = loss(s, t, y, epoch=1, epochs=3)
        terms["total"].backward()
    assert syncs.events == []
    if isinstance(loss, BTKD):  # the same value as before, a float32 0-d tensor
        assert terms["beta"].dtype == torch.float32 and terms["beta"].dim() == 0
        assert terms["beta"].item() == torch.tensor(loss.beta(1, 3), dtype=torch.float32).item()
