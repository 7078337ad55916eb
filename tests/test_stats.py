"""lib.stats: the rule that turns per-seed values into a decided or undecided comparison."""
import math

import numpy as np
import pytest

from lib import stats
from lib.stats import Arm, compare, pooled_sd, within


def test_arm_mean_sd_and_text():
    a = Arm("L1", (1.0, 2.0, 3.0))
    assert a.n == 3 and a.mean == 2.0 and a.sd == pytest.approx(1.0)
    assert Arm("x", (5.0,)).sd is None
    assert "± 1.000 (3 seeds)" in a.text() and "(1 seed)" in Arm("x", (5.0,)).text()
    with pytest.raises(ValueError, match="no values"):
        Arm("empty", ())


def test_pooled_sd_is_the_within_arm_formula():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0, 1, 3), rng.normal(5, 1, 4), np.array([7.0])]
    sd, df = pooled_sd([Arm(str(i), tuple(g)) for i, g in enumerate(groups)])
    ss = sum(((g - g.mean()) ** 2).sum() for g in groups[:2])
    assert df == 5 and sd == pytest.approx(math.sqrt(ss / 5))
    assert pooled_sd([Arm("one", (1.0,))]) == (None, 0)


def test_clear_gap_with_three_seeds_is_decided_both_ways():
    good, bad = Arm("a", (1.0, 1.1, 0.9)), Arm("b", (2.0, 2.1, 1.9))
    assert compare(good, bad, "lower").decided is True
    assert compare(bad, good, "lower").decided is False
    assert compare(good, bad, "higher").decided is False


def test_gap_inside_two_standard_errors_is_undecided():
    a, b = Arm("a", (1.0, 1.2, 0.8)), Arm("b", (1.1, 1.3, 0.9))
    c = compare(a, b, "lower")
    assert c.decided is None and "undecided" in c.why


def test_one_seed_and_nothing_to_borrow_decides_nothing():
    c = compare(Arm("a", (1.0,)), Arm("b", (100.0,)), "lower")
    assert c.decided is None and c.se is None and "no training-seed spread" in c.why


def test_a_borrowed_sd_decides_only_gaps_wider_than_five_sds():
    # one seed per arm, pooled SD 1: a gap of 4 SDs clears 2 SE but is under the 5-SD rule
    assert compare(Arm("a", (0.0,)), Arm("b", (4.0,)), "lower", pooled=1.0).decided is None
    assert compare(Arm("a", (0.0,)), Arm("b", (6.0,)), "lower", pooled=1.0).decided is True
    # with three seeds each the same 4-SD gap is decided (SE = sqrt(2/3) < 2)
    a, b = Arm("a", (-1.0, 0.0, 1.0)), Arm("b", (3.0, 4.0, 5.0))
    assert compare(a, b, "lower").decided is True


def test_sampling_error_of_a_one_seed_arm_widens_the_interval():
    narrow = compare(Arm("a", (0.0,)), Arm("b", (6.0,)), "lower", pooled=1.0)
    wide = compare(Arm("a", (0.0,), sampling_se=3.0), Arm("b", (6.0,)), "lower", pooled=1.0)
    assert wide.se > narrow.se and wide.decided is None


def test_within_a_limit():
    assert within(Arm("x", (1.0, 1.1, 0.9)), 3.0, "lower").decided is True
    assert within(Arm("x", (5.0, 5.1, 4.9)), 3.0, "lower").decided is False
    assert within(Arm("x", (3.0, 3.1, 2.9)), 3.0, "lower").decided is None
    assert within(Arm("x", (1.0,)), 3.0, "lower").decided is None
    assert "the limit 3.000" in within(Arm("x", (1.0, 1.1, 0.9)), 3.0, "lower").text()


def test_within_follows_the_seed_rule_of_compare():
    """One seed with a borrowed SD: decided only past 5 SDs from the limit, and the limit itself adds no spread."""
    assert within(Arm("x", (1.0,)), 3.0, "lower", pooled=0.1).decided is True
    assert within(Arm("x", (2.7,)), 3.0, "lower", pooled=0.1).decided is None
    assert "5 seed SDs" in within(Arm("x", (2.7,)), 3.0, "lower", pooled=0.1).why
    three = Arm("x", (1.0, 1.2, 0.8))
    assert within(three, 3.0, "lower").se == pytest.approx(three.sd / 3 ** 0.5)
    assert within(Arm("x", (1.0,), sampling_se=2.0), 3.0, "lower", pooled=0.1).decided is None


def test_compare_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="better="):
        compare(Arm("a", (1.0,)), Arm("b", (2.0,)), "smaller")


def test_bootstrap_se_of_a_mean_matches_the_formula():
    x = np.random.default_rng(1).normal(0, 2, 2000)
    se = stats.bootstrap_se(lambda idx: x[idx].mean(), len(x), rounds=300)
    assert se == pytest.approx(2 / math.sqrt(2000), rel=0.15)


def test_mean_sd_text():
    assert stats.mean_sd([1.0]) == "1.00"
    assert stats.mean_sd([1.0, 3.0]) == "2.00 ± 1.41"
