"""Is one A/B arm better than the baseline? A percentile bootstrap of the difference of means, in numpy.

CPU-heavy on big experiments (thousands of resamples of up to 50,000 samples): callers on the event loop run it in
a thread (app/core/services.py does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_SAMPLES = 10  # per arm, before a confidence interval means anything
RESAMPLES = 2000
_BOOTSTRAP_CELLS = 2_000_000  # resampled values per chunk, to bound memory on big experiments


def mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def percentile(values: np.ndarray, q: float) -> float | None:
    # numpy's default (linear interpolation between closest ranks).
    return float(np.percentile(values, q)) if values.size else None


def compare(metric: str, higher_is_better: bool, baseline: str, x: np.ndarray, name: str, y: np.ndarray,
            rng: np.random.Generator) -> dict[str, Any]:
    """Arm `name` (per-sample values `y`) against the baseline (`x`) on `metric`."""
    result: dict[str, Any] = {
        "arm": name,
        "baseline": baseline,
        "metric": metric,
        "n": int(y.size),
        "baseline_n": int(x.size),
        "mean": mean(y),
        "baseline_mean": mean(x),
        "difference": float(y.mean() - x.mean()) if x.size and y.size else None,
        "ci95": None,
        "significant": False,
        "better": None,  # True/False only when significant: otherwise the data cannot say
    }
    if min(x.size, y.size) < MIN_SAMPLES:
        result["method"] = (
            f"too few samples for a confidence interval: need {MIN_SAMPLES} per arm, "
            f"have {x.size} ({baseline}) and {y.size} ({name})"
        )
        return result
    low, high = bootstrap_ci(x, y, rng)
    significant = low > 0 or high < 0
    result.update(
        ci95=[low, high],
        significant=significant,
        better=((result["difference"] > 0) == higher_is_better) if significant else None,
        method=(
            f"difference of {'rates' if metric == 'error_rate' else 'means'} ({name} - {baseline}), "
            f"95% percentile bootstrap CI over {RESAMPLES} resamples; significant when the CI excludes 0"
        ),
    )
    return result


def bootstrap_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES means of `values` resampled with replacement, in chunks so memory stays bounded."""
    n = values.size
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    means = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, chunk):
        stop = min(RESAMPLES, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def bootstrap_ci(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(y) - mean(x), each arm resampled on its own."""
    diffs = bootstrap_means(y, rng) - bootstrap_means(x, rng)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)
