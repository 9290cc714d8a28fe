"""Interoperability with other toolkits: Hugging Face transformers checkpoints and modules (hf.py).

Importing this package does not import transformers; only the functions that build transformers
objects (``config_to_hf``, ``to_hf_module``) need it.
"""

from .hf import (
    SUPPORTED_ARCHITECTURES,
    InteropError,
    config_from_hf,
    config_to_hf,
    export_hf_model,
    from_hf_module,
    load_hf_model,
    state_dict_from_hf,
    state_dict_to_hf,
    to_hf_module,
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "InteropError",
    "config_from_hf",
    "config_to_hf",
    "export_hf_model",
    "from_hf_module",
    "load_hf_model",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "to_hf_module",
]
