"""The one mean ± standard deviation every benchmark reports over seeds.

Policy: ``None`` and non-finite values (NaN, +inf, -inf) are *dropped* — a seed that did not produce the
number (a run that never reached a target, a diverged loss, a speedup of a zero-cost method) is not a
sample — and ``n`` says how many values remained. The mean is the arithmetic mean; the standard deviation
is the sample one (n - 1 in the denominator), 0.0 for a single value; both are None when no value remains.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable


def finite_values(values: Iterable[float | int | None]) -> list[float]:
    """The values that count as samples under the policy above, as floats (bools are rejected)."""
    out: list[float] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"mean_std takes numbers or None, got {v!r} ({type(v).__name__})")
        if math.isfinite(v):
            out.append(float(v))
    return out


def mean_std(values: Iterable[float | int | None]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` over the finite, non-None values (see the module docstring)."""
    vals = finite_values(values)
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}
