"""Compression verbs over the native model: distillation (TinyBERT), layer-mapping search, Extract-then-
Distill, LightMBERT, TernaryBERT (packed 2-bit), AutoTinyBERT search. Errors are :class:`CompressionError`."""

from .errors import CompressionError
from . import packed, quantize  # noqa: E402  (importing them registers the quantized checkpoint loaders)

__all__ = ["CompressionError", "packed", "quantize"]
