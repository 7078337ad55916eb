"""lib.stats: per-seed arms and the t-interval of a difference (paired, Welch, fixed limit)."""
import math

import numpy as np
import pytest
from scipy import stats as st

from lib import stats
from lib.stats import Arm, difference


def test_arm_mean_sd_and_text():
    a = Arm("L1", (1.0, 2.0, 3.0))
    assert a.n == 3 and a.mean == 2.0 and a.sd == pytest.approx(1.0)
    assert Arm("x", (5.0,)).sd is None
    assert "± 1.000 (3 seeds)" in a.text() and "(1 seed)" in Arm("x", (5.0,)).text()
    with pytest.raises(ValueError, match="no values"):
        Arm("empty", ())


def test_paired_interval_uses_the_per_seed_differences_and_n_minus_1_df():
    a, b = Arm("a", (1.0, 2.0, 4.0), (0, 1, 2)), Arm("b", (2.0, 2.5, 5.5), (0, 1, 2))
    d = difference(a, b, "lower")
    diffs = np.array([1.0, 0.5, 1.5])  # b - a: a is lower, so the gain is positive
    half = st.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert d.method == "paired t" and d.df == 2
    assert d.gain == pytest.approx(1.0) and d.lo == pytest.approx(1.0 - half) and d.hi == pytest.approx(1.0 + half)


def test_pairing_removes_a_shared_seed_effect_that_welch_cannot():
    base = np.array([10.0, 20.0, 30.0])  # a large seed effect shared by both arms
    a, b = Arm("a", base, (0, 1, 2)), Arm("b", base + 1.0 + np.array([0.0, 0.1, -0.1]), (0, 1, 2))
    paired = difference(a, b, "lower")
    welch = difference(Arm("a", base), Arm("b", b.values), "lower")
    assert paired.lo > 0, "the paired interval sees the consistent 1.0 gap"
    assert welch.method == "Welch t" and welch.lo < 0, "unpaired, the seed effect swamps it"


def test_welch_df_matches_the_satterthwaite_formula():
    a, b = Arm("a", (1.0, 2.0, 3.0)), Arm("b", (0.0, 4.0, 8.0, 12.0))
    va, vb = 1.0 / 3, np.var([0, 4, 8, 12], ddof=1) / 4
    d = difference(a, b, "higher")
    assert d.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3))
    assert d.gain == pytest.approx(2.0 - 6.0)


def test_a_fixed_limit_counts_only_the_arms_spread():
    a = Arm("vae", (20.0, 21.0, 22.0))
    d = difference(a, Arm("input", (15.0,)), "higher", limit=True)
    assert d.method.startswith("fixed limit") and d.df == 2
    assert d.gain == pytest.approx(6.0) and d.lo == pytest.approx(6.0 - st.t.ppf(0.975, 2) * 1 / math.sqrt(3))


def test_one_seed_gives_no_interval():
    d = difference(Arm("a", (1.0,)), Arm("b", (2.0, 3.0)), "lower")
    assert d.lo is None and d.hi is None and d.method == "no interval" and d.gain == pytest.approx(1.5)


def test_equal_seed_numbers_are_not_paired_when_told_so():
    a, b = Arm("gan", (1.0, 2.0, 4.0), (0, 1, 2)), Arm("vae", (2.0, 2.5, 5.5), (0, 1, 2))
    assert difference(a, b, "lower").method == "paired t"
    unpaired = difference(a, b, "lower", paired=False)
    welch = difference(Arm("gan", a.values), Arm("vae", b.values), "lower")
    assert unpaired.method == "Welch t" and (unpaired.lo, unpaired.hi, unpaired.df) == (welch.lo, welch.hi, welch.df)


def test_borrowed_interval_is_the_t_interval_of_the_borrowed_sd():
    lo, hi = stats.borrowed_interval(1.0, sd=0.5, df=2, n_a=1, n_b=3, factor=1.5, confidence=0.99)
    half = st.t.ppf(0.995, 2) * 0.5 * math.sqrt(1 + 1.5 ** 2 / 3)
    assert (lo, hi) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    lo, hi = stats.borrowed_interval(-2.0, sd=0.5, df=1, n_a=1)  # b exact: only a's term; 1 df: t = 12.7
    assert (lo, hi) == (pytest.approx(-2.0 - 12.7062 * 0.5, rel=1e-4), pytest.approx(-2.0 + 12.7062 * 0.5, rel=1e-4))


def test_higher_confidence_widens_the_interval():
    a, b = Arm("a", (1.0, 2.0, 4.0)), Arm("b", (3.0, 5.0, 6.0))
    assert difference(a, b, "lower", 0.99).lo < difference(a, b, "lower", 0.95).lo


def test_difference_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="better="):
        difference(Arm("a", (1.0,)), Arm("b", (2.0,)), "smaller")


def test_arm_reads_seeds_from_score_dicts():
    a = stats.arm("BCE", [{"fid": 1.0, "seed": 0}, {"fid": 3.0, "seed": 1}], "fid")
    assert a.values == (1.0, 3.0) and a.seeds == (0, 1)
    assert stats.arm("x", [{"fid": 1.0}], "fid").seeds == ()


def test_bootstrap_se_of_a_mean_matches_the_formula():
    x = np.random.default_rng(1).normal(0, 2, 2000)
    se = stats.bootstrap_se(lambda idx: x[idx].mean(), len(x), rounds=300)
    assert se == pytest.approx(2 / math.sqrt(2000), rel=0.15)


def test_mean_sd_text():
    assert stats.mean_sd([1.0]) == "1.00"
    assert stats.mean_sd([1.0, 3.0]) == "2.00 ± 1.41"
