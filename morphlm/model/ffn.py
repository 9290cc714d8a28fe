"""Position-wise feed-forward networks: a dense MLP with GELU/ReLU, or SwiGLU (gate and up fused)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"no plain activation {name!r}")


class MLP(nn.Module):
    """Dense FFN. For SwiGLU, ``fc1`` holds [gate; up] stacked on the output dim: (2*d_ff, d_model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        width = 2 * cfg.d_ff if self.swiglu else cfg.d_ff
        self.fc1 = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.act = None if self.swiglu else activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, T, d_ff) or (B, T, 2*d_ff)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = self.act(h)
        return self.fc2(h)  # (B, T, d_model)
