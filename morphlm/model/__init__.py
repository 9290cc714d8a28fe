"""The native morphlm model: config, transformer, sampling. Imports nothing from training or CLI."""

from .config import PRESETS, ConfigError, ModelConfig
from .generate import generate
from .transformer import IGNORE_INDEX, ModelOutput, TransformerLM

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "generate", "IGNORE_INDEX", "ModelOutput", "TransformerLM"]
