import itertools

import numpy as np
import pytest

from equivar.metrics import accuracy, consistency, mean_std


def test_accuracy_over_last_axis():
    preds = np.array([[0, 1, 2, 2], [0, 0, 0, 0]])
    assert accuracy(preds, np.array([0, 1, 2, 0])).tolist() == [0.75, 0.5]


def test_consistency_is_the_expected_agreement_over_all_shift_pairs():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 3, size=(5, 40))
    pairs = [np.mean(preds[a] == preds[b]) for a, b in itertools.product(range(5), repeat=2)]
    assert np.isclose(consistency(preds, 3), np.mean(pairs))


def test_consistency_bounds():
    assert consistency(np.tile(np.arange(6) % 4, (9, 1)), 4) == 1.0
    # each shift predicts a different class: agreement only when both draws pick the same shift
    preds = np.repeat(np.arange(4)[:, None], 10, axis=1)
    assert np.isclose(consistency(preds, 4), 1 / 4)


def test_mean_std_over_seeds():
    out = mean_std([[1.0, 2.0], [3.0, 2.0]])
    assert out["mean"] == [2.0, 2.0]
    assert np.allclose(out["std"], [np.sqrt(2), 0.0])
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}


def test_accuracy_of_seed_and_shift_stacks_is_over_examples():
    labels = np.array([0, 1, 2, 0])
    preds = np.array([[[0, 1, 2, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
                      [[2, 2, 2, 2], [0, 1, 0, 0], [0, 1, 2, 1]]])  # (seeds=2, shifts=3, examples=4)
    np.testing.assert_array_equal(accuracy(preds, labels), [[1.0, 0.5, 0.25], [0.25, 0.75, 0.75]])


def test_mean_std_of_vectors_counts_seeds_and_keeps_shapes():
    one = mean_std([[1.0, 2.0, 3.0]])  # one seed of three values: zero spread per value
    assert one == {"mean": [1.0, 2.0, 3.0], "std": [0.0, 0.0, 0.0], "n": 1}
    three = mean_std(np.arange(12).reshape(3, 4))
    assert three["n"] == 3 and len(three["mean"]) == len(three["std"]) == 4
    assert mean_std([0.5, 0.7])["n"] == 2


def test_mean_std_sums_in_float64():
    values = np.float32([0.1, 0.2])
    assert mean_std(values)["mean"] == float(np.float64(values).mean())


def test_consistency_split_by_correctness_by_hand():
    from equivar.metrics import consistency_by_correctness

    # 3 inputs x 2 shifts; input 0 right and stable, input 1 right but flips, input 2 wrong and stable
    predictions = np.array([[0, 1, 2], [0, 2, 2]])
    reference, labels = np.array([0, 1, 2]), np.array([0, 1, 0])
    right, wrong = consistency_by_correctness(predictions, reference, labels, n_classes=3)
    assert right == pytest.approx((1.0 + 0.5) / 2)  # input 1: shares (1/2, 1/2) -> 1/4 + 1/4
    assert wrong == pytest.approx(1.0)
    _, none = consistency_by_correctness(predictions, reference, reference, n_classes=3)
    assert np.isnan(none)  # no wrong input: no number, not a 1


def test_worst_case_robustness_by_hand():
    from equivar.metrics import worst_case_robustness

    offsets = np.array([[0.0], [0.5], [-0.5], [1.0], [-1.0]])
    labels = np.array([1, 1, 1, 1])
    predictions = np.array([[1, 1, 1, 0],    # 0
                            [1, 1, 0, 0],    # +0.5
                            [1, 1, 1, 0],    # -0.5
                            [1, 0, 1, 0],    # +1
                            [1, 1, 1, 0]])   # -1
    np.testing.assert_allclose(worst_case_robustness(predictions, offsets, labels, [0, 0.5, 1]), [0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="no shift of the grid lies within radius"):
        worst_case_robustness(predictions, offsets + 3, labels, [0])


def test_probability_change_by_hand():
    from equivar.metrics import probability_change

    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])  # predicted classes 0 and 2
    shifted = np.array([[[0.5, 0.4, 0.1], [0.1, 0.3, 0.6]],     # |0.5-0.7|, 0
                        [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]])    # 0, |0.1-0.6| (the argmax flipped)
    assert probability_change(shifted, reference) == pytest.approx((0.2 + 0 + 0 + 0.5) / 4)
    assert probability_change(np.stack([reference] * 3), reference) == 0.0
