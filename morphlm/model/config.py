"""ModelConfig: the one torch-free, serializable description of a morphlm transformer.

Everything that shapes the network lives here; the model reads it, the FLOPs ruler reads it, and
checkpoints store it as ``config.json``. Derived fields are filled in ``__post_init__`` and every
invalid combination fails with a :class:`ConfigError` that names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import short_repr

FORMAT_VERSION = 1

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "dssn")
POSITIONS = ("learned", "rope", "none")
HEADS = ("lm", "mlm", "cls")
MOE_ROUTERS = ("softmax", "sigmoid", "norm")
MOE_BALANCES = ("aux", "loss_free", "pool", "none")
MOE_IMPLS = ("auto", "grouped", "loop")
QK_NORMS = ("none", "head", "full")
GMAP_FUSIONS = ("single", "multiple", "gated", "chunk_gated")  # G-MAP memory fusion strategies (model/gmap.py)
# the gmap_* fields and their defaults: a model without G-MAP memory (gmap_layers = "") writes none of them
GMAP_DEFAULTS: dict[str, Any] = dict(gmap_layers="", gmap_fusion="chunk_gated", gmap_memory_layers=0,
                                     gmap_weight_init=1.0)
# the moe_* fields and their defaults: a dense config (moe_experts = 0) leaves every one of them at its default
# and writes none of them to config.json, so dense configs and checkpoints read and hash as they always did
MOE_DEFAULTS: dict[str, Any] = dict(
    moe_experts=0, moe_top_k=1, moe_shared_experts=0, moe_expert_d_ff=None, moe_router="softmax",
    moe_renormalize=False, moe_balance="aux", moe_aux_coef=1e-2, moe_z_coef=0.0, moe_bias_update=1e-3,
    moe_capacity_factor=None, moe_layers="all", moe_impl="auto", moe_pool=False, moe_pool_size=None,
    moe_pool_groups=1, moe_shared_gate=False)
ATTENTIONS = ("full", "switch", "sliding")
SWITCH_ESTIMATORS = ("two_branch", "one_branch")
# the attention-variant fields and their defaults: a full-attention config leaves every one of them at its default
# and writes none of them to config.json (so full-attention configs and checkpoints read and hash as they always did)
ATTENTION_DEFAULTS: dict[str, Any] = dict(
    attention="full", window=None, full_fraction=0.25, switch_estimator="two_branch", switch_lambda_lr=0.05)

# Depth-scaled sandwich norm constants (Pangu Ultra, Yin et al. 2025, arXiv 2504.07866, §2).
DSSN_C_ATTN = 0.283
DSSN_C_MLP = 0.432


class ConfigError(ValueError):
    """An invalid model configuration; the message says what is wrong and how to fix it."""


@dataclass
class ModelConfig:
    """Shape of a morphlm transformer.

    ``head`` picks the output head: ``lm`` (causal language model), ``mlm`` (BERT-style masked LM with
    a transform layer), ``cls`` (sequence classification over the first token; sentence pairs use
    ``n_segments = 2``).
    """

    name: str = "custom"
    vocab_size: int = 512
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None -> n_heads
    d_ff: int | None = None  # None -> 4*d_model (gelu/relu) or the 8/3 rule rounded to 64 (swiglu)
    max_seq_len: int = 256
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_placement: str = "pre"
    norm_eps: float = 1e-5
    position: str = "learned"
    rope_theta: float = 10000.0
    causal: bool = True
    tie_embeddings: bool = True
    bias: bool = True
    qkv_bias: bool | None = None  # Bias of the q/k/v projections (none = as bias; Qwen2-MoE: true, bias false)
    dropout: float = 0.0
    embed_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    final_norm: bool | None = None  # None -> True unless norm_placement == "post"
    n_segments: int = 0  # token-type (segment) embeddings; BERT uses 2
    head: str = "lm"
    n_classes: int = 2
    init_std: float = 0.02
    # QK-norm: an RMSNorm/LayerNorm (the config's norm) on the queries and keys before rotary positions. "head":
    # over each head's head_dim (one weight of size head_dim shared by the heads; Qwen3-MoE), "full": over the
    # whole q / k projection (weights of size d_model and kv_dim; OLMoE). "none" (default) leaves config.json as it was.
    qk_norm: str = "none"  # Query/key normalisation: none | head | full
    # LoopMoE (morphlm/model/loop.py): None for a plain model
    loop_repeats: int | None = None  # LoopMoE: run the n_layers unique blocks R times with IterAdaLN (depth n_layers·R)
    loop_iter_dim: int = 64  # LoopMoE: width of the sinusoidal iteration-index encoding fed to the iteration MLP (even)
    # MSG growth masks (morphlm/model/growth_masks.py): None for a plain model; an int R >= 0 when the weights
    # were grown with masked structural growth and new structure is still multiplied by a mask that ramps 0 -> 1
    # over R training steps. Which units are new and the ramp position are buffers in model.safetensors.
    msg_ramp_steps: int | None = None
    # Mixture of experts (morphlm/model/moe.py). moe_experts = 0: every FFN is dense (the default). Otherwise the
    # FFN of each layer named by moe_layers ("all", "every_other" = layers 1, 3, 5, ..., or a comma-separated
    # list such as "0,2,3") is a routed mixture of moe_experts experts of width moe_expert_d_ff (None -> d_ff;
    # smaller widths make fine-grained experts), each token going to moe_top_k of them, plus moe_shared_experts
    # always-on experts of the same width. Router: softmax (Switch/Mixtral; moe_renormalize rescales the top-k
    # gates to sum 1), sigmoid (DeepSeek-V3) or norm (UniPool's NormRouter). Balancing: aux (Switch loss,
    # coefficient moe_aux_coef), loss_free (selection bias updated by moe_bias_update per step), pool (UniPool's
    # pool loss, coefficient moe_aux_coef; needs moe_pool) or none; moe_z_coef > 0 adds the router z-loss.
    # moe_capacity_factor None: dropless; a number c: each expert takes at most ceil(c·k·T/E) tokens of a batch.
    # moe_impl: the expert kernel (grouped_mm where it applies, or the per-expert loop).
    # UniPool: moe_pool = true shares one pool of moe_pool_size experts (None -> moe_experts × the MoE layers
    # of a group, i.e. M = 8L for 8 experts per layer and one group) among the MoE layers of each of
    # moe_pool_groups consecutive groups; each layer keeps its own router over its pool.
    moe_experts: int = 0  # Routed experts per MoE layer (0 = dense FFNs)
    moe_top_k: int = 1  # Experts each token is routed to
    moe_shared_experts: int = 0  # Always-on shared experts per MoE layer
    moe_expert_d_ff: int | None = None  # Width of one expert (none = d_ff; smaller = fine-grained experts)
    moe_router: str = "softmax"  # Router: softmax | sigmoid | norm (UniPool NormRouter)
    moe_renormalize: bool = False  # Rescale the top-k gates to sum 1 (softmax/sigmoid routers)
    moe_balance: str = "aux"  # Load balancing: aux | loss_free | pool | none
    moe_aux_coef: float = 1e-2  # Coefficient of the Switch aux loss or UniPool pool loss
    moe_z_coef: float = 0.0  # Router z-loss coefficient (0 = off; ST-MoE uses 1e-3)
    moe_bias_update: float = 1e-3  # Loss-free balancing bias step u per optimizer step
    moe_capacity_factor: float | None = None  # Expert capacity factor (none = dropless)
    moe_layers: str = "all"  # MoE layers: all | every_other | a list like 0,2,3
    moe_impl: str = "auto"  # Expert kernel: auto | grouped (grouped_mm) | loop
    moe_pool: bool = False  # UniPool: share one expert pool across the MoE layers of a group
    moe_pool_size: int | None = None  # Experts per shared pool (none = moe_experts x MoE layers per group)
    moe_pool_groups: int = 1  # Groups of consecutive MoE layers, one shared pool each
    moe_shared_gate: bool = False  # Scale the shared experts' output by sigmoid(x·g), g learned (Qwen2-MoE)
    # Attention variants (morphlm/model/switch_attention.py). "full" (default): full causal/bidirectional attention.
    # "sliding": causal sliding-window attention over the keys [t-window+1, t]. "switch": Switch Attention (Zhao, Li,
    # Wu et al., 2026): per layer a router sends each token to full causal attention or to the sliding window;
    # the adaptive regulariser's multiplier follows dual ascent (step switch_lambda_lr) toward the target fraction
    # full_fraction of full-routed tokens (tokens with position < window excluded); switch_estimator picks the
    # router's gradient: two_branch (straight-through, both branches computed) or one_branch (efficient).
    attention: str = "full"  # Attention: full | switch (Switch Attention, per-token routing) | sliding (window only)
    window: int | None = None  # Sliding-window width w of switch/sliding attention (must be < max_seq_len)
    full_fraction: float = 0.25  # Switch Attention: target fraction rho* of full-attention tokens, in (0, 1)
    switch_estimator: str = "two_branch"  # Switch Attention router gradient: two_branch | one_branch
    switch_lambda_lr: float = 0.05  # Switch Attention: dual-ascent step eta of the regulariser's multiplier
    # G-MAP (morphlm/model/gmap.py): the domain layers (comma list) whose attention also reads a frozen general
    # model's hidden states, fused by gmap_fusion; gmap_memory_layers is that frozen model's layer count
    gmap_layers: str = ""  # G-MAP: domain layers augmented with the frozen model's memory, e.g. 5,11 ("" = off)
    gmap_fusion: str = "chunk_gated"  # G-MAP memory fusion: single | multiple | gated | chunk_gated
    gmap_memory_layers: int = 0  # G-MAP: layers of the frozen general model (set from --gmap-memory)
    gmap_weight_init: float = 1.0  # G-MAP: initial fusion weight (1 = the memory context replaces the layer's)
    # derived
    head_dim: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._check_types()
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            if self.activation == "swiglu":
                hidden = int(8 * self.d_model / 3)
                self.d_ff = 64 * ((hidden + 63) // 64)
            else:
                self.d_ff = 4 * self.d_model
        if self.final_norm is None:
            self.final_norm = self.norm_placement != "post"
        self.validate()
        self.head_dim = self.d_model // self.n_heads

    # ------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        """Every field has its declared JSON type: integers are integers (not 2e9, not "64", not true),
        booleans are booleans (``causal: "no"`` is an error, not True), floats are finite numbers. Runs
        before anything is derived from the values, so a bad config.json fails here with its field named."""
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            kind, optional = _FIELD_TYPES[f.name]
            if value is None and optional:
                continue
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                if ok and not -2**63 < int(value) < 2**63:
                    raise ConfigError(f"invalid ModelConfig: {f.name}={_short(value)} is out of range "
                                      f"(more than 64 bits); use a realistic size")
                if ok:
                    value = int(value)  # numpy integers become plain ints (JSON-serializable)
                    object.__setattr__(self, f.name, value)
            elif kind is float:
                ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
                      and math.isfinite(float(value)))
            else:
                ok = isinstance(value, kind)
            if not ok:
                want = {bool: "true or false (a JSON boolean)", int: "an integer", float: "a finite number",
                        str: "a string"}[kind] + (" or null" if optional else "")
                raise ConfigError(f"invalid ModelConfig: {f.name}={_short(value)} must be {want}")

    def _validate_loop(self, need) -> None:
        """LoopMoE fields (morphlm/model/loop.py): ``loop_repeats`` None (plain model) or R >= 1; the looped
        block is a pre-norm causal block, and the iteration encoding has an even width."""
        if self.loop_repeats is None:
            need(self.loop_iter_dim == 64, f"loop_iter_dim={self.loop_iter_dim} only applies to a looped model; "
                                           f"set loop_repeats (R >= 1) or leave loop_iter_dim at its default 64")
            return
        need(self.loop_repeats >= 1, f"loop_repeats={self.loop_repeats} must be an integer >= 1 (the times the "
                                     f"n_layers unique blocks run) or null for a plain model")
        need(self.loop_iter_dim >= 2 and self.loop_iter_dim % 2 == 0,
             f"loop_iter_dim={self.loop_iter_dim} must be an even integer >= 2 (sine and cosine halves of the "
             f"iteration encoding); e.g. 64")
        need(self.norm_placement == "pre", f"loop_repeats needs norm_placement='pre' (IterAdaLN modulates the "
                                           f"pre-norm inputs), got {self.norm_placement!r}; set norm_placement=pre")
        need(self.head == "lm", f"loop_repeats is built for causal language models (head='lm'), got "
                                f"head={self.head!r}; set head=lm or drop loop_repeats")
        need(self.msg_ramp_steps is None, "loop_repeats cannot be combined with MSG growth masks "
                                          "(msg_ramp_steps); remove one of them")

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"invalid ModelConfig '{self.name}': {msg}")

        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{key}={value!r} must be a positive integer")
        need(self.d_model % self.n_heads == 0,
             f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
             f"pick n_heads from {_divisors(self.d_model)} or change d_model")
        need(self.n_heads % self.n_kv_heads == 0,
             f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
             f"pick n_kv_heads from {_divisors(self.n_heads)}")
        need(self.activation in ACTIVATIONS, f"activation={self.activation!r}; choose one of {ACTIVATIONS}")
        need(self.norm in NORMS, f"norm={self.norm!r}; choose one of {NORMS}")
        need(self.norm_placement in NORM_PLACEMENTS,
             f"norm_placement={self.norm_placement!r}; choose one of {NORM_PLACEMENTS}")
        need(self.position in POSITIONS, f"position={self.position!r}; choose one of {POSITIONS}")
        need(self.head in HEADS, f"head={self.head!r}; choose one of {HEADS}")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        need(self.n_segments >= 0, f"n_segments={self.n_segments} must be >= 0")
        need(self.rope_theta > 0, f"rope_theta={self.rope_theta} must be > 0")
        need(self.init_std >= 0, f"init_std={self.init_std} must be >= 0")
        need(self.qk_norm in QK_NORMS, f"qk_norm={self.qk_norm!r}; choose one of {QK_NORMS}")
        if self.position == "rope":
            need((self.d_model // self.n_heads) % 2 == 0,
                 f"rope needs an even head dim, got d_model/n_heads={self.d_model / self.n_heads}")
        if self.head == "lm":
            need(self.causal, "head='lm' predicts the next token and needs causal=True "
                              "(use head='mlm' for a bidirectional encoder)")
        if self.head == "cls":
            need(self.n_classes >= 2, f"n_classes={self.n_classes} must be >= 2 for head='cls'")
        self._validate_loop(need)
        if self.msg_ramp_steps is not None:
            need(isinstance(self.msg_ramp_steps, int) and not isinstance(self.msg_ramp_steps, bool)
                 and self.msg_ramp_steps >= 0, f"msg_ramp_steps={self.msg_ramp_steps!r} must be None (no growth "
                 f"masks) or an integer >= 0 (steps over which the MSG mask ramps to 1)")
        self._validate_moe(need)
        self._validate_attention(need)
        self._validate_gmap(need)

    def _validate_attention(self, need) -> None:
        """Attention-variant fields (morphlm/model/switch_attention.py): a full-attention config leaves them at
        their defaults; switch/sliding need a causal model and a window smaller than max_seq_len."""
        need(self.attention in ATTENTIONS, f"attention={self.attention!r}; choose one of {ATTENTIONS}")
        if self.attention == "full":
            set_fields = [k for k, v in ATTENTION_DEFAULTS.items() if k != "attention" and getattr(self, k) != v]
            need(not set_fields, f"{', '.join(f'{k}={getattr(self, k)!r}' for k in set_fields)} configure switch/"
                                 f"sliding attention but attention='full'; set attention=switch (or sliding) or drop "
                                 f"those fields")
            return
        need(self.causal, f"attention={self.attention!r} routes causal attention and needs causal=True; this is a "
                          f"bidirectional model (head={self.head!r}): use attention=full, or a causal model "
                          f"(head=lm)")
        need(self.window is not None, f"attention={self.attention!r} needs a window: set window to a width "
                                      f"smaller than max_seq_len={self.max_seq_len}, e.g. {max(1, self.max_seq_len // 4)}")
        need(1 <= self.window < self.max_seq_len,
             f"window={self.window} must be at least 1 and smaller than the context max_seq_len={self.max_seq_len} "
             f"(a window that covers the whole context is full attention); lower window or use attention=full")
        need(self.loop_repeats is None, f"attention={self.attention!r} cannot be combined with loop_repeats "
                                        f"(LoopMoE); drop one of them")
        if self.attention == "sliding":
            set_fields = [k for k in ("full_fraction", "switch_estimator", "switch_lambda_lr")
                          if getattr(self, k) != ATTENTION_DEFAULTS[k]]
            need(not set_fields, f"{', '.join(f'{k}={getattr(self, k)!r}' for k in set_fields)} configure Switch "
                                 f"Attention's router but attention='sliding'; set attention=switch or drop them")
            return
        need(0.0 < self.full_fraction < 1.0,
             f"full_fraction={self.full_fraction} must lie strictly between 0 and 1 (the target fraction of tokens "
             f"routed to full attention); e.g. 0.25 (use attention=full or sliding for 1 or 0)")
        need(self.switch_estimator in SWITCH_ESTIMATORS,
             f"switch_estimator={self.switch_estimator!r}; choose one of {SWITCH_ESTIMATORS}")
        need(self.switch_lambda_lr >= 0, f"switch_lambda_lr={self.switch_lambda_lr} must be >= 0 (0 freezes the "
                                         f"regulariser's multiplier)")

    def _validate_gmap(self, need) -> None:
        if not self.gmap_layers.strip():
            set_fields = [k for k, v in GMAP_DEFAULTS.items() if k != "gmap_layers" and getattr(self, k) != v]
            need(not set_fields, f"{', '.join(f'{k}={getattr(self, k)!r}' for k in set_fields)} configure G-MAP "
                                 f"memory but gmap_layers is empty; name the augmented layers (e.g. gmap_layers=5,11) "
                                 f"or drop those fields")
            return
        layers = self.gmap_layer_ids  # raises ConfigError on a bad list
        need(self.gmap_fusion in GMAP_FUSIONS, f"gmap_fusion={self.gmap_fusion!r}; choose one of {GMAP_FUSIONS}")
        need(self.gmap_memory_layers >= 1, f"gmap_memory_layers={self.gmap_memory_layers} must be the frozen general "
                                           f"model's layer count (>= 1); pass --gmap-memory DIR to set it")
        if self.gmap_fusion == "chunk_gated":
            need(layers[-1] < self.gmap_memory_layers,
                 f"chunk-based gated fusion at gmap_layers={self.gmap_layers!r} splits the general model's layers at "
                 f"the augmented layers (chunk i = general layers after gmap_layers[i-1] up to gmap_layers[i]), so it "
                 f"needs at least {layers[-1] + 1} general layers but the frozen model has {self.gmap_memory_layers}; "
                 f"use a deeper frozen model or lower layers")
        need(self.loop_repeats is None, "G-MAP memory (gmap_layers) cannot be combined with a looped model "
                                        "(loop_repeats); drop one of them")
        need(self.attention == "full", f"G-MAP memory (gmap_layers) reads full attention's context, but "
                                       f"attention={self.attention!r}; use attention=full for a G-MAP domain model")

    @property
    def gmap_layer_ids(self) -> tuple[int, ...]:
        """The domain layers whose attention reads the G-MAP memory (none without G-MAP), ascending."""
        spec = self.gmap_layers.strip()
        if not spec:
            return ()
        try:
            ids = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            ids = None
        if not ids or any(not 0 <= i < self.n_layers for i in ids) or len(set(ids)) != len(ids):
            raise ConfigError(f"invalid ModelConfig '{self.name}': gmap_layers={self.gmap_layers!r}; use distinct "
                              f"comma-separated domain layer indices in 0..{self.n_layers - 1} (e.g. "
                              f"{max(self.n_layers // 2 - 1, 0)},{self.n_layers - 1})")
        return tuple(sorted(ids))

    def _validate_moe(self, need) -> None:
        if self.moe_experts == 0:
            set_fields = [k for k, v in MOE_DEFAULTS.items() if k != "moe_experts" and getattr(self, k) != v]
            need(not set_fields, f"{', '.join(f'{k}={getattr(self, k)!r}' for k in set_fields)} configure a mixture of "
                                 f"experts but moe_experts=0 (dense FFNs); set moe_experts > 0 or drop those fields")
            return
        need(self.moe_experts > 0, f"moe_experts={self.moe_experts} must be 0 (dense) or a positive expert count")
        need(self.msg_ramp_steps is None, "MSG growth masks (msg_ramp_steps) are not supported on mixture-of-experts "
                                          "FFNs; grow a dense model, or drop msg_ramp_steps")
        need(self.moe_router in MOE_ROUTERS, f"moe_router={self.moe_router!r}; choose one of {MOE_ROUTERS}")
        need(self.moe_balance in MOE_BALANCES, f"moe_balance={self.moe_balance!r}; choose one of {MOE_BALANCES}")
        need(self.moe_impl in MOE_IMPLS, f"moe_impl={self.moe_impl!r}; choose one of {MOE_IMPLS}")
        need(self.moe_top_k >= 1, f"moe_top_k={self.moe_top_k} must be >= 1")
        need(not (self.moe_renormalize and self.moe_router == "norm"),
             "moe_renormalize=true does not apply to moe_router='norm' (the NormRouter's gate is its raw score); "
             "drop moe_renormalize or pick the softmax/sigmoid router")
        need(self.moe_shared_experts >= 0, f"moe_shared_experts={self.moe_shared_experts} must be >= 0")
        need(not self.moe_shared_gate or self.moe_shared_experts > 0,
             "moe_shared_gate=true gates the shared experts but moe_shared_experts=0; set moe_shared_experts >= 1 "
             "or drop moe_shared_gate")
        need(self.moe_expert_d_ff is None or self.moe_expert_d_ff > 0,
             f"moe_expert_d_ff={self.moe_expert_d_ff} must be a positive width or null (= d_ff)")
        for key in ("moe_aux_coef", "moe_z_coef", "moe_bias_update"):
            need(getattr(self, key) >= 0, f"{key}={getattr(self, key)} must be >= 0")
        need(self.moe_capacity_factor is None or self.moe_capacity_factor > 0,
             f"moe_capacity_factor={self.moe_capacity_factor} must be > 0, or null for dropless routing")
        layers = self.moe_layer_ids  # raises ConfigError on a bad moe_layers
        need(bool(layers),
             f"moe_layers={self.moe_layers!r} names no layer; name at least one of 0..{self.n_layers - 1}")
        if self.moe_pool:
            groups = self.moe_pool_groups
            need(groups >= 1 and len(layers) % groups == 0,
                 f"moe_pool_groups={groups} must divide the {len(layers)} MoE layers into equal groups; pick one of "
                 f"{_divisors(len(layers))}")
            need(self.moe_pool_size is None or self.moe_pool_size >= 1,
                 f"moe_pool_size={self.moe_pool_size} must be a positive expert count, or null (moe_experts × the "
                 f"MoE layers per group)")
            need(self.moe_top_k <= self.pool_size,
                 f"moe_top_k={self.moe_top_k} is larger than the pool of moe_pool_size={self.pool_size} experts; "
                 f"lower moe_top_k or enlarge the pool")
        else:
            need(self.moe_pool_size is None and self.moe_pool_groups == 1,
                 f"moe_pool_size={self.moe_pool_size!r} / moe_pool_groups={self.moe_pool_groups} describe a shared "
                 f"expert pool but moe_pool=false; set moe_pool=true or drop them")
            need(self.moe_balance != "pool", "moe_balance='pool' (UniPool's pool loss) needs a shared pool; set "
                                             "moe_pool=true, or use moe_balance='aux'")
            need(self.moe_top_k <= self.moe_experts,
                 f"moe_top_k={self.moe_top_k} is larger than moe_experts={self.moe_experts}; lower moe_top_k "
                 f"or raise moe_experts")

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if out["loop_repeats"] is None:  # an unlooped model's config.json stays as it always was
            del out["loop_repeats"], out["loop_iter_dim"]
        if out["msg_ramp_steps"] is None:  # a plain model's config.json stays as it always was
            del out["msg_ramp_steps"]
        if out["moe_experts"] == 0:  # so does a dense model's (validate() keeps the moe_* fields at defaults)
            for key in MOE_DEFAULTS:
                del out[key]
        elif not out["moe_shared_gate"]:  # and an MoE model's without the Qwen2-MoE shared-expert gate
            del out["moe_shared_gate"]
        if not out["gmap_layers"].strip():  # and any model's without G-MAP memory (validate() keeps the defaults)
            for key in GMAP_DEFAULTS:
                del out[key]
        if out["qk_norm"] == "none":  # and any model's without QK-norm
            del out["qk_norm"]
        if out["qkv_bias"] is None:  # or a q/k/v bias of its own
            del out["qkv_bias"]
        if out["attention"] == "full":  # and a full-attention model's (validate() keeps the fields at defaults)
            for key in ATTENTION_DEFAULTS:
                del out[key]
        elif out["attention"] == "sliding":
            for key in ("full_fraction", "switch_estimator", "switch_lambda_lr"):
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        data.pop("format_version", None)
        data.pop("head_dim", None)
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hints.append(f"{_short(key)} (did you mean {close[0]!r}?)" if close else _short(key))
            raise ConfigError(f"unknown ModelConfig field(s) {', '.join(hints)}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; pass a checkpoint directory or a config .json/.yaml")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
                if isinstance(data, dict) and "model" in data:
                    data = data["model"]
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - re-raised with the path
            raise ConfigError(f"could not parse {path}: {exc}; fix the file's syntax") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of ModelConfig fields")
        # a checkpoint directory's config.json (it carries weights_sha256) numbers the checkpoint format,
        # which train/checkpoint.py checks when it loads weights; here only its model fields matter
        version = FORMAT_VERSION if "weights_sha256" in data else data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError(f"{path}: format_version={_short(version)} must be an integer (e.g. 1)")
        if version > FORMAT_VERSION:
            raise ConfigError(f"{path} has format_version {version}, newer than this morphlm understands "
                              f"({FORMAT_VERSION}); upgrade morphlm (pip install -U morphlm)")
        for key in CHECKPOINT_ONLY_KEYS:  # a checkpoint's config.json also carries these
            data.pop(key, None)
        if "preset" in data:  # derived fields follow the file's overrides of the preset
            return cls.from_name(data.pop("preset")).derive(**data)
        return cls.from_dict(data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        data = dict(PRESETS[name])
        data.update(overrides)
        data.setdefault("name", name)
        return cls.from_dict(data)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ModelConfig":
        return cls.from_file(Path(path) / "config.json")

    def derive(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` in which derived fields follow the change (see :func:`release_derived`):
        ``ModelConfig.from_name("tiny").derive(d_model=128, n_heads=8)`` has n_kv_heads 8 and d_ff 512, as the
        same shape written from scratch has; a derived field the preset or ``changes`` set explicitly stays."""
        data = self.to_dict()
        data.pop("msg_ramp_steps", None)
        if changes.get("moe_experts") == 0:  # back to dense: the routing fields go with the experts
            data = {k: v for k, v in data.items() if k not in MOE_DEFAULTS}
        if changes.get("attention") == "full":  # back to full attention: the window and router fields go too
            data = {k: v for k, v in data.items() if k not in ATTENTION_DEFAULTS}
        return ModelConfig.from_dict({**release_derived(data, changes), **changes})

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes``. Growth masks describe one set of weights, not an architecture, so a derived
        config does not inherit ``msg_ramp_steps`` unless ``changes`` names it."""
        data = self.to_dict()
        data.pop("msg_ramp_steps", None)
        if changes.get("moe_experts") == 0:  # back to dense: the routing fields go with the experts
            data = {k: v for k, v in data.items() if k not in MOE_DEFAULTS}
        if changes.get("attention") == "full":  # back to full attention: the window and router fields go too
            data = {k: v for k, v in data.items() if k not in ATTENTION_DEFAULTS}
        data.update(changes)
        return ModelConfig.from_dict(data)

    # ------------------------------------------------------------------ sizes
    @property
    def depth(self) -> int:
        """Blocks a token passes through: n_layers, times loop_repeats for a looped (LoopMoE) model."""
        return self.n_layers * (self.loop_repeats or 1)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * (self.d_model // self.n_heads)

    @property
    def is_moe(self) -> bool:
        return self.moe_experts > 0

    @property
    def expert_d_ff(self) -> int:
        """Width of one routed (or shared) expert."""
        return self.moe_expert_d_ff if self.moe_expert_d_ff is not None else self.d_ff

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        """The layers whose FFN is a mixture of experts (none for a dense config)."""
        if self.moe_experts == 0:
            return ()
        spec = self.moe_layers.strip()
        if spec == "all":
            return tuple(range(self.n_layers))
        if spec == "every_other":
            return tuple(range(1, self.n_layers, 2))
        try:
            ids = sorted({int(part) for part in spec.split(",") if part.strip()})
        except ValueError:
            ids = None
        if ids is None or any(not 0 <= i < self.n_layers for i in ids):
            raise ConfigError(f"invalid ModelConfig '{self.name}': moe_layers={self.moe_layers!r}; use 'all', "
                              f"'every_other' or a comma-separated list of layer indices in 0..{self.n_layers - 1}")
        return tuple(ids)

    @property
    def pool_groups(self) -> tuple[tuple[int, ...], ...]:
        """UniPool: the MoE layers of each pool group (consecutive layers), one group per shared pool."""
        if not self.moe_pool:
            return ()
        layers = self.moe_layer_ids
        size = len(layers) // self.moe_pool_groups
        return tuple(layers[g * size:(g + 1) * size] for g in range(self.moe_pool_groups))

    @property
    def pool_size(self) -> int:
        """Experts in each shared pool: moe_pool_size, or moe_experts × the MoE layers of a group (M = 8L for
        eight experts per layer in one group)."""
        if self.moe_pool_size is not None:
            return self.moe_pool_size
        return self.moe_experts * (len(self.moe_layer_ids) // max(self.moe_pool_groups, 1))

    @property
    def router_experts(self) -> int:
        """How many experts each MoE layer's router chooses among (the pool's size under UniPool)."""
        return self.pool_size if self.moe_pool else self.moe_experts


# fields derived in __post_init__ when None, and the fields each is derived from
DERIVED_FIELDS: dict[str, tuple[str, ...]] = {
    "n_kv_heads": ("n_heads",),
    "d_ff": ("d_model", "activation"),
    "final_norm": ("norm_placement",),
}


def release_derived(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a resolved config's fields) with each derived field set back to None — so ``__post_init__``
    derives it again — when ``changes`` alters a field it is derived from, does not name it itself, and
    ``base`` holds exactly the derived value (not one a preset or user chose). One rule for every verb that
    reshapes a config (train/recipes over a preset, distill's and extract's students, grow targets)."""
    out = dict(base)
    touched = {k for k, v in changes.items() if base.get(k) != v}
    if not touched:
        return out
    rederived = ModelConfig.from_dict({**{k: v for k, v in base.items() if k not in ("head_dim",)},
                                       **{k: None for k in DERIVED_FIELDS}})
    for key, inputs in DERIVED_FIELDS.items():
        if key not in changes and touched & set(inputs) and base.get(key) == getattr(rederived, key):
            out[key] = None
    return out


# keys a checkpoint directory's config.json carries beside the ModelConfig fields (see train/checkpoint.py)
CHECKPOINT_ONLY_KEYS = ("format_version", "weights_sha256", "quantization", "config_sha256", "fingerprint")

# field name -> (JSON type, may be null), from the dataclass annotations
_FIELD_TYPES: dict[str, tuple[type, bool]] = {}
for _name, _hint in typing.get_type_hints(ModelConfig).items():
    _args = typing.get_args(_hint)
    _FIELD_TYPES[_name] = ((next(a for a in _args if a is not type(None)), True) if _args else (_hint, False))


def _short(value: Any, limit: int = 80) -> str:
    return short_repr(value, limit)


def _divisors(n: int) -> list[int]:
    """Divisors of ``n`` (for error hints), found in O(sqrt n); only the small ones for huge ``n``."""
    small, large = [], []
    for k in range(1, min(math.isqrt(n), 100_000) + 1):
        if n % k == 0:
            small.append(k)
            if k != n // k and n <= 10**10:
                large.append(n // k)
    return small + large[::-1]


_GPT = dict(activation="gelu_tanh", norm="layernorm", norm_placement="pre", position="learned",
            causal=True, tie_embeddings=True, bias=True, head="lm")
_LLAMA = dict(activation="swiglu", norm="rmsnorm", norm_placement="pre", position="rope",
              causal=True, tie_embeddings=False, bias=False, head="lm", norm_eps=1e-6)
_BERT = dict(activation="gelu", norm="layernorm", norm_placement="post", position="learned",
             causal=False, tie_embeddings=True, bias=True, embed_norm=True, n_segments=2, head="mlm",
             norm_eps=1e-12)

PRESETS: dict[str, dict[str, Any]] = {
    # tiny sizes: unit tests and CPU demos
    "tiny": dict(_GPT, vocab_size=512, d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "tiny-llama": dict(_LLAMA, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    "tiny-bert": dict(_BERT, vocab_size=512, d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "small": dict(_GPT, vocab_size=4096, d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    "small-llama": dict(_LLAMA, vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
    "small-bert": dict(_BERT, vocab_size=4096, d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    # 10-30M parameters: CPU throughput benchmark
    "gpt-20m": dict(_GPT, vocab_size=8192, d_model=384, n_layers=8, n_heads=6, max_seq_len=256),
    "llama-20m": dict(_LLAMA, vocab_size=8192, d_model=384, n_layers=8, n_heads=6, n_kv_heads=2, max_seq_len=256),
    # reference sizes
    "gpt2-small": dict(_GPT, vocab_size=50304, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "gpt2-medium": dict(_GPT, vocab_size=50304, d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024),
    "llama-125m": dict(_LLAMA, vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, max_seq_len=2048),
    "bert-base": dict(_BERT, vocab_size=30522, d_model=768, n_layers=12, n_heads=12, max_seq_len=512),
    "bert-large": dict(_BERT, vocab_size=30522, d_model=1024, n_layers=24, n_heads=16, max_seq_len=512),
}
