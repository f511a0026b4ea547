import itertools

import numpy as np

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
