"""The uncertainty behind a verdict: per-seed values, their spread, and the rule that turns a
difference into kept / refuted / undecided.

An ``Arm`` is one setting of a comparison (say the L1 model) with one value per training seed and,
where the value is estimated from samples, its sampling standard error. ``compare(a, b, better)``
asks "is a better than b?" and answers True, False or None (undecided) by a rule fixed here, before
any number is seen:

* the difference must clear ``MARGIN`` standard errors, where the standard error combines the
  training-seed spread of both arms (each arm's own SD, or a pooled SD) and their sampling errors;
* a comparison decided by less than ``CLEAR_SDS`` pooled seed SDs needs ``SEEDS_NEEDED`` seeds on
  both sides; an arm with fewer may borrow the pooled SD of a comparable arm only when the gap is
  wider than that;
* with no seed spread at all (one seed everywhere, nothing to borrow) nothing is decided.

The comparisons are unpaired (conservative) even where the arms share initial weights and batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MARGIN = 2.0        # standard errors a difference must clear to count
CLEAR_SDS = 5.0     # a gap of this many pooled seed SDs is decided even by one seed per arm
SEEDS_NEEDED = 3    # seeds per arm for a gap smaller than CLEAR_SDS seed SDs


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a name, one value per training seed, and the sampling SE of a value."""

    name: str
    values: tuple[float, ...]
    sampling_se: float = 0.0

    def __post_init__(self):
        if not self.values:
            raise ValueError(f"arm {self.name!r} has no values")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float | None:
        """Sample SD across seeds (ddof 1); None with one seed."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

    def text(self, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.name} {self.values[0]:.{digits}f} (1 seed)"
        return f"{self.name} {self.mean:.{digits}f} ± {self.sd:.{digits}f} ({self.n} seeds)"


def pooled_sd(arms: Sequence[Arm]) -> tuple[float | None, int]:
    """Pooled within-arm seed SD over the arms with two or more seeds, and its degrees of freedom."""
    ss = sum((a.n - 1) * a.sd ** 2 for a in arms if a.n >= 2)
    df = sum(a.n - 1 for a in arms if a.n >= 2)
    return (math.sqrt(ss / df), df) if df else (None, 0)


@dataclass
class Comparison:
    """Is ``a`` better than ``b``? ``gain`` > 0 means it is (by the metric's direction)."""

    a: Arm
    b: Arm
    better: str
    gain: float
    se: float | None
    seed_sd: float | None
    decided: bool | None
    why: str
    limit: bool = False  # b is a fixed limit (``within``), not a measured arm

    def text(self, digits: int = 3) -> str:
        """'A m ± sd (n seeds) vs B …: A − B = +d ± se (SE), z SE ✓' — the numbers a reader checks the label by."""
        se = f" ± {self.se:.{digits}f} (SE)" if self.se is not None else ""
        diff = self.a.mean - self.b.mean
        other = f"the limit {self.b.mean:.{digits}f}" if self.limit else self.b.text(digits)
        name = "limit" if self.limit else self.b.name
        return (f"{self.a.text(digits)} vs {other}: {self.a.name} − {name} = "
                f"{diff:+.{digits}f}{se}, {self.better} is better; {self.why}")


def _seed_sd(arm: Arm, pooled: float | None) -> float | None:
    """The seed SD used for ``arm``: the pooled one where given (more degrees of freedom), else its own."""
    return pooled if pooled is not None else arm.sd


def compare(a: Arm, b: Arm, better: str, pooled: float | None = None, margin: float = MARGIN) -> Comparison:
    """True when a beats b by more than ``margin`` SEs, False when b beats a by as much, None otherwise
    (or when the seed rule above cannot be met). ``better``: 'lower' or 'higher' values are better."""
    return _judge(a, b, better, pooled, margin)


def within(a: Arm, limit: float, better: str, pooled: float | None = None, margin: float = MARGIN) -> Comparison:
    """Is arm ``a`` on the good side of a fixed ``limit`` (e.g. FID below 1.5 × the clean model's)?
    The limit is taken as exact (no spread, never short of seeds); otherwise the same rule as ``compare``."""
    return _judge(a, Arm("limit", (limit,)), better, pooled, margin, limit=True)


def _judge(a: Arm, b: Arm, better: str, pooled: float | None, margin: float, limit: bool = False) -> Comparison:
    if better not in ("lower", "higher"):
        raise ValueError(f"better={better!r}; allowed 'lower' or 'higher'")
    gain = (b.mean - a.mean) if better == "lower" else (a.mean - b.mean)
    sides = (a,) if limit else (a, b)
    sds = [_seed_sd(arm, pooled) for arm in sides]
    if any(sd is None for sd in sds):
        return Comparison(a, b, better, gain, None, None, None,
                          "undecided: no training-seed spread to judge the difference by", limit)
    var = sum(sd ** 2 / arm.n for sd, arm in zip(sds, sides))
    # a seed's value already carries its sampling noise when several seeds are pooled; an arm judged by
    # a borrowed SD adds its own sampling error on top
    var += sum(arm.sampling_se ** 2 for arm in sides if arm.n == 1)
    se, seed_sd = math.sqrt(var), max(sds)
    if min(arm.n for arm in sides) < SEEDS_NEEDED and abs(gain) < CLEAR_SDS * seed_sd:
        return Comparison(a, b, better, gain, se, seed_sd, None,
                          f"undecided: the gap is under {CLEAR_SDS:g} seed SDs ({seed_sd:.3g}), which needs "
                          f"{SEEDS_NEEDED} seeds per arm", limit)
    z = gain / se if se > 0 else math.copysign(math.inf, gain) if gain else 0.0
    if z >= margin:
        return Comparison(a, b, better, gain, se, seed_sd, True, f"{z:.1f} SE ✓", limit)
    if z <= -margin:
        return Comparison(a, b, better, gain, se, seed_sd, False, f"{z:.1f} SE ✗ (the other way)", limit)
    return Comparison(a, b, better, gain, se, seed_sd, None, f"undecided: {z:.1f} SE, under {margin:g}", limit)


def bootstrap_se(statistic: Callable[[np.ndarray], float], n: int, rounds: int = 50, seed: int = 0) -> float:
    """Bootstrap SE of ``statistic(indices)`` over ``rounds`` resamples (with replacement) of range(n)."""
    rng = np.random.default_rng(seed)
    vals = [statistic(rng.integers(0, n, n)) for _ in range(rounds)]
    return float(np.std(vals, ddof=1))


def arm(name: str, scores: Sequence[dict], key: str, se_key: str | None = None) -> Arm:
    """The Arm of metric ``key`` over per-seed score dicts; ``se_key``: their sampling SE (mean over seeds)."""
    se = float(np.mean([s[se_key] for s in scores])) if se_key else 0.0
    return Arm(name, tuple(s[key] for s in scores), se)


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    """'m ± sd (n)' for several seeds, the value alone for one."""
    v = [float(x) for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for prose, or '—' where there is none (a seed SD with one seed)."""
    return "—" if value is None else f"{value:.{digits}f}"
