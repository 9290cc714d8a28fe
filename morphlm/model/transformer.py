"""TransformerLM: the one native morphlm model.

Embeddings -> n_layers blocks -> one head (causal LM, masked LM, or sequence classification), all shaped
by :class:`~morphlm.model.config.ModelConfig`. The forward pass returns a :class:`ModelOutput` with the
logits, the loss when labels are given, and on request every hidden state and every layer's raw
pre-softmax attention scores: that is the output contract that distillation and growth code rely on.

Norm placements (per block, ``a`` = attention or MLP sub-layer):
  pre:      h = h + a(N(h))
  post:     h = N(h + a(h))                                  (BERT)
  sandwich: h = h + N_out(a(N_in(h)))
  dssn:     sandwich with N_out's gain initialised to c/√L (c_attn = 0.283, c_mlp = 0.432) and TinyInit
            (std √(1/(2dL)), embedding std 0.5) — Pangu Ultra's depth-scaled sandwich norm
            (Yin et al. 2025, arXiv 2504.07866, §2). Pangu does not say whether the output projection is also rescaled;
            we use plain TinyInit for every matrix (a reconstruction).

No training, CLI or parallelism imports here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, KVCache, KVCacheFullError, rope_tables
from .config import DSSN_C_ATTN, DSSN_C_MLP, ModelConfig
from .ffn import activation_fn
from .gmap_memory import GMAPMemory  # G-MAP's fusion modules (GMAPModel, in gmap.py, supplies their memory)
from .growth_masks import GrowthMasks
from .loop import Loop  # LoopMoE: the looped IterAdaLN blocks and their iteration signal
from .moe import ExpertPool, MoEFFN, build_pools, load_stats, make_ffn, pool_of
from .norms import make_norm
from .switch_attention import SwitchRouter

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V) for lm/mlm, (B, n_classes) for cls
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # depth+1 tensors (B, T, D): embeddings, then each block (run)
    attentions: tuple[torch.Tensor, ...] | None = None  # depth tensors (B, H, T, T): raw pre-softmax scores


def kv_cache_unsupported(cfg: ModelConfig) -> str | None:
    """Why a model with this config cannot decode with a KV cache (None: it can). Cached: causal attention, full,
    sliding-window or Switch (multi-head or grouped-query, learned or rotary positions, any norm placement, QK-norm,
    growth masks, dense or dropless MoE FFNs). Not cached: G-MAP memory (its fusion reads the frozen model's states
    of the whole sequence), LoopMoE (each of the loop's iterations would need its own cache) and expert capacity
    limits (which tokens an expert drops depends on the whole batch of tokens, future ones included)."""
    if cfg.head != "lm" or not cfg.causal:
        return f"it is not a causal LM (head={cfg.head!r}, causal={cfg.causal})"
    if cfg.gmap_layer_ids:
        return "its G-MAP memory fuses the memory model's states of the whole sequence"
    if cfg.loop_repeats is not None:
        return "LoopMoE runs each block several times"
    if cfg.is_moe and cfg.moe_capacity_factor is not None:
        return "expert capacity (moe_capacity_factor) drops tokens depending on the whole sequence"
    return None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0, pool: ExpertPool | None = None) -> None:
        super().__init__()
        self.placement = cfg.norm_placement
        self.attn = Attention(cfg)
        self.mlp = make_ffn(cfg, layer_idx, pool)  # dense MLP, or MoEFFN where the config routes this layer
        self.norm1 = make_norm(cfg)
        self.norm2 = make_norm(cfg)
        if self.placement in ("sandwich", "dssn"):
            self.norm1_out = make_norm(cfg)
            self.norm2_out = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h, rope=None, mask=None, return_scores=False, kv=None):
        if self.placement == "pre":
            a, scores = self.attn(self.norm1(h), rope, mask, return_scores, kv)
            h = h + self.drop(a)
            h = h + self.drop(self.mlp(self.norm2(h)))
        elif self.placement == "post":
            a, scores = self.attn(h, rope, mask, return_scores, kv)
            h = self.norm1(h + self.drop(a))
            h = self.norm2(h + self.drop(self.mlp(h)))
        else:  # sandwich / dssn
            a, scores = self.attn(self.norm1(h), rope, mask, return_scores, kv)
            h = h + self.drop(self.norm1_out(a))
            h = h + self.drop(self.norm2_out(self.mlp(self.norm2(h))))
        return h, scores


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.seg_emb = nn.Embedding(cfg.n_segments, cfg.d_model) if cfg.n_segments > 0 else None
        self.emb_norm = make_norm(cfg) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        # UniPool's shared expert pools belong to the model (one per group); MoE layers only refer to theirs.
        # LoopMoE (loop.py): the n_layers unique blocks are IterAdaLN blocks that ``loop`` runs loop_repeats times
        self.expert_pools = build_pools(cfg)
        self.loop = Loop(cfg) if cfg.loop_repeats is not None else None
        self.blocks = (Loop.make_blocks(cfg, self.expert_pools) if self.loop is not None
                       else nn.ModuleList(Block(cfg, i, pool_of(cfg, self.expert_pools, i)) for i in range(cfg.n_layers)))
        self.final_norm = make_norm(cfg) if cfg.final_norm else None
        self.gmap = None
        if cfg.gmap_layer_ids:  # G-MAP (gmap.py): the fusion modules; a GMAPModel supplies the frozen model's memory
            self.gmap = GMAPMemory(cfg)
            self.gmap.attach(self.blocks)
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

        if cfg.head == "lm":
            self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        elif cfg.head == "mlm":
            self.mlm_dense = nn.Linear(cfg.d_model, cfg.d_model)
            self.mlm_norm = make_norm(cfg)
            self.mlm_act = activation_fn("gelu" if cfg.activation == "swiglu" else cfg.activation)
            self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        else:  # cls
            self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
            self.classifier = nn.Linear(cfg.d_model, cfg.n_classes)
        self.reset_parameters()
        # MSG growth masks (growth_masks.py): part of the function, so part of the model and its checkpoint
        self.growth_masks = GrowthMasks(cfg) if cfg.msg_ramp_steps is not None else None
        if self.growth_masks is not None:
            self.growth_masks.attach(self)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        dssn = cfg.norm_placement == "dssn"
        std = math.sqrt(1.0 / (2 * cfg.d_model * cfg.n_layers)) if dssn else cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("bias") or name == "mlm_bias":
                    p.zero_()
                else:
                    p.fill_(1.0)
            elif "emb" in name.split(".")[0]:
                p.normal_(0.0, 0.5 if dssn else cfg.init_std)
            elif name.endswith(("attn.proj.weight", "mlp.fc2.weight", "experts.w2", "mlp.shared_w2")) and not dssn:
                # GPT-2 scaled init for the projections that write into the residual stream
                p.normal_(0.0, std / math.sqrt(2 * cfg.n_layers))
            else:
                p.normal_(0.0, std)
        if self.loop is not None:  # IterAdaLN's W_mod starts at zero (adaLN-Zero): the plain block's function
            for block in self.blocks:
                block.reset_modulation()
        if dssn:
            for block in self.blocks:
                block.norm1_out.weight.fill_(DSSN_C_ATTN / math.sqrt(cfg.n_layers))
                block.norm2_out.weight.fill_(DSSN_C_MLP / math.sqrt(cfg.n_layers))
        for router in self.switch_routers():  # Switch Attention starts as full attention (switch_attention.py)
            router.reset_router()
        if self.gmap is not None:
            self.gmap.reset_parameters()

    # ------------------------------------------------------------------ helpers
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            for emb in (self.tok_emb, self.pos_emb, self.seg_emb):
                if emb is not None:
                    n -= emb.weight.numel()
        return n

    # ------------------------------------------------------------------ growth-time structure
    def on_train_step_begin(self) -> None:
        """Called by the training loop at the start of every optimizer step: advances the growth masks' ramp
        (a no-op for a plain model)."""
        if self.growth_masks is not None:
            self.growth_masks.advance()
        for layer in self.moe_layers():  # loss-free balancing: the selection bias follows last step's loads
            layer.update_bias()
        for router in self.switch_routers():  # Switch Attention: dual ascent on the regulariser's multiplier
            router.update_lambda()

    # ------------------------------------------------------------------ switch attention
    def switch_routers(self) -> list[SwitchRouter]:
        """The Switch Attention routers, one per layer in layer order (none unless attention='switch')."""
        if self.config.attention != "switch":
            return []
        return [block.attn.switch for block in self.blocks]

    def switch_aux_loss(self) -> torch.Tensor | None:
        """Σ over layers of the Switch Attention regulariser λ_l·ρ̄_l of the last training forward (None when none)."""
        terms = [r.reg_loss for r in self.switch_routers() if r.reg_loss is not None]
        return torch.stack(terms).sum() if terms else None

    def switch_metrics(self) -> dict[str, torch.Tensor]:
        """Detached routing statistics of the last forward, for metrics.jsonl: per layer ``switch{l}_full`` (the
        realised fraction of tokens at positions t >= window routed to full attention), ``switch{l}_p`` (their
        mean router probability ρ̄) and ``switch{l}_lambda``; ``switch_full`` is the mean over layers."""
        out: dict[str, torch.Tensor] = {}
        routers = [r for r in self.switch_routers() if r.last_full is not None]
        for i, r in enumerate(routers):
            out[f"switch{i}_full"] = r.last_full.detach().float()
            out[f"switch{i}_p"] = r.last_rho.detach().float()
            out[f"switch{i}_lambda"] = r.lam.detach().float()
        if routers:
            out["switch_full"] = torch.stack([r.last_full.detach().float() for r in routers]).mean()
        return out

    # ------------------------------------------------------------------ mixture of experts
    def moe_layers(self) -> list[MoEFFN]:
        return [m for m in self.modules() if isinstance(m, MoEFFN)]

    def moe_aux_loss(self) -> torch.Tensor | None:
        """The sum of the MoE layers' balancing and z losses of the last training forward (None when none)."""
        terms = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(terms).sum() if terms else None

    def moe_metrics(self) -> dict[str, torch.Tensor]:
        """Detached load statistics of the last forward, for metrics.jsonl: per MoE layer ``moe{l}_cv``,
        ``moe{l}_max_vio``, ``moe{l}_dead`` (and ``_dropped``, ``_norm_fallback`` where they apply), the means
        ``moe_cv``/``moe_max_vio`` and total ``moe_dead`` over layers, and per UniPool pool ``pool{g}_cv``,
        ``pool{g}_max_vio``, ``pool{g}_dead`` over the layer-averaged load."""
        out: dict[str, torch.Tensor] = {}
        layers = [m for m in self.moe_layers() if m.last_stats]
        for m in layers:
            for key, value in m.last_stats.items():
                if key != "load":
                    out[f"moe{m.layer_idx}_{key}"] = torch.as_tensor(value, dtype=torch.float32)
        if layers:
            out["moe_cv"] = torch.stack([m.last_stats["cv"] for m in layers]).mean()
            out["moe_max_vio"] = torch.stack([m.last_stats["max_vio"] for m in layers]).mean()
            out["moe_dead"] = torch.stack([m.last_stats["dead"] for m in layers]).sum()
        for g, pool in enumerate(self.expert_pools or []):
            loads = [m.last_stats["load"] for m in layers if m.pool is pool]
            if loads:
                for key, value in load_stats(torch.stack(loads).sum(0)).items():
                    out[f"pool{g}_{key}"] = value
        return out

    def add_growth_masks(self, ramp_steps: int, **flags: torch.Tensor) -> GrowthMasks:
        """Put MSG masks (at m = 0) on this model: ``flags`` are :meth:`GrowthMasks.set_flags`'s. The config
        records ``msg_ramp_steps`` so a saved checkpoint rebuilds the same masked model."""
        self.remove_growth_masks()
        self.config = self.config.replace(msg_ramp_steps=int(ramp_steps))
        masks = GrowthMasks(self.config).to(self.tok_emb.weight.device)
        self.growth_masks = masks
        masks.attach(self)
        masks.set_flags(**flags)
        return masks

    def remove_growth_masks(self) -> None:
        """Drop the growth masks: the model becomes the plain grown model (the same function once m = 1),
        and its config and state dict those of a plain model."""
        if self.growth_masks is not None:
            self.growth_masks.detach()
            self.growth_masks = None
            self.config = self.config.replace()

    def output_embeddings(self) -> torch.Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def _attention_mask(self, attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """(B, T) 1/0 key mask -> bool (B, 1, T, T) allowed-mask (causal folded in); None when no padding."""
        if attention_mask is None:
            return None
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if self.config.causal:
            keep = keep & torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
        # a query row with no allowed key would give NaN; let it see itself
        eye = torch.eye(T, dtype=torch.bool, device=keep.device)
        return keep | eye

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """input_ids (B, T). For lm/mlm, ``labels`` (B, T) are the targets at each position (already
        shifted for causal LM: labels[t] = input_ids[t+1]); -100 is ignored. For cls, labels (B,).

        As in Hugging Face models, ``inputs_embeds`` (B, T, D) may replace ``input_ids``: the vectors stand
        in for the token embeddings (position and segment embeddings are still added; soft prompts enter this
        way), and ``position_ids`` (T,) or (B, T) replace the positions 0..T-1 (learned positions and RoPE).
        With both left None the computation is exactly the one without the arguments.

        ``kv_cache`` (:class:`~morphlm.model.attention.KVCache`, incremental decoding): the tokens continue the
        cached ones, at positions ``kv_cache.length ..``; their keys and values are appended to the cache. Only
        a model :func:`kv_cache_unsupported` accepts (causal attention, no G-MAP memory, no loop, dropless
        experts) takes one; the output is the one the whole sequence would give at these positions."""
        cfg = self.config
        if self.growth_masks is not None:
            self.growth_masks.sync()  # buffers a loader wrote directly: refresh the masks' hooks
        if self.expert_pools is not None and self.training and torch.is_grad_enabled():
            for pool in self.expert_pools:  # a new training micro-batch: its pool loss uses the last one's load
                pool.begin_forward()
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) or inputs_embeds (B, T, d_model)")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[2] != cfg.d_model:
                raise ValueError(f"inputs_embeds must have shape (B, T, {cfg.d_model}), got "
                                 f"{tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        else:
            B, T = input_ids.shape
            device = input_ids.device
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={cfg.max_seq_len}; "
                             f"truncate the input or build the model with a larger max_seq_len")
        if kv_cache is not None:
            why = kv_cache_unsupported(cfg)
            if why is not None:
                raise ValueError(f"this model cannot decode with a KV cache: {why}; run it without kv_cache")
            if attention_mask is not None or output_attentions or self.gmap is not None:
                raise ValueError("kv_cache takes no attention_mask, output_attentions or G-MAP memory; run this "
                                 "forward without the cache")
            kv_cache.check_room(T)
            if kv_cache.length + T > cfg.max_seq_len:
                raise KVCacheFullError(f"positions {kv_cache.length}..{kv_cache.length + T - 1} run past the "
                                       f"model's context (max_seq_len={cfg.max_seq_len}); build the KV cache with at "
                                       f"most max_seq_len positions")
            if position_ids is None:
                position_ids = torch.arange(kv_cache.length, kv_cache.length + T, device=device)
        if position_ids is not None and (position_ids.dim() not in (1, 2) or position_ids.shape[-1] != T
                                         or (position_ids.dim() == 2 and position_ids.shape[0] not in (1, B))):
            raise ValueError(f"position_ids must have shape ({T},) or ({B}, {T}), got {tuple(position_ids.shape)}")
        h = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(T, device=device) if position_ids is None else position_ids)
        if self.seg_emb is not None:
            seg = token_type_ids if token_type_ids is not None else torch.zeros(B, T, dtype=torch.long, device=device)
            h = h + self.seg_emb(seg)
        if self.emb_norm is not None:
            h = self.emb_norm(h)
        h = self.drop(h)
        rope = None
        if self.rope_cos is not None:
            if position_ids is None:
                rope = (self.rope_cos, self.rope_sin)  # (T_max, Dh): attention takes the first T rows
            else:
                cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]  # (T, Dh) or (B, T, Dh)
                rope = (cos, sin) if cos.dim() == 2 else (cos[:, None], sin[:, None])  # (B, 1, T, Dh)
        mask = self._attention_mask(attention_mask, T)

        hidden = [h] if output_hidden_states else None
        scores = [] if output_attentions else None
        if self.loop is not None:  # LoopMoE: every block output of every iteration (n_layers·R entries)
            h = self.loop(self.blocks, h, rope, mask, hidden, scores)
        else:
            for i, block in enumerate(self.blocks):
                if kv_cache is None:
                    h, s = block(h, rope, mask, output_attentions)
                else:
                    h, s = block(h, rope, mask, output_attentions, kv_cache.layer(i))
                if hidden is not None:
                    hidden.append(h)
                if scores is not None:
                    scores.append(s)
            if kv_cache is not None:
                kv_cache.advance(T)
        if self.final_norm is not None:
            h = self.final_norm(h)

        logits = self.head(h)
        loss = None
        if labels is not None:
            if cfg.head == "cls":
                loss = F.cross_entropy(logits.float(), labels)
            else:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
        return ModelOutput(
            logits=logits, loss=loss,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(scores) if scores is not None else None,
        )

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, D) -> logits."""
        cfg = self.config
        if cfg.head == "lm":
            return F.linear(h, self.output_embeddings())  # (B, T, V)
        if cfg.head == "mlm":
            t = self.mlm_norm(self.mlm_act(self.mlm_dense(h)))
            return F.linear(t, self.output_embeddings(), self.mlm_bias)  # (B, T, V)
        pooled = torch.tanh(self.pooler(h[:, 0]))  # (B, D) from the first ([cls]) token
        return self.classifier(self.drop(pooled))  # (B, n_classes)
