"""The split and the rectifiers: hand-computed cases and properties on random input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from btkd import rectify, rectify_reweight, rectify_swap, teacher_right


def batch(seed, n, c, scale, ties):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    if ties:  # coarse values make equal logits (and argmax ties) common
        logits = logits.round()
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, labels


batches = st.builds(batch, st.integers(0, 2**31 - 1), st.integers(1, 16), st.integers(2, 12),
                    st.floats(0.01, 50.0), st.booleans())


def test_teacher_right_hand_case():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 0, 2])
    # right; wrong (top 1); the label tied for the top, whichever of the tied classes it is: right
    # (argmax would call the third row wrong and the fourth right); the tie is above the label: wrong
    assert teacher_right(logits, labels).tolist() == [True, False, True, True, False]
    assert (logits.argmax(1) == labels).tolist() == [True, False, False, True, False]


@settings(max_examples=200, deadline=None)
@given(batches, st.integers(0, 2**31 - 1))
def test_teacher_right_does_not_depend_on_the_order_of_the_classes(b, seed):
    logits, labels = b
    order = torch.randperm(logits.shape[1], generator=torch.Generator().manual_seed(seed))
    inverse = order.argsort()
    assert torch.equal(teacher_right(logits[:, order], inverse[labels]), teacher_right(logits, labels))
    # and it agrees with argmax wherever the top is unique
    top2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    unique = top2[:, 0] > top2[:, -1] if logits.shape[1] > 1 else torch.ones(len(logits), dtype=torch.bool)
    assert torch.equal(teacher_right(logits, labels)[unique], (logits.argmax(1) == labels)[unique])


def test_a_tied_label_is_left_alone_by_both_rectifiers():
    logits = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    labels = torch.tensor([1, 2])
    swapped = rectify_swap(logits, labels)
    assert swapped[0].tolist() == [2.0, 2.0, 0.0]  # tied: nothing to repair
    assert swapped[1].tolist() == [0.0, 2.0, 2.0]  # wrong: the label joins the top
    probs = torch.softmax(logits, dim=1)
    reweighted = rectify_reweight(probs, labels)
    assert torch.equal(reweighted[0], probs[0])
    assert reweighted[1, 2] >= reweighted[1].max() and not torch.equal(reweighted[1], probs[1])


def test_swap_hand_case():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0])
    out = rectify_swap(logits, labels)
    assert out.tolist() == [[3.0, 1.0, 2.0], [5.0, 1.0, 0.0]]
    assert logits.tolist() == [[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]], "input must not be modified"


def test_reweight_hand_case():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 0])
    out = rectify_reweight(probs, labels)
    # a = 0.2, b = 0.5, s = 0.7, a' = 0.6, b' = 0.25: p[y] = 0.7 * 0.6 / 0.85, p[k] = 0.7 * 0.25 / 0.85
    expected = [[0.7 * 0.6 / 0.85, 0.7 * 0.25 / 0.85, 0.3], [0.6, 0.3, 0.1]]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-7)


def test_reweight_falls_back_to_swap_when_a_third_class_still_wins():
    probs = torch.tensor([[0.02, 0.38, 0.31, 0.29]])
    out = rectify_reweight(probs, torch.tensor([0]))
    # pair step: s = 0.4, a' = 0.51, b' = 0.19 -> p[0] = 0.4*0.51/0.7 = 0.29143 < p[2] = 0.31,
    # so the label exchanges with class 2
    expected = torch.tensor([[0.31, 0.4 * 0.19 / 0.7, 0.4 * 0.51 / 0.7, 0.29]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_rectify_dispatch_and_unknown_name():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    labels = torch.tensor([0])
    assert torch.equal(rectify(logits, labels, "swap"), rectify_swap(logits, labels))
    assert torch.equal(rectify(logits, labels, "none"), logits)
    probs = rectify(logits, labels, "reweight", tau=2.0)
    torch.testing.assert_close(probs, rectify_reweight(torch.softmax(logits / 2, 1), labels))
    with pytest.raises(ValueError, match=r"rectify='swp'.*\['swap', 'reweight', 'none'\].*'swap'"):
        rectify(logits, labels, "swp")


@settings(max_examples=200, deadline=None)
@given(batches)
def test_swap_properties(b):
    logits, labels = b
    out = rectify_swap(logits, labels)
    right = teacher_right(logits, labels)
    label_value = out.gather(1, labels[:, None]).squeeze(1)
    # every row (right or wrong) ends with the label holding the row's top value
    assert torch.equal(label_value, out.max(dim=1).values)
    # right rows are untouched
    assert torch.equal(out[right], logits[right])
    # a swap is a permutation of the row: no logit value is lost
    assert torch.equal(out.sort(dim=1).values, logits.sort(dim=1).values)
    # at most two entries per row change
    assert int((out != logits).sum(dim=1).max()) <= 2


@settings(max_examples=200, deadline=None)
@given(batches, st.floats(0.5, 8.0))
def test_reweight_properties(b, tau):
    logits, labels = b
    probs = torch.softmax(logits / tau, dim=1)
    out = rectify_reweight(probs, labels)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(len(out)), rtol=0, atol=1e-6)
    assert bool((out >= 0).all())
    assert torch.equal(out.gather(1, labels[:, None]).squeeze(1), out.max(dim=1).values)
    right = teacher_right(probs, labels)
    assert torch.equal(out[right], probs[right])
    # mass only moves between the label and the classes that beat it
    wrong = ~right
    if wrong.any():
        assert bool((out[wrong].gather(1, labels[wrong][:, None]) >= probs[wrong].gather(1, labels[wrong][:, None])).all())


def test_swap_is_differentiable_wrt_its_input():
    logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    out = rectify_swap(logits, torch.tensor([0]))
    (out * torch.tensor([[1.0, 10.0, 100.0]])).sum().backward()
    # out[0] is logits[1] and out[1] is logits[0]
    assert logits.grad.tolist() == [[10.0, 1.0, 100.0]]
    assert math.isfinite(float(logits.grad.sum()))


def test_reweight_keeps_float64_and_computes_half_inputs_in_float32():
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    probs = rectify(logits, torch.tensor([1]), "reweight")
    assert probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(1, dtype=torch.float64), rtol=0, atol=1e-15)
    assert rectify(logits.bfloat16(), torch.tensor([1]), "reweight").dtype == torch.float32


def test_reweight_takes_the_splits_decision_and_moves_mass_from_the_strongest_other_class():
    # two logits one ulp apart can round to equal probabilities: the split (on logits) says wrong
    probs = torch.tensor([[0.4, 0.4, 0.2]])
    out = rectify_reweight(probs, torch.tensor([0]), wrong=torch.tensor([True]))
    # k is class 1 (not the label itself, the first of the tied): s = 0.8, a' = 0.7, b' = 0.2
    torch.testing.assert_close(out, torch.tensor([[0.8 * 0.7 / 0.9, 0.8 * 0.2 / 0.9, 0.2]]), rtol=0, atol=1e-7)
    assert torch.equal(rectify_reweight(probs, torch.tensor([0]), wrong=torch.tensor([False])), probs)
    assert torch.equal(rectify_reweight(probs, torch.tensor([0])), probs)  # alone: a tie is right
    logits = torch.tensor([[1.0, 3.0, 2.0], [3.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(rectify(logits, labels, "reweight"),  # the split's mask by default
                               rectify_reweight(torch.softmax(logits, 1), labels, ~teacher_right(logits, labels)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_split_and_rectifiers_take_labels_of_any_integer_dtype(dtype):
    # BTKD and the label check take any integer dtype; gather and scatter refused a uint8 or int16 index
    logits, labels = batch(3, 6, 5, 2.0, ties=False)
    probs = torch.softmax(logits, dim=1)
    small = labels.to(dtype)
    assert torch.equal(teacher_right(logits, small), teacher_right(logits, labels))
    assert torch.equal(rectify_swap(logits, small), rectify_swap(logits, labels))
    assert torch.equal(rectify_reweight(probs, small), rectify_reweight(probs, labels))
    assert torch.equal(rectify(logits, small, "reweight", tau=2.0), rectify(logits, labels, "reweight", tau=2.0))
