"""The statistics of rliable (Agarwal et al. 2021) the controller's evaluation reports: the mean
and the interquartile mean (IQM) of paired gains with 95% stratified-bootstrap intervals, and the
probability of improvement.

Why not ``rliable`` itself: its 1.2.0 release (the latest) runs on ``arch``'s bootstrap, and no
``arch`` works beside this environment's pandas 3: ``arch`` 7 fails at import (a pandas
``deprecate_kwarg`` signature), ``arch`` 8 refuses rliable's ``random_state`` keyword. What we need
of it is a few lines of NumPy, written here to its definitions (tests check them against
hand-computed cases): tasks are strata (a dataset at a sampling rate); a bootstrap replicate
resamples each task's runs with replacement, independently; intervals are percentile intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

Scores = Mapping[Hashable, Sequence[float]]  # task -> one score per run (seed)


def iqm(values: np.ndarray) -> float:
    """The interquartile mean: the mean of the middle 50% of the values (rliable's
    ``aggregate_iqm``: ``scipy.stats.trim_mean(x, 0.25)`` over all runs of all tasks)."""
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    cut = int(len(values) * 0.25)  # trim_mean's count: the same number from each end
    return float(values[cut : len(values) - cut].mean())


def mean(values: np.ndarray) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def stratified_bootstrap(
    scores: Scores,
    statistic: Callable[[np.ndarray], float],
    reps: int = 20000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``statistic`` over all runs of all tasks, and its percentile interval from ``reps``
    replicates that resample each task's runs with replacement (tasks are strata)."""
    point, low, high = _stratified(
        scores, lambda tasks: statistic(np.concatenate(tasks)), reps, confidence, seed
    )
    return point, float(low), float(high)


def _stratified(
    scores: Scores,
    statistic: Callable[[list[np.ndarray]], Any],
    reps: int,
    confidence: float,
    seed: int,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """``statistic`` of the tasks' runs, and the percentile band of its values (a number or an
    array) over ``reps`` replicates that resample each task's runs with replacement, task by task
    in order, from one generator seeded ``seed``."""
    tasks = [np.asarray(v, dtype=np.float64) for v in scores.values()]
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("every task needs at least one run")
    rng = np.random.default_rng(seed)
    replicates = np.stack(
        [np.asarray(statistic([t[rng.integers(0, len(t), len(t))] for t in tasks])) for _ in range(reps)]
    )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail], axis=0)
    return statistic(tasks), low, high


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """P(X > Y) averaged over tasks (rliable's ``probability_of_improvement``): per task, the
    Mann-Whitney statistic over all pairs of X's and Y's runs (a tie counts a half)."""
    if set(x) != set(y):
        raise ValueError(f"both need the same tasks: {sorted(set(x) ^ set(y))} differ")
    per_task = []
    for task in x:
        a, b = np.asarray(x[task], dtype=np.float64), np.asarray(y[task], dtype=np.float64)
        greater = (a[:, None] > b[None, :]).mean()
        ties = (a[:, None] == b[None, :]).mean()
        per_task.append(greater + 0.5 * ties)
    return float(np.mean(per_task))


def performance_profile(
    scores: Scores, taus: Sequence[float], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rliable's performance profile (its run-score distribution): for each threshold ``tau``, the
    fraction of runs scoring above it, each task weighing the same (the mean of the per-task
    fractions); with a percentile band from replicates that resample each task's runs (strata).
    Returns (fractions, low, high), one value per ``tau``."""
    thresholds = np.asarray(taus, dtype=np.float64)

    def profile(tasks: list[np.ndarray]) -> np.ndarray:
        return np.mean([(t[:, None] > thresholds[None, :]).mean(axis=0) for t in tasks], axis=0)

    return _stratified(scores, profile, reps, confidence, seed)


def signal_and_noise(gains: np.ndarray) -> tuple[float, float]:
    """For a candidates x instances matrix of paired gains (every candidate on the same instances):
    the spread of the candidates' mean gains (their standard deviation), and the noise in one such
    mean, the residual of the additive model gain = candidate + instance (two-way ANOVA without
    replication) over the square root of the instances. Where the noise is as large as the spread,
    ranking candidates by their means is mostly ranking the noise."""
    gains = np.asarray(gains, dtype=np.float64)
    rows, cols = gains.shape
    if rows < 2 or cols < 2:
        raise ValueError(f"signal_and_noise needs at least 2 candidates and 2 instances, got {gains.shape}")
    residual = gains - gains.mean(axis=0) - gains.mean(axis=1, keepdims=True) + gains.mean()
    noise = float(np.sqrt((residual**2).sum() / ((rows - 1) * (cols - 1)) / cols))
    return float(gains.mean(axis=1).std(ddof=1)), noise


class CandidateEffect(NamedTuple):
    """What :func:`candidate_effect` reads from a candidates x instances matrix of paired gains."""

    spread: float  # the candidates' mean gains' standard deviation
    noise: float  # the noise in one such mean (:func:`signal_and_noise`)
    true_spread: float  # the spread less the noise's part
    p: float  # the F-test's p-value that the candidates differ at all


def candidate_effect(gains: np.ndarray) -> CandidateEffect:
    """For the matrix :func:`signal_and_noise` reads: its spread and noise, the estimated spread of
    the candidates' true mean gains (the observed means' variance is the true one plus the noise's:
    ``sqrt(max(spread**2 - noise**2, 0))``), and the p-value of the two-way ANOVA's F-test that the
    candidates differ at all (F = spread**2 / noise**2 on (candidates - 1, (candidates - 1) x
    (instances - 1)) degrees of freedom). A large p says this generation's ranking is noise."""
    from scipy.stats import f

    rows, cols = np.shape(gains)
    spread, noise = signal_and_noise(gains)
    true_spread = float(np.sqrt(max(spread**2 - noise**2, 0.0)))
    if noise == 0.0:  # an exactly additive matrix: any spread is real
        return CandidateEffect(spread, noise, true_spread, 0.0 if spread > 0 else 1.0)
    return CandidateEffect(
        spread, noise, true_spread, float(f.sf(spread**2 / noise**2, rows - 1, (rows - 1) * (cols - 1)))
    )
