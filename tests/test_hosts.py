"""The host losses added as rivals and hosts of BTKD (NKD, DIST, RLD, CTKD, label-swap KD, SLD, LS):
hand-computed values from independent plain-Python formulas, gradients, BTKD on every host, metadata,
and a short training run per host."""

import math
import statistics

import pytest
import torch

import btkd
from btkd import (BTKD, CTKD, DIST, DKD, DKDLS, HOSTS, KDLS, NKD, RLD, SLD, Distill, HostLoss, LabelSwapKD,
                  Standardized)
from btkd.losses import NEEDS, standardize
from btkd.losses.ctkd import curriculum_lambda

RECTIFYING = {"label_swap", "sld", "rld"}


# ---------------------------------------------------------------------------------------------
# plain-Python references


def softmax(xs, tau=1.0):
    m = max(x / tau for x in xs)
    e = [math.exp(x / tau - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def kd_ref(s, t, tau):
    return tau**2 * kl(softmax(t, tau), softmax(s, tau))


def swap(row, label):
    row = list(row)
    k = max(range(len(row)), key=lambda i: row[i])
    row[k], row[label] = row[label], row[k]
    return row


def zscore(row, unbiased=False):
    mean = sum(row) / len(row)
    sd = statistics.stdev(row) if unbiased else statistics.pstdev(row)
    return [(x - mean) / (sd + 1e-7) for x in row]


def pearson(a, b, eps=1e-8):
    """Pearson correlation with DIST's eps in the denominator (statistics.correlation without it)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    norm = math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(x * x for x in db))
    return sum(x * y for x, y in zip(da, db)) / (norm + eps)


def dist_ref(S, T, tau, beta, gamma, corr=pearson):
    """DIST on a batch given as lists of rows."""
    ys = [softmax(r, tau) for r in S]
    yt = [softmax(r, tau) for r in T]
    inter = sum(1 - corr(a, b) for a, b in zip(ys, yt)) / len(ys)
    cols = range(len(ys[0]))
    intra = sum(1 - corr([r[j] for r in ys], [r[j] for r in yt]) for j in cols) / len(cols)
    return tau**2 * (beta * inter + gamma * intra)


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# NKD


def test_nkd_hand_case():
    s, t, y = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0], 0
    tau, gamma = 2.0, 1.5
    S, T = softmax(s), softmax(t)
    target = -T[y] * math.log(S[y])
    Tn, Sn = softmax([t[1], t[2]], tau), softmax([s[1], s[2]], tau)  # the non-target classes only
    non_target = -sum(a * math.log(b) for a, b in zip(Tn, Sn))
    got = NKD(tau=tau, gamma=gamma)(t64([s]), t64([t]), torch.tensor([y]))
    assert float(got) == pytest.approx(target + gamma * tau**2 * non_target, rel=1e-12)
    # defaults: the authors' CIFAR-100 setting
    assert (NKD().tau, NKD().gamma) == (3.0, 3.5)


# ---------------------------------------------------------------------------------------------
# DIST

S3 = [[1.0, 2.0, 0.5], [0.2, -1.0, 1.5], [2.0, 0.3, -0.7]]
T3 = [[2.0, 0.0, 1.0], [0.5, -0.5, 2.5], [1.0, 1.2, -2.0]]


def test_dist_hand_case_and_distill_uses_the_whole_batch():
    want = dist_ref(S3, T3, tau=2.0, beta=1.0, gamma=3.0)
    # the eps aside, this is the textbook Pearson correlation
    assert dist_ref(S3, T3, 2.0, 1.0, 3.0, corr=statistics.correlation) == pytest.approx(want, rel=1e-5)
    host = DIST(tau=2.0, beta=1.0, gamma=3.0)
    y = torch.tensor([0, 2, 0])
    out = Distill(host, ce_weight=0.0, kd_weight=1.0)(t64(S3), t64(T3), y)
    assert float(out["distill"]) == pytest.approx(want, rel=1e-9)
    # per-sample values carry the batch's intra-class term, so their mean is the DIST loss
    assert float(host(t64(S3), t64(T3), y).mean()) == pytest.approx(want, rel=1e-9)
    assert (DIST().tau, DIST().beta, DIST().gamma) == (4.0, 2.0, 2.0)


# five samples; the teacher is right on 0, 1, 3 and wrong on 2, 4 (label 0, teacher's top 1 and 2)
S5 = S3 + [[0.1, 0.4, -0.3], [1.1, -0.2, 0.6]]
T5 = [[2.0, 0.0, 1.0], [0.5, -0.5, 2.5], [1.0, 1.2, -2.0], [0.3, 2.2, -0.1], [-0.5, 0.1, 0.9]]
Y5 = [0, 2, 0, 1, 0]


@pytest.mark.parametrize("reduction", ["subset", "batch"])
def test_dist_in_btkd_distils_each_part_as_its_own_batch(reduction):
    swapped = [swap(r, y) for r, y in zip(T5, Y5)]
    right, wrong = [0, 1, 3], [2, 4]
    f_right = dist_ref([S5[i] for i in right], [swapped[i] for i in right], 4.0, 2.0, 2.0)
    f_wrong = dist_ref([S5[i] for i in wrong], [swapped[i] for i in wrong], 4.0, 2.0, 2.0)
    if reduction == "batch":  # a part's terms count in proportion to its size
        f_right, f_wrong = f_right * 3 / 5, f_wrong * 2 / 5
    out = BTKD("dist", reduction=reduction)(t64(S5), t64(T5), torch.tensor(Y5), epoch=0, epochs=4)
    assert float(out["n_wrong"]) == 2
    assert float(out["distill_right"]) == pytest.approx(f_right, rel=1e-9)
    assert float(out["distill_rectified"]) == pytest.approx(f_wrong, rel=1e-9)


def test_dist_batch_terms_batch_takes_the_intra_class_term_of_the_whole_batch():
    swapped = [swap(r, y) for r, y in zip(T5, Y5)]
    ys, yt = [softmax(r, 4.0) for r in S5], [softmax(r, 4.0) for r in swapped]
    intra = sum(1 - pearson([r[j] for r in ys], [r[j] for r in yt]) for j in range(3)) / 3

    def inter(rows):
        return sum(1 - pearson(ys[i], yt[i]) for i in rows) / len(rows)

    out = BTKD("dist", batch_terms="batch")(t64(S5), t64(T5), torch.tensor(Y5), epoch=0, epochs=4)
    assert float(out["distill_right"]) == pytest.approx(16 * (2 * inter([0, 1, 3]) + 2 * intra), rel=1e-9)
    assert float(out["distill_rectified"]) == pytest.approx(16 * (2 * inter([2, 4]) + 2 * intra), rel=1e-9)


def test_dist_empty_and_single_sample_parts():
    s, t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    for batch_terms in ("subset", "batch"):
        host = DIST(batch_terms=batch_terms)
        empty = host.parts(s, t, y, torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float64))
        assert float(empty[1]) == 0.0
    # one sample has no correlation across samples: only its inter-class term counts
    single = DIST(tau=1.0, beta=1.0, gamma=1.0).parts(s, t, y, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))
    ys, yt = softmax(s[0].tolist()), softmax(t[0].tolist())
    assert float(single[0]) == pytest.approx(1 - pearson(ys, yt), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# RLD


def test_rld_hand_case():
    s, t, y = [0.5, 1.0, -0.2, 0.8], [1.0, 3.0, 0.5, 2.0], 3  # the teacher is wrong: top class 1
    # SCD: teacher's binary (top class 1) -> student's binary of the label, temperature 1
    pt, ps = softmax(t)[1], softmax(s)[3]
    scd = kl([pt, 1 - pt], [ps, 1 - ps])
    # MCD: classes 1 and 3 (teacher logit >= its label logit) are masked; classes 0 and 2 remain
    mcd = 16 * kl(softmax([t[0], t[2]], 4.0), softmax([s[0], s[2]], 4.0))
    got = RLD(alpha=1.0, beta=8.0, warmup=0)(t64([s]), t64([t]), torch.tensor([y]))
    assert float(got) == pytest.approx(scd + 8 * mcd, rel=1e-10)
    # SCD at alpha_tau = 2: the binary distributions at that temperature, times its square
    pt2, ps2 = softmax(t, 2.0)[1], softmax(s, 2.0)[3]
    got2 = RLD(alpha=1.0, beta=0.0, alpha_tau=2.0, warmup=0)(t64([s]), t64([t]), torch.tensor([y]))
    assert float(got2) == pytest.approx(4 * kl([pt2, 1 - pt2], [ps2, 1 - ps2]), rel=1e-10)
    # a row where the teacher ranks the label last has nothing left to correlate: MCD = 0
    low = RLD(alpha=0.0, beta=1.0, warmup=0)(t64([s]), t64([[1.0, 3.0, 0.5, 0.1]]), torch.tensor([3]))
    assert float(low) == 0.0


def test_rld_warmup_is_dkds():
    host = RLD()
    assert [host.scale(e) for e in (0, 9, 19, 50)] == [pytest.approx(1 / 20), pytest.approx(0.5), 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# CTKD


def test_ctkd_value_is_kd_at_the_learned_temperature():
    s, t = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0]
    tau = 1 + 20 / (1 + math.exp(-1.0))  # tau_min + tau_range * sigmoid(init = 1)
    host = CTKD().double()
    assert host.tau == pytest.approx(tau)
    assert float(host(t64([s]), t64([t]), torch.tensor([0])).detach()) == pytest.approx(kd_ref(s, t, tau), rel=1e-10)


def test_ctkd_curriculum_is_the_papers_cosine():
    host = CTKD()
    for e in range(14):
        n = min(e + 1, 10)  # the 1-based epoch, capped at E_loops = 10
        want = 0.5 * (1 + math.cos((1 + n / 10) * math.pi))
        assert host.lambda_at(e) == pytest.approx(want, abs=1e-12)
    assert host.lambda_at(4) == pytest.approx(0.5) and host.lambda_at(9) == 1.0 and host.lambda_at(0) > 0
    assert curriculum_lambda(3.7, 0.2, 0.6, 0) == 0.6
    # set_epoch writes the buffer in place, so a captured graph that reads it sees the new value
    ptr = host.grl_lambda.data_ptr()
    host.set_epoch(4, 240)
    assert host.grl_lambda.data_ptr() == ptr and float(host.grl_lambda) == pytest.approx(0.5)


def test_ctkd_temperature_gets_the_reversed_gradient_and_the_student_the_plain_one():
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    host = CTKD().double()
    host(s, t, y, epoch=4, epochs=240).mean().backward()  # lambda = 0.5
    # the same loss written out by hand, with a plain (not reversed) temperature parameter
    raw = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    s2 = s.detach().clone().requires_grad_()
    tau = 1 + 20 * torch.sigmoid(raw)
    p_t = torch.softmax(t / tau, 1)
    plain = (tau**2 * (p_t * (torch.log(p_t) - torch.log_softmax(s2 / tau, 1))).sum(1)).mean()
    plain.backward()
    assert float(raw.grad) != 0.0
    assert float(host.raw.grad) == pytest.approx(-0.5 * float(raw.grad), rel=1e-10)  # reversed, times lambda
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-10, atol=1e-12)  # the student is not reversed


def test_ctkd_parameters_reach_the_optimizer_and_the_state_dict_and_the_temperature_stays_in_range():
    loss = BTKD("ctkd")
    assert [n for n, _ in loss.named_parameters()] == ["host.raw"]
    assert "host.raw" in loss.state_dict() and "host.grl_lambda" not in loss.state_dict()
    with torch.no_grad():
        loss.host.raw.fill_(1e4)
    assert loss.host.tau == pytest.approx(21.0)
    with torch.no_grad():
        loss.host.raw.fill_(-1e4)
    assert loss.host.tau == pytest.approx(1.0)


def test_ctkd_instance_variant():
    torch.manual_seed(0)
    host = CTKD(variant="instance", num_classes=5, hidden=8)
    s = torch.randn(6, 5, requires_grad=True)
    t, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    tau = host.temperature(s, t)
    assert tau.shape == (6, 1) and bool(((tau > 1) & (tau < 21)).all())
    host.set_epoch(9, 240)
    out = host(s, t, y)
    assert out.shape == (6,)
    out.sum().backward()
    grads = [p.grad for p in host.parameters()]
    assert len(grads) == 4 and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # the student's gradient is KD's at the (fixed) per-sample temperatures: no path through the MLP
    s2 = s.detach().clone().requires_grad_()
    fixed = tau.detach()
    p_t = torch.softmax(t / fixed, 1)
    (fixed.squeeze(1) ** 2 * (p_t * (p_t.log() - torch.log_softmax(s2 / fixed, 1))).sum(1)).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        CTKD(variant="instance")


# ---------------------------------------------------------------------------------------------
# label-swap KD and SLD


def test_label_swap_is_kd_on_the_swapped_teacher():
    s, t, y = [1.0, 2.0, 0.5], [0.5, 2.0, 1.0], 0  # teacher wrong: top class 1
    got = LabelSwapKD(tau=2.0)(t64([s]), t64([t]), torch.tensor([y]))
    assert float(got) == pytest.approx(kd_ref(s, [2.0, 0.5, 1.0], 2.0), rel=1e-12)


def test_sld_hand_case_and_its_student_target_from_a_set_epoch():
    s, t, y = [1.0, 2.0, 0.5], [0.5, 2.0, 1.0], 0  # teacher and student both wrong (top class 1)
    host = SLD(taus=(1.0, 2.0), student_from=3)
    teacher_part = kd_ref(s, swap(t, y), 1.0) + kd_ref(s, swap(t, y), 2.0)
    student_part = kd_ref(s, swap(s, y), 1.0) + kd_ref(s, swap(s, y), 2.0)
    args = (t64([s]), t64([t]), torch.tensor([y]))
    assert float(host(*args, epoch=2, epochs=10)) == pytest.approx(teacher_part, rel=1e-12)
    assert float(host(*args, epoch=3, epochs=10)) == pytest.approx(teacher_part + student_part, rel=1e-12)
    # the default schedule: the student target from epoch 150 (the authors' 'epoch > 150', 1-based),
    # switched in place so that a captured graph sees it
    sld = SLD()
    ptr = sld.student_on.data_ptr()
    sld.set_epoch(149.9, 240)
    assert float(sld.student_on) == 0.0
    sld.set_epoch(150, 240)
    assert float(sld.student_on) == 1.0 and sld.student_on.data_ptr() == ptr


def test_sld_student_target_is_detached():
    s = t64([[1.0, 2.0, 0.5]]).requires_grad_()
    t, y = t64([[0.5, 2.0, 1.0]]), torch.tensor([0])
    SLD(taus=(2.0,), student_from=0)(s, t, y).sum().backward()
    # the same two KL terms with both targets as constants
    s2 = s.detach().clone().requires_grad_()
    loss = 0
    for target in ([2.0, 0.5, 1.0], [2.0, 1.0, 0.5]):  # swapped teacher, swapped student
        p = t64([softmax(target, 2.0)])
        loss = loss + 4 * (p * (p.log() - torch.log_softmax(s2 / 2.0, 1))).sum()
    loss.backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# logit standardisation


def test_standardize_uses_the_papers_population_std():
    row = [1.0, 2.0, 0.5, -3.0]
    torch.testing.assert_close(standardize(t64([row]))[0], t64(zscore(row)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(standardize(t64([row]), unbiased=True)[0], t64(zscore(row, unbiased=True)),
                               rtol=1e-12, atol=1e-12)


def test_kd_ls_hand_case_and_recipe():
    s, t = [1.0, 2.0, 0.5, -1.0], [2.0, 0.0, 1.0, 4.0]
    want = kd_ref(zscore(s), zscore(t), 2.0)  # base tau 2: softmax(Z(x) / 2), times 2^2
    got = KDLS()(t64([s]), t64([t]), torch.tensor([0]))
    assert float(got) == pytest.approx(want, rel=1e-9)
    d = Distill("kd_ls")
    assert (d.ce_weight, d.kd_weight, d.host.tau) == (0.1, 9.0, 2.0)
    # only the relations between logits matter: shifting and scaling either side changes nothing
    moved = KDLS()(t64([[3 * v + 7 for v in s]]), t64([[0.5 * v - 2 for v in t]]), torch.tensor([0]))
    assert float(moved) == pytest.approx(want, rel=1e-6)


def test_dkd_ls_is_dkd_on_standardised_logits_with_the_kd_weight_in_alpha_and_beta():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 6, (4,))
    zs, zt = t64([zscore(r) for r in s.tolist()]), t64([zscore(r) for r in t.tolist()])
    want = DKD(alpha=9.0, beta=72.0, tau=2.0, warmup=0)(zs, zt, y)
    torch.testing.assert_close(DKDLS(warmup=0)(s, t, y), want, rtol=1e-9, atol=1e-12)
    d = Distill("dkd_ls")
    assert (d.ce_weight, d.kd_weight) == (1.0, 1.0)
    assert (d.host.inner.alpha, d.host.inner.beta, d.host.inner.warmup) == (9.0, 72.0, 20)


def test_standardized_composes_with_other_hosts():
    ls_ctkd = Standardized(CTKD())
    assert [n for n, _ in ls_ctkd.named_parameters()] == ["inner.raw"] and ls_ctkd.needs == ("epoch", "learnable")
    ls_ctkd.set_epoch(4, 240)
    assert float(ls_ctkd.inner.grl_lambda) == pytest.approx(0.5)
    ls_dist = btkd.make_host("ls", inner="dist", tau=1.0)
    assert isinstance(ls_dist.inner, DIST) and ls_dist.batch_level
    y = torch.tensor([0, 2, 0])
    want = dist_ref([zscore(r) for r in S3], [zscore(r) for r in T3], 1.0, 2.0, 2.0)
    got = Distill(ls_dist, ce_weight=0, kd_weight=1)(t64(S3), t64(T3), y)["distill"]
    assert float(got) == pytest.approx(want, rel=1e-6)  # the 1e-7 in the z-score's denominator
    with pytest.raises(ValueError, match="already rectifies"):
        BTKD(Standardized("sld"))
    with pytest.raises(ValueError, match="rectify='reweight'"):
        BTKD("kd_ls", rectify="reweight")


def test_standardisation_of_a_constant_row_is_finite():
    s = torch.zeros(2, 5, requires_grad=True)
    out = KDLS()(s, torch.randn(2, 5), torch.tensor([0, 1]))
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(s.grad).all())


def test_standardisation_of_logits_whose_squares_overflow_float32():
    # A class masked with a huge finite logit (-1e30, finfo.min) overflowed the float32 variance: the
    # row's z-scores became 0 (no distillation, silently) or NaN. float64 does not overflow there.
    torch.manual_seed(0)
    s, t, y = torch.randn(3, 6), torch.randn(3, 6), torch.tensor([0, 1, 2])
    t[0, 5], t[1, 5], s[2, 3] = -1e30, torch.finfo(torch.float32).min, 3e25
    torch.testing.assert_close(standardize(t).double(), standardize(t.double()), rtol=1e-5, atol=1e-6)
    s.requires_grad_()
    got = KDLS()(s, t, y)
    got.sum().backward()
    torch.testing.assert_close(got.double(), KDLS()(s.detach().double(), t.double(), y), rtol=1e-5, atol=1e-6)
    assert bool(torch.isfinite(s.grad).all())


# ---------------------------------------------------------------------------------------------
# every host: metadata, gradcheck, BTKD on all-right and all-wrong batches, precision


def make(name, c=5):
    """A host by registered name; "ctkd_i" is CTKD's instance-wise variant."""
    if name == "ctkd_i":
        return CTKD(variant="instance", num_classes=c, hidden=8)
    return btkd.make_host(name)


HOST_NAMES = sorted(HOSTS) + ["ctkd_i"]


def test_metadata_of_every_registered_host():
    assert {"kd", "dkd", "nkd", "dist", "ctkd", "rld", "sld", "label_swap", "ls", "kd_ls", "dkd_ls"} <= set(HOSTS)
    for name, cls in HOSTS.items():
        assert cls.paper, name
        assert set(cls.needs) <= set(NEEDS), name
        assert isinstance(cls.defaults(), dict)
        host = btkd.make_host(name)
        assert host.default_ce_weight > 0 and host.default_kd_weight > 0
        assert host.rectifies == (name in RECTIFYING), name
    assert CTKD.defaults()["lambda_epochs"] == 10 and SLD.defaults()["student_from"] == 150
    assert set(CTKD.needs) == {"epoch", "learnable"} and "student_target" in SLD.needs
    with pytest.raises(ValueError, match="known needs"):
        btkd.register_host("test_bad_needs")(type("Bad", (HostLoss,), {"needs": ("gpu",)}))


@pytest.mark.parametrize("name", sorted(RECTIFYING))
def test_btkd_refuses_hosts_that_already_rectify(name):
    with pytest.raises(ValueError, match=rf"already rectifies.*Distill\('{name}'"):
        BTKD(name)
    out = Distill(name)(torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,)), epoch=200, epochs=240)
    assert math.isfinite(float(out["total"]))
    with pytest.raises(ValueError, match="expected one of") as err:  # a mistyped name lists what BTKD takes
        BTKD(name + "x")
    assert f"'{name}'" not in str(err.value).split("expected one of")[1] and "'kd'" in str(err.value)


@pytest.mark.parametrize("name", HOST_NAMES)
def test_gradcheck_in_float64(name):
    torch.manual_seed(0)
    host = make(name).double()
    if name == "sld":
        host = SLD(student_from=math.inf)  # the student target is detached: checked above
    if name in ("dkd", "dkd_ls", "rld"):
        host.set_epoch(30, 240)
    s = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 5, dtype=torch.float64, requires_grad=name != "ctkd_i")
    y = torch.randint(0, 5, (5,))
    masks = torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float64)
    out = host(s, t, y)
    assert out.dtype == torch.float64
    if name == "ctkd_i":  # its temperature depends on the (detached) logits: only the student side
        return
    assert torch.autograd.gradcheck(lambda a, b: host(a, b, y), (s, t), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: host.parts(a, b, y, masks, "subset"), (s, t), fast_mode=True)


ALL_RIGHT = (torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 1.0, 0.0]]),
             torch.tensor([0, 1, 2, 0]))
ALL_WRONG = (ALL_RIGHT[0], torch.tensor([1, 2, 0, 2]))


@pytest.mark.parametrize("name", [n for n in HOST_NAMES if n not in RECTIFYING])
@pytest.mark.parametrize("reduction", ["subset", "batch"])
def test_btkd_on_every_host_is_finite_on_all_right_and_all_wrong_batches(name, reduction):
    torch.manual_seed(0)
    loss = BTKD(make(name, c=3), reduction=reduction)
    for teacher, labels in (ALL_RIGHT, ALL_WRONG):
        s = torch.randn(4, 3, requires_grad=True)
        out = loss(s, teacher, labels, epoch=5, epochs=10)
        assert all(bool(torch.isfinite(v).all()) for v in out.values()), name
        empty = "distill_rectified" if labels is ALL_RIGHT[1] else "distill_right"
        assert float(out[empty].detach()) == 0.0  # an empty part contributes exactly 0
        out["total"].backward()
        assert bool(torch.isfinite(s.grad).all())
        for p in loss.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all())


@pytest.mark.parametrize("name", HOST_NAMES)
def test_half_inputs_compute_in_float32_and_float64_stays_float64(name):
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    host = make(name)
    assert Distill(host)(s.bfloat16(), t.bfloat16(), y, epoch=3, epochs=10)["total"].dtype == torch.float32
    out = Distill(make(name).double())(s.double(), t.double(), y, epoch=3, epochs=10)
    assert out["distill"].dtype == out["total"].dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# a short training run per host: the loss goes down


def _problem(seed=0, n=128, d=8, c=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=g)
    x = torch.randn(n, d, generator=g)
    y = (x @ w).argmax(1)
    teacher_logits = 3 * (x @ (w + 0.3 * torch.randn(d, c, generator=g)))  # right on most samples
    return x, y, teacher_logits


@pytest.mark.parametrize("name", HOST_NAMES)
@pytest.mark.parametrize("with_btkd", [False, True])
def test_short_training_run_lowers_the_loss(name, with_btkd):
    if with_btkd and name in RECTIFYING:
        pytest.skip("BTKD refuses this host")
    x, y, teacher_logits = _problem()
    torch.manual_seed(0)
    student = torch.nn.Linear(8, 4)
    host = make(name, c=4) if name != "sld" else SLD(student_from=10)
    loss = BTKD(host) if with_btkd else Distill(host)
    params = list(student.parameters()) + list(loss.parameters())
    # a smaller step for the losses of a larger scale (tau^2 times 2 to 9, or six temperatures)
    big = name in ("nkd", "dist", "kd_ls", "dkd_ls", "ls", "sld")
    opt = torch.optim.SGD(params, lr=0.01 if big else 0.1)
    totals = []
    for _ in range(40):  # past DKD's and RLD's warm-up, with CTKD's adversary and SLD's student target on
        out = loss(student(x), teacher_logits, y, epoch=25, epochs=40)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        totals.append(float(out["total"].detach()))
    assert all(math.isfinite(v) for v in totals)
    assert sum(totals[-5:]) < sum(totals[:5]), (name, totals[:5], totals[-5:])
