"""The one FLOPs ruler: analytic FLOPs per token from a ModelConfig.

Every benchmark and every log line computes compute through this module, so methods are compared on
one scale. Conventions (DESIGN.md, "Things that are easy to get wrong"):

* A matrix multiply with a weight of ``m×n`` costs ``2·m·n`` FLOPs per token forward; training costs
  3× forward (backward = 2× forward), so training is ``6·N_matmul`` per token.
* ``N_matmul`` counts every weight that takes part in a matmul: attention and FFN projections, the
  output head (the tied embedding counts once, as the LM head). Embedding look-ups, norms and biases
  are not counted.
* Attention adds ``2·2·T·d_attn`` per layer per token forward (QKᵀ and AV), i.e. ``12·L·d·T`` per token
  for training, counted over the full T×T square also for causal models (the PaLM/Chinchilla
  convention; a causal kernel does about half of that work).
* Looping (LoopMoE, model/loop.py): the n_layers unique blocks run loop_repeats = R times, so their matmuls and
  attention count R times per token (parameters count once). Each looped block also multiplies by IterAdaLN's
  W_mod (d × 6d) per token; the iteration MLP runs once per iteration per sequence, not per token, and is not
  counted (like the embedding look-ups).
* A classification head runs once per sequence: its cost is spread over the T tokens.
* Mixture of experts: FLOPs follow the ACTIVE weights of a token — attention, the router (d·E), the top-k
  routed experts and the shared experts of each MoE layer; the experts a token does not visit cost nothing.
  :func:`param_counts` gives total vs active parameters (UniPool's shared pools counted once in the total).
* Switch / sliding-window attention (model/switch_attention.py) count each token's real context: a token at
  position t (1-based) attends ctx_t = t keys under full causal attention and min(t, w) in the window, so a layer
  costs 4·d·Σ_t ctx_t forward (:func:`attention_flops_per_token` gives that per token, for every variant). A
  Switch Attention layer whose fraction ρ of the tokens beyond the window goes to full attention has
  ctx_t = ρ·t + (1 − ρ)·w there (for t ≤ w both branches see the same t keys); ρ is the measured per-layer
  fraction when one is given, else the config's target full_fraction (the expected fraction once dual ascent
  has converged). On the one scale of :func:`forward_flops_per_token` a variant's attention is the full
  attention term above (4·d·T per layer) times its share of full causal attention's real work,
  Σ ctx_variant / Σ ctx_full, so full_fraction → 1 gives the full-attention number; each router adds its d × 1
  matmul per token per layer.
"""

from __future__ import annotations

from ..model.config import ModelConfig

# Dense bf16 peak FLOP/s by device-name fragment (spec sheet, no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "4090": 165e12,
}


def attention_matmul_params(cfg: ModelConfig) -> int:
    d = cfg.d_model
    return d * (d + 2 * cfg.kv_dim) + d * d


def ffn_matmul_params(cfg: ModelConfig, d_ff: int) -> int:
    """Weights of one FFN (or expert) of width ``d_ff``."""
    ffn_in = 2 * d_ff if cfg.activation == "swiglu" else d_ff
    return cfg.d_model * ffn_in + d_ff * cfg.d_model


def moe_ffn_matmul_params(cfg: ModelConfig) -> int:
    """Active weights of one MoE FFN per token: router (d × experts it chooses among), top-k routed experts and
    the always-on shared experts (and their d × 1 sigmoid gate with moe_shared_gate)."""
    expert = ffn_matmul_params(cfg, cfg.expert_d_ff)
    gate = cfg.d_model if cfg.moe_shared_gate else 0
    return cfg.d_model * cfg.router_experts + (cfg.moe_top_k + cfg.moe_shared_experts) * expert + gate


def layer_matmul_params(cfg: ModelConfig, layer_idx: int | None = None) -> float:
    """Active matmul weights of layer ``layer_idx`` per token; ``None``: the mean over the layers (every layer
    for a dense config)."""
    if layer_idx is None:
        if not cfg.moe_experts:
            return attention_matmul_params(cfg) + ffn_matmul_params(cfg, cfg.d_ff)
        return sum(layer_matmul_params(cfg, i) for i in range(cfg.n_layers)) / cfg.n_layers
    if layer_idx in cfg.moe_layer_ids:
        return attention_matmul_params(cfg) + moe_ffn_matmul_params(cfg)
    return attention_matmul_params(cfg) + ffn_matmul_params(cfg, cfg.d_ff)


def loop_matmul_params(cfg: ModelConfig) -> int:
    """Per-token matmul weights a looped block adds to ``layer_matmul_params``: IterAdaLN's W_mod (d × 6d);
    0 for an unlooped model."""
    return 0 if cfg.loop_repeats is None else 6 * cfg.d_model * cfg.d_model


def head_matmul_params(cfg: ModelConfig, seq_len: int) -> float:
    d = cfg.d_model
    if cfg.head == "lm":
        return d * cfg.vocab_size
    if cfg.head == "mlm":
        return d * d + d * cfg.vocab_size
    return (d * d + d * cfg.n_classes) / max(seq_len, 1)


def matmul_params(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Weights taking part in a matmul for each token (the N of 6·N); a looped model's blocks count R times."""
    if cfg.loop_repeats is not None:  # LoopMoE: one pass over the unique blocks and their W_mod, R times; the head once
        head = head_matmul_params(cfg, seq_len if seq_len is not None else cfg.max_seq_len)
        one_pass = matmul_params(cfg.replace(loop_repeats=None, loop_iter_dim=64), seq_len) - head
        return cfg.loop_repeats * (one_pass + cfg.n_layers * loop_matmul_params(cfg)) + head
    T = cfg.max_seq_len if seq_len is None else seq_len
    if cfg.moe_experts:
        return sum(layer_matmul_params(cfg, i) for i in range(cfg.n_layers)) + head_matmul_params(cfg, T)
    return cfg.n_layers * layer_matmul_params(cfg) + head_matmul_params(cfg, T)


def inactive_params(cfg: ModelConfig) -> int:
    """Parameters a token does not use: the routed experts beyond its top-k in each MoE layer (0 when dense).
    With UniPool pools a token uses k experts per layer of the group's pool: the pool's M experts count once."""
    if not cfg.moe_experts:
        return 0
    expert = ffn_matmul_params(cfg, cfg.expert_d_ff)
    n_moe = len(cfg.moe_layer_ids)
    stored = (cfg.moe_pool_groups * cfg.pool_size if cfg.moe_pool else n_moe * cfg.moe_experts) * expert
    return stored - n_moe * cfg.moe_top_k * expert


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters of the model ``cfg`` describes: total counts every parameter (built on the
    meta device, nothing allocated), active those one token uses (total less :func:`inactive_params`). Equal
    for a dense model."""
    import torch

    from ..model.transformer import TransformerLM

    with torch.device("meta"):
        total = TransformerLM(cfg).num_parameters()
    return total, total - inactive_params(cfg)


def _layer_fractions(cfg: ModelConfig, full_fraction) -> list[float]:
    """Per layer, the fraction of tokens beyond the window routed to full attention."""
    if cfg.attention == "full":
        return [1.0] * cfg.n_layers
    if cfg.attention == "sliding":
        return [0.0] * cfg.n_layers
    if full_fraction is None:
        full_fraction = cfg.full_fraction
    if isinstance(full_fraction, (int, float)):
        fractions = [float(full_fraction)] * cfg.n_layers
    else:
        fractions = [float(f) for f in full_fraction]
    if len(fractions) != cfg.n_layers or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"full_fraction={full_fraction!r}: give one number in [0, 1] or one per layer "
                         f"({cfg.n_layers} numbers in [0, 1])")
    return fractions


def attention_context(cfg: ModelConfig, seq_len: int | None = None, full_fraction=None) -> float:
    """Σ over the layers of the mean number of keys a query attends (each token's real context, module docstring):
    (T+1)/2 per causal full-attention layer (T for a bidirectional one), the window's mean min(t, w) per local
    layer, the mix at ``full_fraction`` (a number or one per layer; None: the config's target) per Switch layer."""
    T = cfg.max_seq_len if seq_len is None else seq_len
    if not cfg.causal:
        return float(cfg.n_layers * T)
    full_sum = T * (T + 1) / 2
    if cfg.attention == "full":
        return cfg.n_layers * full_sum / T
    w = min(cfg.window, T)
    prefix = w * (w + 1) / 2  # t <= w: both branches see t keys
    beyond_full = full_sum - prefix  # Σ_{t > w} t
    beyond_local = (T - w) * w  # Σ_{t > w} w
    total = sum(prefix + f * beyond_full + (1 - f) * beyond_local for f in _layer_fractions(cfg, full_fraction))
    return total / T


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, full_fraction=None) -> float:
    """Forward attention FLOPs per token counted over each token's real context: 4·d·(keys attended), summed over
    the layers (× loop_repeats when looped). Compare variants with this; see the module docstring."""
    return 4 * cfg.d_model * attention_context(cfg, seq_len, full_fraction) * (cfg.loop_repeats or 1)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, full_fraction=None) -> float:
    T = cfg.max_seq_len if seq_len is None else seq_len
    attention = 4 * cfg.depth * cfg.d_model * T  # depth: n_layers, × loop_repeats when looped
    if cfg.attention != "full":  # switch / sliding: full attention's term times the share of its real work kept
        dense = cfg.replace(attention="full")
        attention *= attention_context(cfg, T, full_fraction) / attention_context(dense, T)
        if cfg.attention == "switch":
            attention += 2 * cfg.n_layers * cfg.d_model  # the routers' d × 1 matmuls
    return 2 * matmul_params(cfg, T) + attention


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, full_fraction=None) -> float:
    """6·N + 12·L·d·T (switch/sliding attention: the attention term scaled as in forward_flops_per_token)."""
    return 3 * forward_flops_per_token(cfg, seq_len, full_fraction)


def training_flops(cfg: ModelConfig, tokens: int, seq_len: int | None = None) -> float:
    return training_flops_per_token(cfg, seq_len) * tokens


def describe(cfg: ModelConfig, params: int, seq_len: int | None = None) -> str:
    """One line naming the resolved shape of ``cfg`` (derived fields included), its parameter count and its
    training FLOPs per token: what every training verb prints before its first step."""
    T = cfg.max_seq_len if seq_len is None else seq_len
    loop = f" (looped ×{cfg.loop_repeats}: depth {cfg.depth}, IterAdaLN)" if cfg.loop_repeats is not None else ""
    shape = (f"d_model {cfg.d_model}, n_layers {cfg.n_layers}{loop}, n_heads {cfg.n_heads}, n_kv_heads {cfg.n_kv_heads}"
             f"{' (grouped-query)' if cfg.n_kv_heads != cfg.n_heads else ''}, head_dim {cfg.head_dim}, d_ff {cfg.d_ff}, "
             f"{cfg.activation}, {cfg.norm}/{cfg.norm_placement}, {cfg.position} positions, head {cfg.head}, "
             f"vocab {cfg.vocab_size}, max_seq_len {cfg.max_seq_len}")
    if cfg.attention == "sliding":
        shape += f", sliding-window attention (window {cfg.window})"
    elif cfg.attention == "switch":
        shape += (f", Switch Attention (window {cfg.window}, target full fraction {cfg.full_fraction:g}, "
                  f"{cfg.switch_estimator} estimator)")
    if cfg.moe_experts:
        pool = (f", UniPool {cfg.moe_pool_groups} pool(s) of {cfg.pool_size}" if cfg.moe_pool else "")
        shape += (f"; MoE on {len(cfg.moe_layer_ids)} layers: {cfg.moe_experts} experts{pool}, top-{cfg.moe_top_k}, "
                  f"{cfg.moe_shared_experts} shared, expert d_ff {cfg.expert_d_ff}, {cfg.moe_router} router, "
                  f"{cfg.moe_balance} balancing")
        active = params - inactive_params(cfg)
        return (f"model {cfg.name!r}: {shape}; {params:,} parameters ({active:,} active per token), "
                f"{training_flops_per_token(cfg, T):.4g} training FLOPs/token at seq_len {T}")
    return (f"model {cfg.name!r}: {shape}; {params:,} parameters, "
            f"{training_flops_per_token(cfg, T):.4g} training FLOPs/token at seq_len {T}")


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak for a CUDA device name, or None when unknown (no MFU is reported then)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(flops_per_second: float, device_name: str | None) -> float | None:
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_second / peak
