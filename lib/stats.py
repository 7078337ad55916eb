"""The uncertainty behind a verdict: an ``Arm`` (one setting of a comparison, one value per training seed) and
``difference(a, b, better)``, the gain of ``a`` over ``b`` (> 0: ``a`` better) with a two-sided t-interval:
**paired** (df = n - 1) when both arms have the same seeds and the same kind of model (the models of one seed share
initial weights and batches), else **Welch's** (Welch-Satterthwaite df); an arm with one seed has no SD, hence no
interval: ``borrowed_interval`` gives the one a t-test would give if its spread were an SD borrowed from another
arm (``lib.claims`` borrows the largest measured for that metric)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as st


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a name and one value per training seed (``seeds``: which ones)."""

    name: str
    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(map(float, self.values)))
        object.__setattr__(self, "seeds", tuple(map(int, self.seeds)))
        if not self.values:
            raise ValueError(f"arm {self.name!r} has no values")

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


@dataclass(frozen=True)
class Difference:
    """The gain of ``a`` over ``b`` (> 0: ``a`` better) and its interval; lo/hi None without one."""

    gain: float
    lo: float | None
    hi: float | None
    df: float | None
    method: str  # "paired t", "Welch t", "fixed limit (one-sample t)" or "no interval"


def difference(a: Arm, b: Arm, better: str, confidence: float = 0.95, limit: bool = False,
               paired: bool = True) -> Difference:
    """Gain of a over b with a two-sided ``confidence`` t-interval. ``limit``: b is an exact number
    (a baseline computed once, no seed spread), so only a's spread counts. ``paired=False``: never pair, even on
    equal seed numbers (a GAN's seed s and a VAE's seed s share nothing)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better={better!r}; allowed 'lower' or 'higher'")
    sign = 1.0 if better == "higher" else -1.0
    gain = sign * (a.mean - b.mean)
    if limit or (paired and a.seeds and a.seeds == b.seeds and a.n >= 2):  # one-sample t on a (or on the paired differences)
        d = np.array(a.values) - (b.mean if limit else np.array(b.values))
        if len(d) < 2:
            return Difference(gain, None, None, None, "no interval")
        se, df = float(np.std(d, ddof=1)) / math.sqrt(len(d)), len(d) - 1
        method = "fixed limit (one-sample t)" if limit else "paired t"
    elif a.n >= 2 and b.n >= 2:
        va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1)) if va + vb > 0 else a.n + b.n - 2
        method = "Welch t"
    else:
        return Difference(gain, None, None, None, "no interval")
    half = float(st.t.ppf(0.5 + confidence / 2, df)) * se
    return Difference(gain, gain - half, gain + half, float(df), method)


def borrowed_interval(gain: float, sd: float, df: float, n_a: int, n_b: int | None = None, factor: float = 1.0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided ``confidence`` interval of a gain between arms of n_a and n_b training seeds (n_b None: b is
    exact) whose spread is unknown, taking both arms' seed SD to be ``sd``, an SD with ``df`` degrees of freedom
    measured on another arm: g -/+ t(df) * sd * sqrt(1/n_a + factor**2/n_b) (``factor`` scales b, as in 1.5 x b).
    It holds only as far as the borrowed SD is plausible for these arms; the caller says whose it is."""
    se = sd * math.sqrt(1 / n_a + (factor ** 2 / n_b if n_b else 0.0))
    half = float(st.t.ppf(0.5 + confidence / 2, df)) * se
    return gain - half, gain + half


def bootstrap_se(statistic: Callable[[np.ndarray], float], n: int, rounds: int = 50, seed: int = 0) -> float:
    """Bootstrap SE of ``statistic(indices)`` over ``rounds`` resamples (with replacement) of range(n)."""
    rng = np.random.default_rng(seed)
    vals = [statistic(rng.integers(0, n, n)) for _ in range(rounds)]
    return float(np.std(vals, ddof=1))


def arm(name: str, scores: Sequence[dict], key: str) -> Arm:
    """The Arm of metric ``key`` over per-seed score dicts (each may carry its training ``seed``)."""
    seeds = tuple(s["seed"] for s in scores) if all("seed" in s for s in scores) else ()
    return Arm(name, tuple(s[key] for s in scores), seeds)


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    """'m ± sd' for several seeds, the value alone for one."""
    a = Arm("", values)
    return f"{a.mean:.{digits}f}" if a.n == 1 else f"{a.mean:.{digits}f} ± {a.sd:.{digits}f}"
