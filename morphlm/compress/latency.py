"""The latency harness every compression arm is timed with lives in :mod:`morphlm.train.latency` (below both
train/ and compress/ users: `morphlm eval --latency` needs it too); these names are re-exported for the
compression modules and benchmarks that import them from here."""

from ..train.latency import example_batch, measure_latency, time_callable, torch_threads

__all__ = ["example_batch", "measure_latency", "time_callable", "torch_threads"]
