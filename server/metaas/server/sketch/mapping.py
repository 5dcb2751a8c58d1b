"""The sketch's bucket mapping (the exponential histogram of OpenTelemetry and
Prometheus native histograms, at a fixed scale).

A positive value ``v`` falls in bucket ``i`` when ``BASE**i < v <= BASE**(i+1)``
with ``BASE = 2**(2**-SCALE)``. Reporting the bucket's harmonic midpoint bounds
the relative error of any quantile by ``(BASE - 1) / (BASE + 1)``: 0.54% at
scale 6.

Bucket indexing is vectorized with numpy; there is no per-sample Python loop.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SCALE: Final = 6
BASE: Final = 2.0 ** (2.0**-SCALE)
RELATIVE_ACCURACY: Final = (BASE - 1.0) / (BASE + 1.0)

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def bucket_indices(magnitudes: FloatArray) -> Int64Array:
    """Bucket index of each strictly positive magnitude."""
    return np.ceil(np.log2(magnitudes) * float(1 << SCALE)).astype(np.int64) - 1


def bucket_value(index: int) -> float:
    """The value reported for a bucket: its harmonic midpoint."""
    lower = BASE**index
    return 2.0 * lower * BASE / (1.0 + BASE)


def bucket_values(indices: Int64Array) -> FloatArray:
    """``bucket_value`` of each index."""
    return np.power(BASE, indices.astype(np.float64)) * (2.0 * BASE / (1.0 + BASE))
