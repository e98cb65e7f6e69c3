"""Paired confidence intervals (ood_core.stats) against scipy and hand-computed cases."""
import numpy as np
import pytest
from scipy import stats as sps

from ood_core.stats import paired_difference_ci


def test_t_interval_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.02, 25)
    b = a - rng.normal(0.01, 0.01, 25)
    ci = paired_difference_ci(a, b)
    ref = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert ci.n == 25 and ci.method == "t"
    assert ci.mean == pytest.approx(np.mean(a - b))
    assert ci.low == pytest.approx(ref.low) and ci.high == pytest.approx(ref.high)


def test_hand_computed_three_pairs():
    # d = (2, 2.5, 3): mean 2.5, sd 0.5, t_{2, 0.975} = 4.302653, half = 0.5 * 4.302653 / sqrt(3) = 1.2421
    ci = paired_difference_ci([3, 4.5, 6], [1, 2, 3])
    assert ci.mean == pytest.approx(2.5)
    assert ci.high - ci.mean == pytest.approx(0.5 * 4.302653 / np.sqrt(3), rel=1e-5)
    assert ci.low == pytest.approx(2.5 - 1.2421, abs=1e-4)
    assert ci.holds("greater") is True and ci.holds("less") is False


def test_interval_straddling_zero_holds_in_neither_direction():
    ci = paired_difference_ci([1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5])
    assert ci.low < 0 < ci.high
    assert ci.holds("greater") is False and ci.holds("less") is False


def test_bootstrap_close_to_t_for_normal_data_and_seeded():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 400)
    t = paired_difference_ci(d, np.zeros_like(d))
    b1 = paired_difference_ci(d, np.zeros_like(d), method="bootstrap")
    b2 = paired_difference_ci(d, np.zeros_like(d), method="bootstrap")
    assert b1 == b2
    assert b1.low == pytest.approx(t.low, abs=0.02) and b1.high == pytest.approx(t.high, abs=0.02)


def test_too_few_pairs_gives_no_verdict_and_bad_input_is_refused():
    ci = paired_difference_ci([1.0], [0.0])
    assert ci.holds("greater") is None
    with pytest.raises(ValueError, match="same length"):
        paired_difference_ci([1, 2], [1])
    with pytest.raises(ValueError, match="direction"):
        paired_difference_ci([1, 2], [0, 0]).holds("up")
