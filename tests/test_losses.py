"""Host losses against hand-computed values (logits chosen as log-probabilities)."""

import math

import pytest
import torch

from btkd import BTKD, DKD, HOSTS, KD, Distill, HostLoss, make_host, register_host

LN2 = math.log(2)


def logp(*p, tau=1.0):
    return tau * torch.tensor([p], dtype=torch.float64).log().float()


def test_kd_hand_case():
    t, s, y = logp(0.5, 0.25, 0.25), logp(0.25, 0.5, 0.25), torch.tensor([0])
    # KL([.5,.25,.25] || [.25,.5,.25]) = .5 ln2 + .25 ln(1/2) = .25 ln 2
    assert float(KD(tau=1.0)(s, t, y)) == pytest.approx(0.25 * LN2, rel=1e-6)
    # the same distributions at tau = 2, times tau^2 = 4
    assert float(KD(tau=2.0)(logp(0.25, 0.5, 0.25, tau=2), logp(0.5, 0.25, 0.25, tau=2), y)) == pytest.approx(LN2, rel=1e-6)


def test_kd_takes_a_probability_target():
    s, y = logp(0.25, 0.5, 0.25), torch.tensor([0])
    got = KD(tau=1.0)(s, None, y, target_probs=torch.tensor([[1.0, 0.0, 0.0]]))
    assert float(got) == pytest.approx(math.log(4), rel=1e-6)  # KL(one-hot || q) = -ln q_y, 0 log 0 = 0


def test_dkd_hand_case():
    t, s, y = logp(0.5, 0.25, 0.25), logp(0.25, 0.5, 0.25), torch.tensor([0])
    tckd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # binary [.5,.5] vs [.25,.75]
    nckd = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))  # [.5,.5] vs [2/3,1/3]
    got = DKD(alpha=1.0, beta=8.0, tau=1.0, warmup=0)(s, t, y)
    assert float(got) == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    assert float(DKD(alpha=2.0, beta=0.0, tau=1.0, warmup=0)(s, t, y)) == pytest.approx(2 * tckd, rel=1e-5)
    # the same distributions at tau = 2, times tau^2 = 4
    s2, t2 = logp(0.25, 0.5, 0.25, tau=2), logp(0.5, 0.25, 0.25, tau=2)
    got = DKD(alpha=1.0, beta=8.0, tau=2.0, warmup=0)(s2, t2, y)
    assert float(got) == pytest.approx(4 * (tckd + 8 * nckd), rel=1e-5)


def test_dkd_warmup_is_linear_then_flat():
    host = DKD(warmup=20)
    assert [host.scale(e) for e in (0, 9, 19, 100)] == [pytest.approx(1 / 20), pytest.approx(0.5), 1.0, 1.0]
    t, s, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    torch.testing.assert_close(host(s, t, y, epoch=4), 0.25 * host(s, t, y, epoch=19))


def test_dkd_is_finite_when_student_probabilities_underflow():
    s = torch.tensor([[-300.0, 300.0, 0.0]], requires_grad=True)
    t = torch.tensor([[5.0, 0.0, -5.0]])
    loss = DKD(tau=1.0, warmup=0)(s, t, torch.tensor([0]))
    loss.sum().backward()
    assert math.isfinite(float(loss.detach())) and bool(torch.isfinite(s.grad).all())


def test_dkd_refuses_a_probability_target():
    with pytest.raises(ValueError, match="rectify='swap'"):
        DKD()(torch.randn(1, 3), None, torch.tensor([0]), target_probs=torch.ones(1, 3) / 3)


def test_losses_are_per_sample_and_zero_for_identical_logits():
    z = torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    for host in (KD(), DKD(warmup=0)):
        out = host(z, z, y)
        assert out.shape == (5,)
        # float32 rounding, amplified by tau^2 * beta = 128 for DKD
        torch.testing.assert_close(out, torch.zeros(5), atol=1e-4, rtol=0)


def test_distill_is_ce_plus_weighted_host_and_uses_framework_defaults():
    s, t, y = logp(0.25, 0.5, 0.25), logp(0.5, 0.25, 0.25), torch.tensor([0])
    out = Distill("kd", tau=1.0)(s, t, y)
    assert float(out["ce"]) == pytest.approx(math.log(4), rel=1e-6)
    assert float(out["total"]) == pytest.approx(0.1 * math.log(4) + 0.9 * 0.25 * LN2, rel=1e-6)
    dkd = Distill("dkd")
    assert (dkd.ce_weight, dkd.kd_weight) == (1.0, 1.0)


def test_distill_of_an_epoch_dependent_host_needs_the_epoch():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    for host in ("dkd", "ctkd", "rld", "dkd_ls"):
        # without the epoch DKD's warm-up would stay at 1/20 of its loss on every call
        with pytest.raises(TypeError, match=rf"Distill\('{host}'\) needs epoch= and epochs="):
            Distill(host)(s, t, y)
        with pytest.raises(TypeError, match="takes epoch= and epochs= together"):
            Distill(host)(s, t, y, epoch=3)
    late = Distill("dkd")(s, t, y, epoch=30, epochs=240)["distill"]
    first = Distill("dkd")(s, t, y, epoch=0, epochs=240)["distill"]
    torch.testing.assert_close(first * 20, late)
    # a host that does not depend on the epoch needs none, but half of the pair is a mistake
    torch.testing.assert_close(Distill("kd")(s, t, y)["total"], Distill("kd")(s, t, y, epoch=5, epochs=9)["total"])
    with pytest.raises(TypeError, match="together"):
        Distill("kd")(s, t, y, epochs=9)


def test_registry_and_errors():
    assert {"kd", "dkd"} <= set(HOSTS)
    with pytest.raises(ValueError, match=r"host='kdd'.*Did you mean 'kd'"):
        make_host("kdd")
    with pytest.raises(ValueError, match=r"host 'kd' has no option alpha; its options are tau$"):
        make_host("kd", alpha=1.0)
    with pytest.raises(ValueError, match=r"host 'mlkd' has no options beta, tau; its options are taus"):
        make_host("mlkd", tau=4.0, beta=2.0)
    with pytest.raises(ValueError, match="tau=0 must be a finite number > 0"):
        KD(tau=0)
    host = KD(tau=2.0)
    assert make_host(host) is host
    with pytest.raises(ValueError, match="set them on the object"):
        make_host(host, tau=3.0)


def test_register_host_adds_a_user_loss():
    @register_host("test_l2")
    class L2(HostLoss):
        def per_sample(self, s, t, y, target_probs=None):
            return ((s - t) ** 2).sum(1)

    try:
        assert make_host("test_l2").name == "test_l2"
        with pytest.raises(ValueError, match="already registered"):
            register_host("test_l2")(KD)

        @register_host("test_l2")  # the same definition again (a notebook cell re-run) replaces itself
        class L2(HostLoss):  # noqa: F811
            def per_sample(self, s, t, y, target_probs=None):
                return ((s - t) ** 2).sum(1)

        assert HOSTS["test_l2"] is L2
    finally:
        HOSTS.pop("test_l2")


def test_a_user_host_must_give_one_value_per_sample():
    """A per_sample that averages over the batch would give BTKD's two parts the same value, silently."""
    class BatchMean(HostLoss):
        name = "batch_mean"

        def per_sample(self, s, t, y, target_probs=None):
            return ((s - t) ** 2).mean()

    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    for loss in (BTKD(BatchMean()), Distill(BatchMean())):
        with pytest.raises(ValueError, match=r"host 'batch_mean': per_sample returned shape \[\] for 6 samples; "
                                             r"it must return one value per sample, shape \[6\]"):
            loss(s, t, y, epoch=0, epochs=1)
    with pytest.raises(NotImplementedError, match=r"host 'host' \(HostLoss\) must implement per_sample"):
        Distill(HostLoss())(s, t, y)


# ---------------------------------------------------------------------------------------------
# Compute precision: at least float32, float64 kept


def _double_batch(n=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, c, generator=g, dtype=torch.float64)
    return s, t, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("host", [KD(tau=2.0), DKD(tau=2.0, beta=3.0, warmup=0)])
def test_host_gradcheck_in_float64(host):
    s, t, y = _double_batch()
    t.requires_grad_()
    assert host(s, t, y).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a, b: host(a, b, y), (s, t))


def test_kd_takes_a_float64_probability_target_in_float64():
    s, t, y = _double_batch()
    target = torch.softmax(t, dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, p: KD(tau=1.0)(a, None, y, target_probs=p), (s, target))


def test_float64_inputs_give_float64_values_that_match_a_float64_reference():
    s, t, y = _double_batch()
    want = (torch.softmax(t, 1) * (torch.log_softmax(t, 1) - torch.log_softmax(s, 1))).sum(1)
    got = KD(tau=1.0)(s, t, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    out = Distill("kd", tau=1.0)(s, t, y)
    assert out["ce"].dtype == out["total"].dtype == torch.float64
    torch.testing.assert_close(out["ce"], torch.nn.functional.cross_entropy(s, y), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_float32(dtype):
    s, t, y = _double_batch()
    for host in (KD(), DKD(warmup=0)):
        assert host(s.detach().to(dtype), t.to(dtype), y).dtype == torch.float32
    assert Distill("kd")(s.detach().to(dtype), t.to(dtype), y)["total"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# The parts contract: per-sample hosts need nothing new; batch-level hosts override parts


def test_default_parts_are_masked_means_of_per_sample_values():
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    values = KD(tau=2.0).per_sample(s, t, y)
    masks = torch.tensor([[1.0, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    subset = KD(tau=2.0).parts(s, t, y, masks, "subset")
    batch = KD(tau=2.0).parts(s, t, y, masks, "batch")
    torch.testing.assert_close(subset, torch.stack([values[:2].mean(), values[2:].mean(), values.new_zeros(())]))
    torch.testing.assert_close(batch, torch.stack([values[:2].sum() / 5, values[2:].sum() / 5, values.new_zeros(())]))
    assert float(subset[2]) == 0.0  # an empty part is exactly 0


def test_distill_takes_the_distillation_term_from_host_parts():
    calls = []

    class Batchy(HostLoss):
        def per_sample(self, s, t, y, target_probs=None):
            raise AssertionError("Distill must go through parts")

        def parts(self, s, t, y, masks, reduction="subset", target_probs=None):
            calls.append((masks.clone(), reduction))
            return masks.sum(dim=1) * 2.0

        def scale(self, epoch):
            return 0.5

    out = Distill(Batchy(), ce_weight=0.0, kd_weight=1.0)(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert float(out["distill"]) == pytest.approx(0.5 * 2.0 * 3)
    (masks, reduction), = calls
    assert masks.tolist() == [[1.0, 1.0, 1.0]] and reduction == "subset"


def test_forward_and_distill_pass_the_epoch_to_set_epoch():
    seen = []

    class Epochy(KD):
        def set_epoch(self, epoch, epochs):
            seen.append((epoch, epochs))

    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    Epochy()(z, z, y, epoch=3, epochs=7)
    Distill(Epochy())(z, z, y, epoch=4, epochs=7)
    assert seen == [(3, 7), (4, 7)]


@pytest.mark.parametrize("host", ["kd", "dkd", "dist", "nkd"])
def test_no_gradient_reaches_the_teacher_logits(host):
    # Teacher logits made outside no_grad (online or mutual distillation) must not be trained
    # through the distillation loss: the baseline Distill detaches them as BTKD does.
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True), torch.randint(0, 5, (6,))
    for loss in (Distill(host), BTKD(host)):
        loss(s, t, y, epoch=0, epochs=1)["total"].backward()
        assert t.grad is None and s.grad is not None
        s.grad = None


def test_btkd_cross_entropy_covers_every_view():
    # A two-view host (MLKD): CE is summed over the weak and the strong view, as Distill sums it.
    torch.manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(8, 10) for _ in range(4))
    y = torch.randint(0, 10, (8,))
    want = torch.nn.functional.cross_entropy(s1, y) + torch.nn.functional.cross_entropy(s2, y)
    got = BTKD("mlkd")([s1, s2], [t1, t2], y, epoch=0, epochs=1)["ce"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(Distill("mlkd")([s1, s2], [t1, t2], y, epoch=0, epochs=1)["ce"], want)


@pytest.mark.parametrize("name, options", [("kd", {"tau": 1.0}), ("dkd", {"tau": 1.0, "warmup": 0}),
                                           ("mlkd", {"taus": (1.0,)}), ("rld", {"warmup": 0})])
def test_a_confident_teacher_that_requires_grad_gets_a_finite_gradient(name, options):
    # A teacher trained along (the host called directly): at tau 1 its float32 softmax underflows to
    # exactly 0, where xlogy(p, p) had a NaN gradient; float64 does not underflow and is the reference.
    y = torch.tensor([1, 2])
    rows = [[0.0, 200.0, 0.0], [0.0, 0.0, -200.0]]
    s = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    grads = []
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(rows, dtype=dtype, requires_grad=True)
        make_host(name, **options).to(dtype)(s.to(dtype), t, y).sum().backward()
        grads.append(t.grad)
    assert bool(torch.isfinite(grads[0]).all())
    torch.testing.assert_close(grads[0].double(), grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_calling_a_host_takes_labels_of_any_integer_dtype(dtype):
    # as Distill and BTKD do; gather and scatter refused a uint8 or int16 index
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 4])
    for name in HOSTS:
        assert torch.equal(make_host(name)(s, t, y.to(dtype)), make_host(name)(s, t, y)), name
