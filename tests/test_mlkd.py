"""MLKD: the three levels against hand values and an explicit-loop reference, parts on masks equal to
the host run on the part alone, views (relation terms on the weak view, CE on both), BTKD's per-view
split, and the argument checks."""

import math

import pytest
import torch

from btkd import BTKD, MLKD, Distill
from btkd.losses.base import view_list
from btkd.losses.ls import Standardized


def reference(s, t, taus, relations=True):
    """MLKD's terms of one view written with loops, as the formulas read: (instance mean, batch, class)."""
    n, c = s.shape
    inst = bat = cls = 0.0
    for tau in taus:
        ps, pt = torch.softmax(s / tau, 1), torch.softmax(t / tau, 1)
        inst += tau**2 * sum(float((pt[i] * (pt[i].log() - ps[i].log())).sum()) for i in range(n)) / n
        if relations:
            bat += sum(float((pt[i] @ pt[j] - ps[i] @ ps[j]) ** 2) for i in range(n) for j in range(n)) / n
            cls += sum(float((pt[:, a] @ pt[:, b] - ps[:, a] @ ps[:, b]) ** 2) for a in range(c) for b in range(c)) / c
    return inst, bat, cls


def test_hand_values_on_two_samples_and_two_classes():
    # p_s = [[.5, .5], [.75, .25]], p_t = [[.75, .25], [.5, .5]] at tau 1
    s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)  # 0.143841
    # Gram matrices: G_s = [[.5, .5], [.5, .625]], G_t = [[.625, .5], [.5, .5]]: ||diff||^2 / 2 = 0.015625;
    # the class matrices P'P are equal (0.8125, 0.4375, 0.3125 for both): 0.
    inst_only = MLKD(taus=(1.0,), batch_weight=0, class_weight=0)
    assert float(inst_only(s, t, y).mean()) == pytest.approx((kl0 + kl1) / 2, abs=1e-12)
    batch_only = MLKD(taus=(1.0,), instance_weight=0, class_weight=0)
    assert float(batch_only(s, t, y).mean()) == pytest.approx(0.015625, abs=1e-12)
    class_only = MLKD(taus=(1.0,), instance_weight=0, batch_weight=0)
    assert float(class_only(s, t, y).mean()) == pytest.approx(0.0, abs=1e-12)
    # the class term on an asymmetric pair: P'P of p = [[1, 0], [.5, .5]] is [[1.25, .25], [.25, .25]]
    t2 = torch.tensor([[50.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    s2 = torch.zeros(2, 2, dtype=torch.float64)  # all 0.5: P'P = [[.5, .5], [.5, .5]]
    assert float(class_only(s2, t2, y).mean()) == pytest.approx((0.75**2 + 3 * 0.25**2) / 2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_loop_reference_at_several_temperatures(seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), 2 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    host = MLKD()
    inst, bat, cls = reference(s, t, host.taus)
    assert float(host(s, t, y).mean()) == pytest.approx(inst + bat + cls, rel=1e-10)
    whole = torch.ones(1, 6, dtype=torch.float64)
    assert float(host.parts(s, t, y, whole)[0]) == pytest.approx(inst + bat + cls, rel=1e-10)
    weighted = MLKD(instance_weight=2.0, batch_weight=3.0, class_weight=0.5)
    assert float(weighted.parts(s, t, y, whole)[0]) == pytest.approx(2 * inst + 3 * bat + 0.5 * cls, rel=1e-10)


def test_identical_predictions_give_zero():
    s = torch.randn(5, 7, dtype=torch.float64)
    assert float(MLKD().parts(s, s.clone(), torch.zeros(5, dtype=torch.long), torch.ones(1, 5))[0]) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("batch_terms", ["subset", "batch"])
def test_a_part_equals_the_host_on_that_part_alone_and_an_empty_part_is_zero(batch_terms):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    masks = torch.stack([keep, ~keep, torch.zeros(8, dtype=torch.bool)]).double()
    host = MLKD(batch_terms=batch_terms)
    parts = host.parts(s, t, y, masks, "subset")
    alone = MLKD().parts(s[keep], t[keep], y[keep], torch.ones(1, int(keep.sum()), dtype=torch.float64))[0]
    if batch_terms == "subset":
        assert float(parts[0]) == pytest.approx(float(alone), rel=1e-10)
    else:  # the instance mean of the part plus the whole batch's relation terms
        inst, bat, cls = reference(s, t, host.taus)
        inst_part, _, _ = reference(s[keep], t[keep], host.taus, relations=False)
        assert float(parts[0]) == pytest.approx(inst_part + bat + cls, rel=1e-10)
    assert float(parts[2]) == 0.0
    # "batch" reduction: each part's share of the batch, and the shares add up to the whole-batch loss
    shares = MLKD(batch_terms="batch").parts(s, t, y, masks[:2], "batch")
    inst, bat, cls = reference(s, t, host.taus)
    whole_relation = (bat + cls)
    assert float(shares.sum()) == pytest.approx(inst + whole_relation, rel=1e-10)


def test_two_views_relations_on_the_weak_view_unless_asked_for_both():
    g = torch.Generator().manual_seed(4)
    sw, ss, tw, ts = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.randint(0, 4, (6,), generator=g)
    whole = torch.ones(1, 6, dtype=torch.float64)
    iw, bw, cw = reference(sw, tw, MLKD().taus)
    i_s, b_s, c_s = reference(ss, ts, MLKD().taus)
    weak = MLKD().parts([sw, ss], [tw, ts], y, [whole, whole])[0]
    assert float(weak) == pytest.approx(iw + bw + cw + i_s, rel=1e-10)
    both = MLKD(relation_views="both").parts([sw, ss], [tw, ts], y, [whole, whole])[0]
    assert float(both) == pytest.approx(iw + bw + cw + i_s + b_s + c_s, rel=1e-10)
    # Distill: CE of both views, distillation weight 0.9 and CE weight 0.1 by default
    out = Distill("mlkd")([sw, ss], [tw, ts], y)
    ce = torch.nn.functional.cross_entropy(sw, y) + torch.nn.functional.cross_entropy(ss, y)
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-12)
    assert float(out["distill"]) == pytest.approx(float(weak), rel=1e-12)
    assert float(out["total"]) == pytest.approx(0.1 * float(ce) + 0.9 * float(weak), rel=1e-12)
    # LS composes with views: each view standardised
    ls = Standardized("mlkd").parts([sw, ss], [tw, ts], y, [whole, whole])[0]
    z = [(v - v.mean(1, keepdim=True)) / (v.std(1, unbiased=False, keepdim=True) + 1e-7) for v in (sw, ss, tw, ts)]
    assert float(ls) == pytest.approx(float(MLKD().parts(z[:2], z[2:], y, [whole, whole])[0]), rel=1e-8)


def test_btkd_splits_and_rectifies_each_view_on_its_own_teacher():
    # weak view: the teacher is right on every sample; strong view: wrong on every sample
    t_weak = torch.tensor([[4.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    t_strong = torch.tensor([[0.0, 4.0, 1.0], [3.0, 0.0, 1.0], [1.0, 5.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    sw, ss = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    loss = BTKD("mlkd")
    out = loss([sw, ss], [t_weak, t_strong], y, epoch=3, epochs=10)
    assert float(out["n_wrong"]) == 0.0  # the weak view's count
    assert float(out["n_rectified"]) == 4.0  # every view's rectified rows
    whole = torch.ones(1, 4, dtype=torch.float64)
    iw, bw, cw = reference(sw, t_weak, MLKD().taus)
    assert float(out["distill_right"]) == pytest.approx(iw + bw + cw, rel=1e-10)  # weak view, all right
    swapped = t_strong.clone()
    for i, label in enumerate(y.tolist()):  # the swap by hand: label logit and top logit exchanged
        top = int(t_strong[i].argmax())
        swapped[i, label], swapped[i, top] = t_strong[i, top], t_strong[i, label]
    i_s, _, _ = reference(ss, swapped, MLKD().taus, relations=False)
    assert float(out["distill_rectified"]) == pytest.approx(i_s, rel=1e-10)  # strong view, instance only
    assert torch.equal(view_list(swapped)[0].argmax(1), y)
    assert float(MLKD().parts(ss, swapped, y, whole)[0]) > 0


def test_gradients_reach_both_views_of_the_student():
    sw = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    ss = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = [torch.randn(4, 5, dtype=torch.float64) for _ in range(2)]
    y = torch.randint(0, 5, (4,))
    BTKD("mlkd")([sw, ss], t, y, epoch=1, epochs=4)["total"].backward()
    assert sw.grad.abs().sum() > 0 and ss.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a, b: Distill("mlkd")([a, b], t, y)["total"], (sw, ss), fast_mode=True)


def test_argument_errors_say_what_to_pass():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match="distils 2 views.*list of 2"):
        Distill("mlkd")([s, s, s], [t, t, t], y)
    with pytest.raises(ValueError, match="distils one view"):
        Distill("kd")([s, s], [t, t], y)
    with pytest.raises(ValueError, match="taus"):
        MLKD(taus=())
    with pytest.raises(ValueError, match="relation_views"):
        MLKD(relation_views="strong")
    with pytest.raises(ValueError, match="reweight.*swap"):
        BTKD("mlkd", rectify="reweight")
    # one view through the API is the host's terms on that view
    assert float(Distill("mlkd")(s, t, y)["distill"]) == pytest.approx(float(MLKD()(s, t, y).mean()), rel=1e-6)


def test_sld_takes_both_views_by_default_and_their_terms_add_up():
    from btkd import SLD

    g = torch.Generator().manual_seed(6)
    sw, ss, tw, ts = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.randint(0, 4, (5,), generator=g)
    masks = torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float64)
    host = SLD()
    assert host.views == 2 and "two_views" in host.needs
    both = host.parts([sw, ss], [tw, ts], y, [masks, masks])
    assert torch.allclose(both, host.parts(sw, tw, y, masks) + host.parts(ss, ts, y, masks), rtol=1e-12)
    out = Distill(host)([sw, ss], [tw, ts], y, epoch=0, epochs=10)
    ce = torch.nn.functional.cross_entropy(sw, y) + torch.nn.functional.cross_entropy(ss, y)
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-12)
    one = SLD(views=1)
    assert one.views == 1 and "two_views" not in one.needs
    with pytest.raises(ValueError, match="views=3"):
        SLD(views=3)


def test_a_two_view_host_that_takes_probabilities_gets_each_views_reweighted_target():
    from btkd import KD
    from btkd.bias import rectify_reweight

    class TwoViewKD(KD):
        views = 2

    g = torch.Generator().manual_seed(7)
    sw, ss, tw, ts = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.randint(0, 4, (6,), generator=g)
    out = BTKD(TwoViewKD(), rectify="reweight")([sw, ss], [tw, ts], y, epoch=2, epochs=8)
    kd = KD()
    want = torch.zeros(2, dtype=torch.float64)
    for s, t in ((sw, tw), (ss, ts)):
        right = (t.argmax(1) == y).double()
        masks = torch.stack([right, 1 - right])
        target = rectify_reweight(torch.softmax(t / 4.0, 1), y)
        want += kd.parts(s, None, y, masks, target_probs=target)
    assert float(out["distill_right"]) == pytest.approx(float(want[0]), rel=1e-10)
    assert float(out["distill_rectified"]) == pytest.approx(float(want[1]), rel=1e-10)


def test_the_class_terms_scale_against_the_authors_recipe():
    from btkd.losses.mlkd import class_term_scale
    from btkd.losses.ls import Standardized

    assert class_term_scale(MLKD(), 64, 100) == pytest.approx(1.0)
    assert class_term_scale(MLKD(), 128, 10) == pytest.approx(400.0)  # Fashion-MNIST's batch 128, 10 classes
    assert class_term_scale(Standardized("mlkd"), 128, 10) == pytest.approx(400.0)
    assert class_term_scale(MLKD(class_weight=0), 128, 10) is None
    from btkd import KD
    assert class_term_scale(KD(), 128, 10) is None
    # the term itself: the same predictions repeated k times over the batch grow it by k^2
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    host = MLKD(instance_weight=0, batch_weight=0)
    one = float(host(s, t, y).mean())
    three = float(host(s.repeat(3, 1), t.repeat(3, 1), y.repeat(3)).mean())
    assert three == pytest.approx(9 * one, rel=1e-10)


def authors_code_reference(sw, ss, tw, ts):
    """MLKD's loss as its authors' training step computes it (our reading of their code, rewritten):
    every term a batch mean; the weak view's terms multiplied by a 0/1 confidence mask and averaged
    again (numpy's median decides the mask); the strong-view sum takes temperatures 2 and 6 on the weak
    view; relations on the weak view only. Distillation part only (their kd weight is btkd's kd_weight)."""
    import numpy as np

    def inst(s, t, tau):
        return tau**2 * float((torch.softmax(t / tau, 1) * (torch.log_softmax(t / tau, 1)
                                                            - torch.log_softmax(s / tau, 1))).sum(1).mean())

    def rel(s, t, tau, gram):
        ps, pt = torch.softmax(s / tau, 1), torch.softmax(t / tau, 1)
        if gram == "batch":
            return float(((pt @ pt.T - ps @ ps.T) ** 2).sum()) / s.shape[0]
        return float(((pt.T @ pt - ps.T @ ps) ** 2).sum()) / s.shape[1]

    p = torch.softmax(tw.float(), 1).numpy()  # their logits are float32: a confident row's top rounds to 1
    top, per_class = p.max(1), p.sum(0)
    sample_mask = (top <= np.percentile(top, 50)).astype(float)
    class_mask = (per_class <= np.percentile(per_class, 50)).astype(float)
    taus = (4.0, 3.0, 5.0, 2.0, 6.0)
    weak = sum((inst(sw, tw, tau) * sample_mask).mean() for tau in taus)
    strong = sum(inst(ss, ts, tau) for tau in (4.0, 3.0, 5.0)) + inst(sw, tw, 2.0) + inst(sw, tw, 6.0)
    cc = sum((rel(sw, tw, tau, "class") * class_mask).mean() for tau in taus)
    bc = sum((rel(sw, tw, tau, "batch") * sample_mask).mean() for tau in taus)
    return weak + strong + cc + bc, sample_mask.mean(), class_mask.mean()


@pytest.mark.parametrize("n, c, seed", [(6, 5, 0), (7, 4, 1), (64, 100, 2)])
def test_authors_code_reproduces_their_scaling_term_for_term(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    sw, ss = (torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(2))
    tw, ts = (3 * torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randint(0, c, (n,), generator=g)
    want, sample_share, class_share = authors_code_reference(sw, ss, tw, ts)
    if n % 2 == 0:  # no ties: half the batch at or below its median; an odd count keeps its middle one too
        assert sample_share == 0.5
    else:
        assert sample_share == pytest.approx((n + 1) / 2 / n)
    check_authors_code(sw, ss, tw, ts, y, want)


def check_authors_code(sw, ss, tw, ts, y, want):
    n = sw.shape[0]
    host = MLKD(authors_code=True)
    whole = torch.ones(1, n, dtype=torch.float64)
    assert float(host.parts([sw, ss], [tw, ts], y, [whole, whole])[0]) == pytest.approx(want, rel=1e-10)
    assert float(host([sw, ss], [tw, ts], y).mean()) == pytest.approx(want, rel=1e-10)
    out = Distill(host)([sw, ss], [tw, ts], y)
    assert float(out["distill"]) == pytest.approx(want, rel=1e-10)
    # and it differs from the default, where each view's terms use that view, unscaled
    iw, bw, cw = reference(sw, tw, MLKD().taus)
    i_s, _, _ = reference(ss, ts, MLKD().taus, relations=False)
    assert float(MLKD()([sw, ss], [tw, ts], y).mean()) == pytest.approx(iw + bw + cw + i_s, rel=1e-10)
    assert abs(want - (iw + bw + cw + i_s)) > 1e-3 * abs(want)


def test_authors_code_with_a_confident_teacher_takes_their_float32_saturation():
    # 40 of 64 rows so confident that float32 rounds their top probability to 1: the median is 1 and
    # every sample is at or below it (a float64 softmax would give half)
    g = torch.Generator().manual_seed(3)
    sw, ss, tw, ts = (torch.randn(64, 100, generator=g, dtype=torch.float64) for _ in range(4))
    tw[:40, 0] += 25.0
    y = torch.randint(0, 100, (64,), generator=g)
    want, sample_share, _ = authors_code_reference(sw, ss, tw, ts)
    assert sample_share == 1.0
    check_authors_code(sw, ss, tw, ts, y, want)


def test_authors_code_shares_by_hand_and_with_ties():
    from btkd.losses.mlkd import median_confidence_shares

    # top probabilities 0.9, 0.6, 0.5, 0.4 (median 0.55: two of four at most it); class sums 1.5, 1.2, 1.3
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.2, 0.3, 0.5], [0.2, 0.4, 0.4]], dtype=torch.float64)
    sample_share, class_share = median_confidence_shares(probs.log())
    assert float(sample_share) == pytest.approx(0.5) and float(class_share) == pytest.approx(2 / 3)
    # all rows alike: every sample and every class is at its median
    same = torch.zeros(5, 4, dtype=torch.float64)
    assert [float(v) for v in median_confidence_shares(same)] == [1.0, 1.0]


def test_authors_code_under_btkd_each_term_keeps_its_views_split():
    # weak view: the teacher is right on every sample; strong view: wrong on every sample. The strong
    # view's loss at temperatures 2 and 6 reads the weak view, so it lands in the right part.
    t_weak = torch.tensor([[4.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    t_strong = torch.tensor([[0.0, 4.0, 1.0], [3.0, 0.0, 1.0], [1.0, 5.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    g = torch.Generator().manual_seed(8)
    sw, ss = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = BTKD(MLKD(authors_code=True))([sw, ss], [t_weak, t_strong], y, epoch=3, epochs=10)
    swapped = t_strong.clone()
    for i, label in enumerate(y.tolist()):
        top = int(t_strong[i].argmax())
        swapped[i, label], swapped[i, top] = t_strong[i, top], t_strong[i, label]
    weak_terms = authors_code_reference(sw, torch.zeros_like(ss), t_weak, torch.zeros_like(ss))[0]
    # the reference's strong view at zero logits is 0, so weak_terms is the weak view's share alone
    assert float(out["distill_right"]) == pytest.approx(weak_terms, rel=1e-10)
    strong_only = sum(tau**2 * float((torch.softmax(swapped / tau, 1) * (torch.log_softmax(swapped / tau, 1)
                                      - torch.log_softmax(ss / tau, 1))).sum(1).mean()) for tau in (3.0, 4.0, 5.0))
    assert float(out["distill_rectified"]) == pytest.approx(strong_only, rel=1e-10)


def test_authors_code_refuses_settings_their_code_does_not_have():
    with pytest.raises(ValueError, match="temperatures are \\[2.0, 3.0, 4.0, 5.0, 6.0\\].*leave taus"):
        MLKD(taus=(1.0, 2.0), authors_code=True)
    with pytest.raises(ValueError, match="relation_views at 'weak'"):
        MLKD(relation_views="both", authors_code=True)
    with pytest.raises(ValueError, match="authors_code must be true or false"):
        MLKD(authors_code="yes")
    assert MLKD(taus=(6, 5, 4, 3, 2), authors_code=True).authors_code  # the order is free


def test_authors_code_on_one_view_is_the_weak_views_scaled_terms():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), 2 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    inst, bat, cls = reference(s, t, MLKD().taus)
    from btkd.losses.mlkd import median_confidence_shares

    share_n, share_c = (float(v) for v in median_confidence_shares(t))
    want = share_n * (inst + bat) + share_c * cls
    assert float(Distill("mlkd", authors_code=True)(s, t, y)["distill"]) == pytest.approx(want, rel=1e-10)


def test_relation_terms_stay_float32_inside_a_cpu_autocast_block():
    # A user's loop may compute the loss inside torch.autocast("cpu"): the Gram products went bf16 there
    # (0.3% off on this batch), the precision the float64 product on a GPU is there to avoid.
    torch.manual_seed(0)
    s = 2 * torch.randn(64, 100)
    t, y, whole = s + 0.5 * torch.randn(64, 100), torch.randint(0, 100, (64,)), torch.ones(1, 64)
    host = MLKD(instance_weight=0.0)
    want = host.parts(s, t, y, whole)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = host.parts(s, t, y, whole)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
