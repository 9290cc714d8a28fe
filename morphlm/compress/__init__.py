"""Compression verbs over the native model: distillation (TinyBERT), layer-mapping search, Extract-then-
Distill, LightMBERT, TernaryBERT (packed 2-bit), AutoTinyBERT search. Errors are :class:`CompressionError`."""

from .errors import CompressionError

__all__ = ["CompressionError"]
