"""Mergeable distributions: exact count/sum/min/max plus a relative-error sketch."""

from metaas.server.sketch.distribution import Distribution, from_samples_by_minute
from metaas.server.sketch.histogram import RELATIVE_ACCURACY, Sketch

__all__ = ["RELATIVE_ACCURACY", "Distribution", "Sketch", "from_samples_by_minute"]
