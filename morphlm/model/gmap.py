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
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ModelConfig
from .transformer import ModelOutput, TransformerLM


def memory_sources(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """For each augmented domain layer (ascending), the general layers its fusion reads."""
    layers, n_gen = cfg.gmap_layer_ids, cfg.gmap_memory_layers
    if cfg.gmap_fusion == "single":
        return [(n_gen - 1,) for _ in layers]
    if cfg.gmap_fusion in ("multiple", "gated"):
        return [tuple(range(n_gen)) for _ in layers]
    out, prev = [], -1
    for i, layer in enumerate(layers):
        end = n_gen - 1 if i == len(layers) - 1 else layer
        out.append(tuple(range(prev + 1, end + 1)))
        prev = layer
    return out


class MemoryFusion(nn.Module):
    """One augmented layer's fusion of the general layers ``sources`` into M, and its fusion weight λ."""

    def __init__(self, cfg: ModelConfig, sources: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.sources = cfg.gmap_fusion, sources
        self.weight_init = cfg.gmap_weight_init
        self.fusion_weight = nn.Parameter(torch.empty(()))  # λ
        if self.kind == "multiple":
            self.layer_logits = nn.Parameter(torch.empty(len(sources)))
        elif self.kind in ("gated", "chunk_gated"):
            self.gate = nn.Parameter(torch.empty(cfg.d_model))  # w_g
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.fusion_weight.fill_(self.weight_init)
        if self.kind == "multiple":
            self.layer_logits.zero_()
        elif self.kind in ("gated", "chunk_gated"):
            self.gate.zero_()

    def forward(self, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """states: the general model's block outputs, each (B, T, D) -> M (B, T, D)."""
        if self.kind == "single":
            return states[self.sources[0]]
        m = torch.stack([states[j] for j in self.sources], dim=2)  # (B, T, J, D)
        if self.kind == "multiple":
            w = self.layer_logits.softmax(0).to(m.dtype)
            return (m * w[:, None]).sum(2)
        g = (m @ self.gate.to(m.dtype)).float().softmax(dim=-1).to(m.dtype)  # (B, T, J)
        return (m * g[..., None]).sum(2)


class GMAPMemory(nn.Module):
    """The fusion modules of a G-MAP domain model (``model.gmap``) and the hooks that apply them: a forward
    pre-hook on each augmented layer's output projection rewrites the attention context it receives. The
    memory of the current forward is set by :class:`GMAPModel` (``states``, ``mask``) and cleared after it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer_ids = cfg.gmap_layer_ids
        self.fusions = nn.ModuleDict({str(layer): MemoryFusion(cfg, src)
                                      for layer, src in zip(self.layer_ids, memory_sources(cfg))})
        self.states: tuple[torch.Tensor, ...] | None = None
        self.mask: torch.Tensor | None = None
        self._handles: list = []

    def reset_parameters(self) -> None:
        for fusion in self.fusions.values():
            fusion.reset_parameters()

    def attach(self, blocks: nn.ModuleList) -> None:
        for layer in self.layer_ids:
            block = blocks[layer]
            hook = self._make_hook(block, self.fusions[str(layer)])
            self._handles.append(block.attn.proj.register_forward_pre_hook(hook))

    def _make_hook(self, block: nn.Module, fusion: MemoryFusion):
        def hook(module, args):
            if self.states is None:
                raise RuntimeError("this is a G-MAP domain model: its augmented layers need the frozen general "
                                   "model's memory; run it as a GMAPModel (morphlm.model.gmap) or load the "
                                   "checkpoint with load_model, which re-opens the frozen parent")
            (context,) = args
            return (self.read(block, fusion, context),)
        return hook

    def read(self, block: nn.Module, fusion: MemoryFusion, context: torch.Tensor) -> torch.Tensor:
        """The context (B, T, D) of ``block``'s attention, blended with its attention over the fused memory."""
        attn = block.attn
        memory = fusion(self.states).to(context.dtype)
        if block.placement != "post":
            memory = block.norm1(memory)
        B, T, _ = context.shape
        W, b = attn.qkv.weight, attn.qkv.bias
        kv = slice(attn.q_dim, attn.q_dim + 2 * attn.kv_dim)
        k, v = F.linear(memory, W[kv], None if b is None else b[kv]).split((attn.kv_dim, attn.kv_dim), dim=-1)
        if attn.qk_norm == "full":
            k = attn.k_norm(k)
        q = context.view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = v.view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        if attn.qk_norm == "head":
            k = attn.k_norm(k)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, dropout_p=attn.dropout if attn.training else 0.0,
            is_causal=attn.causal and self.mask is None, enable_gqa=attn.n_kv_heads != attn.n_heads)
        out = out.transpose(1, 2).reshape(B, T, attn.q_dim)
        lam = fusion.fusion_weight.to(context.dtype)
        return context + lam * (out - context)


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
            return super().forward(input_ids, labels, attention_mask, token_type_ids, output_hidden_states,
                                   output_attentions, None, position_ids)
        finally:
            self.gmap.states = self.gmap.mask = None
