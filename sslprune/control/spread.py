"""The spread of a measurement over seeds: its mean and the standard error of that mean.

Its own module because the report tables and the findings both use it, and the report writes the
findings (a module of its own keeps that one-way: report -> findings -> spread)."""
from __future__ import annotations

import math
from typing import Optional


def mean_stderr(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and standard error of the mean over seeds; the error is undefined (None) for one seed."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else None
