"""G-MAP: a domain model whose chosen layers read a frozen general model's hidden states as memory.

Wan et al. 2022, "G-MAP: General Memory-Augmented Pre-trained Language Model for Domain Tasks" (EMNLP 2022,
arXiv 2212.03613), §3. A frozen general model and the trainable domain model read the same input; the
general model's hidden states, computed once per forward under ``no_grad``, are the memory. For each
augmented domain layer l a fusion module turns the general layers' states m_j (B, T, D) into one memory
M (B, T, D):

  single       M = m_{L_g-1}                               (the general model's last layer)
  multiple     M = Σ_j softmax(a)_j m_j                      (all general layers, learned weights a)
  gated        M_t = Σ_j g_{t,j} m_{t,j},  g_{t,·} = softmax_j(w_gᵀ m_{t,j})   (per-token gate, all layers)
  chunk_gated  as gated, over the chunk of general layers that belongs to l: with the augmented layers
               l_0 < l_1 < ..., chunk i is general layers l_{i-1}+1 .. l_i (l_{-1} = -1; the last chunk runs
               to the general model's last layer). The paper's best setting, layers 5 and 11 of 12, gives
               the chunks 0–5 and 6–11.

The layer then attends to M with its own projections: Q = the layer's attention context (per head, before the
output projection W_O), K_m = N(M) W_K, V_m = N(M) W_V (W_K, W_V, biases and QK-norm of the layer's fused
``qkv``; N = the layer's input norm for pre/sandwich placements, none for post-norm, whose states are already
normalised), ``softmax(Q K_mᵀ/√d_h + mask) V_m`` under the layer's own mask (causal for a causal model, plus
the padding mask). The result replaces the context before W_O (then the residual and norm as usual).

Reconstruction where the paper is silent: (1) the context is blended, ``c' = c + λ (c_mem − c)`` with one
learned fusion weight λ per augmented layer initialised to ``gmap_weight_init`` — λ = 1 is the paper's
replacement, λ = 0 gives exactly the plain domain model; (2) no rotary positions on the memory keys (the query
is a context, not a positioned query); (3) the single-layer strategy reads the last general layer; (4) the
gate vector w_g starts at zero (a uniform gate) and the multiple-layer weights a at zero (a uniform mean).

:class:`GMAPModel` is the domain :class:`TransformerLM` with the frozen model attached (not a submodule: its
weights are never in this model's state dict, parameters or optimizer). No training imports here.
"""

from __future__ import annotations

import torch

from .config import ConfigError, ModelConfig
from .gmap_memory import GMAPMemory, MemoryFusion, memory_sources  # noqa: F401  (the fusion modules, re-exported)
from .transformer import ModelOutput, TransformerLM


def check_memory_model(cfg: ModelConfig, general_cfg: ModelConfig, where: str = "the frozen general model") -> None:
    """Refuse a frozen general model that cannot serve ``cfg``'s G-MAP layers (ConfigError naming the fix)."""
    if not cfg.gmap_layer_ids:
        raise ConfigError("a G-MAP model needs gmap_layers (the domain layers that read the memory), e.g. "
                          "--gmap-layers 5,11")
    if general_cfg.vocab_size != cfg.vocab_size:
        raise ConfigError(f"{where} has vocab_size={general_cfg.vocab_size} but the domain model "
                          f"{cfg.vocab_size}: G-MAP reads both models on the same token ids, so they need the same "
                          f"tokenizer; start the domain model from the general one (--init) or pick a general "
                          f"model of this tokenizer")
    if general_cfg.d_model != cfg.d_model:
        raise ConfigError(f"{where} has width d_model={general_cfg.d_model} but the domain model "
                          f"d_model={cfg.d_model}: the domain layers project the memory with their own W_K/W_V, "
                          f"so the widths must match; use a general model of width {cfg.d_model}")
    if general_cfg.n_layers != cfg.gmap_memory_layers:
        raise ConfigError(f"{where} has {general_cfg.n_layers} layers but the G-MAP config says "
                          f"gmap_memory_layers={cfg.gmap_memory_layers}; pass the general model the domain model "
                          f"was trained with")
    if general_cfg.loop_repeats is not None or general_cfg.gmap_layer_ids:
        raise ConfigError(f"{where} must be a plain model (not looped, not itself a G-MAP model); pass a plain "
                          f"general checkpoint")
    if cfg.causal and not general_cfg.causal:
        raise ConfigError(f"{where} is bidirectional (causal=false) but the domain model is causal: its memory at "
                          f"position t would carry the tokens after t into the domain model's predictions; use a "
                          f"causal general model for a causal domain model")
    if general_cfg.max_seq_len < cfg.max_seq_len:
        raise ConfigError(f"{where} reads at most max_seq_len={general_cfg.max_seq_len} tokens but the domain model "
                          f"{cfg.max_seq_len}; lower the domain model's max_seq_len to {general_cfg.max_seq_len}")


class GMAPModel(TransformerLM):
    """The G-MAP domain model: a :class:`TransformerLM` (built with its ``gmap_*`` config, so ``self.gmap``
    holds the fusion modules) plus the frozen ``general`` model, which is kept out of the module tree — its
    weights are not in this model's state dict or parameters, are never trained and stay in eval mode."""

    def __init__(self, cfg: ModelConfig, general: TransformerLM) -> None:
        check_memory_model(cfg, general.config)
        super().__init__(cfg)
        general.requires_grad_(False)
        general.eval()
        object.__setattr__(self, "general", general)  # not a submodule

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .float() move the frozen model along
        super()._apply(fn, *args, **kwargs)
        self.general._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.general.eval()
        return self

    def memory(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The frozen model's block outputs on ``input_ids`` (computed without gradients)."""
        general = self.general
        with torch.no_grad():
            out = general(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          token_type_ids=token_type_ids if general.config.n_segments > 0 else None,
                          output_hidden_states=True)
        return tuple(h.detach() for h in out.hidden_states[1:])

    def forward(self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> ModelOutput:
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("a G-MAP model reads token ids (input_ids): the frozen general model must see the "
                             "same input, which inputs_embeds cannot give it")
        self.gmap.states = self.memory(input_ids, attention_mask, token_type_ids, position_ids)
        self.gmap.mask = self._attention_mask(attention_mask, input_ids.shape[1])
        try:
            return super().forward(input_ids, labels=labels, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, output_hidden_states=output_hidden_states,
                                   output_attentions=output_attentions, position_ids=position_ids)
        finally:
            self.gmap.states = self.gmap.mask = None
