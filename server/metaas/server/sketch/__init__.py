"""Mergeable distributions: exact count/sum/min/max plus a relative-error sketch."""

from metaas.server.sketch.distribution import Distribution, from_samples_by_minute
from metaas.server.sketch.mapping import RELATIVE_ACCURACY
from metaas.server.sketch.sketch import Sketch

__all__ = ["RELATIVE_ACCURACY", "Distribution", "Sketch", "from_samples_by_minute"]
