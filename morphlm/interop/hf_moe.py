"""Hugging Face mixture-of-experts families <-> native routed models: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE.

The weight tables follow the dense ones in :mod:`morphlm.interop.hf_maps` (same rows, ops and conditions) and are
registered there, so ``state_dict_from_hf`` / ``state_dict_to_hf`` / ``load_hf_model`` / ``export_hf_model`` and
``morphlm convert`` treat them like any other architecture. Layout, as transformers 5 holds it in memory:

  ``mlp.gate.weight`` (E, H)                 = ``blocks.{i}.mlp.router.weight`` (E, d)
  ``mlp.experts.gate_up_proj`` (E, 2I, H)    = ``blocks.{i}.mlp.experts.w1`` (E, 2·d_ff, d), gate rows first
  ``mlp.experts.down_proj`` (E, H, I)        = ``blocks.{i}.mlp.experts.w2`` (E, d, d_ff)
  Qwen2-MoE ``mlp.shared_expert.{gate,up}_proj`` = ``shared_w1`` [gate; up], ``down_proj`` = ``shared_w2``,
  ``mlp.shared_expert_gate.weight`` (1, H) = ``shared_gate`` (moe_shared_gate: sigmoid(x·g) scales the shared output)
  Qwen3-MoE ``self_attn.{q,k}_norm`` (head_dim) and OLMoE's (d_model / kv_dim) = ``attn.{q,k}_norm`` (qk_norm
  'head' / 'full')

``save_pretrained`` writes the older per-expert layout (Mixtral ``block_sparse_moe.experts.{j}.w1/w3/w2`` for
gate/up/down; Qwen and OLMoE ``mlp.experts.{j}.gate_proj/up_proj/down_proj``); reading stacks those into the fused
tensors, so folders in either layout import. Export writes the fused layout, which ``from_pretrained`` reads too.

Router semantics per family (all softmax over the E logits, then top-k): Mixtral renormalises the top-k gates
(softmax over the k chosen logits, the same numbers): ``moe_renormalize=True``; Qwen2-MoE, Qwen3-MoE and OLMoE
renormalise when ``norm_topk_prob``. Dense FFN layers of Qwen models (``mlp_only_layers``, ``decoder_sparse_step``)
become ``moe_layers``; their width is ``intermediate_size`` (native ``d_ff``), the experts' ``moe_intermediate_size``
(``moe_expert_d_ff``). What the native model cannot represent is refused with the field named.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from morphlm.model.config import ConfigError, ModelConfig

from .hf_maps import (_ARCHS, _DEFAULT_ARCH, _LLAMA_BLOCK, CONCAT, DENSE, DENSE_BIAS, MOE, QKV_BIAS, SHARED,
                      SHARED_GATE, UNTIED, InteropError, _Arch, _r)

MOE_ARCHITECTURES = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM")

_P = "model.layers.{i}."
# input norm, q/k/v (fused natively; their bias may stand alone: Qwen2-MoE's qkv_bias), o, post-attention norm
_ATTN = (_LLAMA_BLOCK[0], _LLAMA_BLOCK[1], dataclasses.replace(_LLAMA_BLOCK[2], when=QKV_BIAS)) + _LLAMA_BLOCK[3:6]
_DENSE_MLP = (
    _r("blocks.{i}.mlp.fc1.weight", (_P + "mlp.gate_proj.weight", _P + "mlp.up_proj.weight"), CONCAT, DENSE, "gate_up"),
    _r("blocks.{i}.mlp.fc1.bias", (_P + "mlp.gate_proj.bias", _P + "mlp.up_proj.bias"), CONCAT, DENSE_BIAS, "gate_up"),
    _r("blocks.{i}.mlp.fc2.weight", _P + "mlp.down_proj.weight", when=DENSE),
    _r("blocks.{i}.mlp.fc2.bias", _P + "mlp.down_proj.bias", when=DENSE_BIAS),
)
_EXPERTS = (
    _r("blocks.{i}.mlp.router.weight", _P + "mlp.gate.weight", when=MOE),
    _r("blocks.{i}.mlp.experts.w1", _P + "mlp.experts.gate_up_proj", when=MOE),
    _r("blocks.{i}.mlp.experts.w2", _P + "mlp.experts.down_proj", when=MOE),
)
_SHARED = (
    _r("blocks.{i}.mlp.shared_w1", (_P + "mlp.shared_expert.gate_proj.weight", _P + "mlp.shared_expert.up_proj.weight"),
       CONCAT, SHARED, "shared_gate_up"),
    _r("blocks.{i}.mlp.shared_w2", _P + "mlp.shared_expert.down_proj.weight", when=SHARED),
    _r("blocks.{i}.mlp.shared_gate", _P + "mlp.shared_expert_gate.weight", when=SHARED_GATE),
)
_QK = (
    _r("blocks.{i}.attn.q_norm.weight", _P + "self_attn.q_norm.weight"),
    _r("blocks.{i}.attn.k_norm.weight", _P + "self_attn.k_norm.weight"),
)
_EMBED = (_r("tok_emb.weight", "model.embed_tokens.weight"),)
_TOP = (_r("final_norm.weight", "model.norm.weight"), _r("lm_head.weight", "lm_head.weight", when=UNTIED))


def _legacy(old_block: str, names: tuple[str, str, str]):
    """Reader of the per-expert layout: ``model.layers.{i}.<old_block>.experts.{j}.<gate|up|down>.weight`` and
    ``<old_block>.gate.weight`` -> the fused ``mlp.experts.gate_up_proj`` / ``down_proj`` and ``mlp.gate.weight``."""
    gate_n, up_n, down_n = names
    pat = re.compile(rf"model\.layers\.(\d+)\.{re.escape(old_block)}\.experts\.(\d+)\.(\w+)\.weight")

    def stack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        per: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
        out: dict[str, torch.Tensor] = {}
        for key, t in state.items():
            m = pat.fullmatch(key)
            if m and m.group(3) in names:
                per.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
                continue
            if old_block != "mlp" and f".{old_block}.gate.weight" in key:
                key = key.replace(f".{old_block}.", ".mlp.")
            out[key] = t
        for layer, experts in per.items():
            n = max(experts) + 1
            absent = [f"{j}.{p}" for j in range(n) for p in names if p not in experts.get(j, {})]
            if absent:
                raise InteropError(f"layer {layer} of the checkpoint stores its experts one by one "
                                   f"({old_block}.experts.J.{gate_n}/{up_n}/{down_n}) but lacks {absent[:6]}; the "
                                   f"checkpoint is incomplete (re-save it with transformers' save_pretrained)")
            fused = f"model.layers.{layer}.mlp.experts."
            out[fused + "gate_up_proj"] = torch.stack([torch.cat([experts[j][gate_n], experts[j][up_n]], 0)
                                                       for j in range(n)])
            out[fused + "down_proj"] = torch.stack([experts[j][down_n] for j in range(n)])
        return out

    return stack


_QWEN_LEGACY = _legacy("mlp", ("gate_proj", "up_proj", "down_proj"))


def _family(name: str, model_type: str, block: tuple) -> _Arch:
    return _Arch(name=name, model_type=model_type, config_class=name.replace("ForCausalLM", "Config"),
                 base_prefix="model.", embed=_EMBED, block=block, top=_TOP,
                 tied_aliases=(("lm_head.weight", "model.embed_tokens.weight"),), aliases=(),
                 ignored=(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
                 legacy_experts=_legacy("block_sparse_moe", ("w1", "w3", "w2")) if model_type == "mixtral"
                 else _QWEN_LEGACY)


_FAMILIES = {
    "MixtralForCausalLM": _family("MixtralForCausalLM", "mixtral", _ATTN + _EXPERTS),
    "Qwen2MoeForCausalLM": _family("Qwen2MoeForCausalLM", "qwen2_moe", _ATTN + _DENSE_MLP + _EXPERTS + _SHARED),
    "Qwen3MoeForCausalLM": _family("Qwen3MoeForCausalLM", "qwen3_moe", _ATTN + _QK + _DENSE_MLP + _EXPERTS),
    "OlmoeForCausalLM": _family("OlmoeForCausalLM", "olmoe", _ATTN + _QK + _EXPERTS),
}
_ARCHS.update(_FAMILIES)
_DEFAULT_ARCH.update({a.model_type: a.name for a in _FAMILIES.values()})
MOE_MODEL_TYPES = tuple(a.model_type for a in _FAMILIES.values())


# ---------------------------------------------------------------------------------------------- configs
def _need(cond: bool, field: str, value: Any, msg: str) -> None:
    if not cond:
        raise InteropError(f"unsupported Hugging Face config field {field}={value!r}: {msg}")


def _req(d: dict[str, Any], key: str) -> Any:
    if d.get(key) is None:
        raise InteropError(f"Hugging Face config lacks the required field {key!r}; "
                           f"the config.json is incomplete or belongs to another architecture")
    return d[key]


def config_from_hf_moe(d: dict[str, Any], arch: str) -> ModelConfig:
    """config.json dict of one of :data:`MOE_ARCHITECTURES` -> ModelConfig (routed FFNs, softmax router)."""
    model_type = _FAMILIES[arch].model_type
    act = d.get("hidden_act", "silu")
    _need(act in ("silu", "swish"), "hidden_act", act, "the native experts are SwiGLU (SiLU)")
    hidden, heads, n_layers = _req(d, "hidden_size"), _req(d, "num_attention_heads"), _req(d, "num_hidden_layers")
    head_dim = d.get("head_dim")
    _need(head_dim in (None, hidden // heads), "head_dim", head_dim,
          f"the native attention needs head_dim = hidden_size / num_attention_heads = {hidden // heads}")
    rope = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    for field, spec in (("rope_parameters", rope), ("rope_scaling", scaling)):
        kind = spec.get("rope_type", spec.get("type", "default"))
        _need(kind == "default", field, spec, "only plain RoPE (rope_type='default') is implemented natively")
    theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
    max_pos = d.get("max_position_embeddings", 2048)
    if model_type == "mixtral":
        window = d.get("sliding_window")
        _need(window is None or window >= max_pos, "sliding_window", window,
              "the native attention is full causal attention; use sliding_window=null")
        _need(not d.get("router_jitter_noise"), "router_jitter_noise", d.get("router_jitter_noise"),
              "the native router has no multiplicative input jitter; set it to 0")
    if model_type in ("qwen2_moe", "qwen3_moe"):
        _need(not d.get("use_sliding_window", False), "use_sliding_window", True,
              "the native attention is full causal attention; set use_sliding_window=false")
    if model_type == "olmoe":
        _need(d.get("clip_qkv") is None, "clip_qkv", d.get("clip_qkv"),
              "the native attention does not clip q/k/v; set clip_qkv=null")
    # Qwen3MoeConfig writes its expert count under both names (an attribute map); the others under one
    n_experts = d.get("num_experts") if model_type != "mixtral" else None
    n_experts = n_experts or _req(d, "num_local_experts" if model_type == "mixtral" or "num_local_experts" in d
                                  else "num_experts")
    dense_layers: list[int] = []
    shared = 0
    if model_type in ("qwen2_moe", "qwen3_moe"):
        step = d.get("decoder_sparse_step", 1) or 1
        only = set(d.get("mlp_only_layers") or [])
        dense_layers = [i for i in range(n_layers) if i in only or (i + 1) % step != 0]
        expert_ff, dense_ff = _req(d, "moe_intermediate_size"), _req(d, "intermediate_size")
    else:
        expert_ff = dense_ff = _req(d, "intermediate_size")
    qkv_bias = None
    if model_type == "qwen2_moe":
        qkv_bias = bool(d.get("qkv_bias", True)) or None  # q/k/v biased, o_proj and the FFNs not: bias=False
        width = _req(d, "shared_expert_intermediate_size")
        _need(width > 0 and width % expert_ff == 0, "shared_expert_intermediate_size", width,
              f"the native shared experts are n copies of the expert width moe_intermediate_size={expert_ff}; "
              f"it must be a positive multiple of it")
        shared = width // expert_ff
        bias = False
    elif model_type == "mixtral":
        bias = False
    else:
        bias = bool(d.get("attention_bias", False))
        _need(not (bias and dense_layers), "attention_bias", True,
              f"the native bias flag also adds biases to the dense FFN layers {dense_layers}, which have none in "
              f"{arch}; only attention_bias=false maps when some layers are dense")
    _need(len(dense_layers) < n_layers, "mlp_only_layers", d.get("mlp_only_layers"),
          f"every layer is dense: load it as a dense model (LlamaForCausalLM) instead of {arch}")
    moe_layers = "all" if not dense_layers else ",".join(str(i) for i in range(n_layers) if i not in dense_layers)
    renorm = True if model_type == "mixtral" else bool(d.get("norm_topk_prob", False))
    fields = dict(
        vocab_size=_req(d, "vocab_size"), d_model=hidden, n_layers=n_layers, n_heads=heads,
        n_kv_heads=d.get("num_key_value_heads") or heads, d_ff=dense_ff, max_seq_len=max_pos, activation="swiglu",
        norm="rmsnorm", norm_placement="pre", norm_eps=d.get("rms_norm_eps", 1e-6), position="rope",
        rope_theta=float(theta), causal=True, tie_embeddings=d.get("tie_word_embeddings", False), bias=bias,
        qkv_bias=qkv_bias,
        head="lm", dropout=d.get("attention_dropout", 0.0) or 0.0, init_std=d.get("initializer_range", 0.02),
        qk_norm={"qwen3_moe": "head", "olmoe": "full"}.get(model_type, "none"),
        moe_experts=n_experts, moe_top_k=_req(d, "num_experts_per_tok"), moe_shared_experts=shared,
        moe_shared_gate=shared > 0, moe_expert_d_ff=None if expert_ff == dense_ff else expert_ff,
        moe_router="softmax", moe_renormalize=renorm, moe_balance="aux",
        moe_aux_coef=float(d.get("router_aux_loss_coef", 0.01)), moe_layers=moe_layers, name=f"hf-{model_type}",
    )
    try:
        return ModelConfig(**fields)
    except ConfigError as exc:
        raise InteropError(f"the {arch} config maps to an invalid ModelConfig: {exc}") from exc


def hf_config_dict_moe(cfg: ModelConfig) -> tuple[dict[str, Any], str]:
    """Routed ModelConfig -> (config.json dict, architecture): the family is chosen by the features the model has
    (gated shared experts: Qwen2-MoE; per-head QK-norm: Qwen3-MoE; full-width QK-norm: OLMoE; otherwise Mixtral).
    Whatever none of the four can hold is refused with the field named."""

    def refuse(field: str, why: str, fix: str) -> None:
        raise InteropError(f"cannot export ModelConfig field {field}={getattr(cfg, field)!r} to Hugging Face: {why}. "
                           f"{fix}; nothing was written")

    if cfg.loop_repeats is not None:
        refuse("loop_repeats", "LoopMoE (looped, weight-shared blocks with IterAdaLN) has no Hugging Face class",
               "Keep the model native (morphlm checkpoints load with every morphlm verb)")
    if cfg.moe_pool:
        refuse("moe_pool", "UniPool's expert pool shared across layers has no Hugging Face class (every HF MoE "
                           "class owns its experts per layer)", "Keep the model native")
    if cfg.moe_router != "softmax":
        refuse("moe_router", "Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE route with a softmax over the expert logits",
               "Export a model trained with moe_router='softmax', or keep it native")
    if cfg.moe_balance == "loss_free":
        refuse("moe_balance", "loss-free balancing selects experts with a learned score bias that these HF routers "
                              "do not have", "Export a model trained with moe_balance='aux' or 'none'")
    if cfg.moe_capacity_factor is not None:
        refuse("moe_capacity_factor", "the HF MoE classes are dropless (no expert capacity)",
               "Set moe_capacity_factor=null (the weights are the same; only token dropping changes)")
    for field, ok, want in (("head", cfg.head == "lm", "'lm'"), ("activation", cfg.activation == "swiglu", "'swiglu'"),
                            ("norm", cfg.norm == "rmsnorm", "'rmsnorm'"),
                            ("position", cfg.position == "rope", "'rope'"),
                            ("norm_placement", cfg.norm_placement == "pre", "'pre'"),
                            ("final_norm", bool(cfg.final_norm), "true"), ("embed_norm", not cfg.embed_norm, "false"),
                            ("n_segments", cfg.n_segments == 0, "0")):
        if not ok:
            refuse(field, f"the HF mixture-of-experts classes need {field}={want}", "Keep the model native")
    if cfg.moe_shared_experts:
        arch = "Qwen2MoeForCausalLM"
        if not cfg.moe_shared_gate:
            refuse("moe_shared_gate", "Qwen2-MoE, the only mapped class with shared experts, scales them by a "
                                      "learned sigmoid gate; ungated (DeepSeekMoE-style) shared experts have no mapped "
                                      "class", "Train with moe_shared_gate=true, or keep the model native")
        if cfg.qk_norm != "none":
            refuse("qk_norm", "Qwen2-MoE has no QK-norm", "Keep the model native")
    elif cfg.qk_norm == "head":
        arch = "Qwen3MoeForCausalLM"
    elif cfg.qk_norm == "full":
        arch = "OlmoeForCausalLM"
    else:
        arch = "MixtralForCausalLM"
        if not cfg.moe_renormalize:
            refuse("moe_renormalize", "Mixtral always renormalises the top-k gates, and a model without shared "
                                      "experts or QK-norm maps to Mixtral", "Train with moe_renormalize=true")
    all_moe = len(cfg.moe_layer_ids) == cfg.n_layers
    if arch in ("MixtralForCausalLM", "OlmoeForCausalLM") and not all_moe:
        refuse("moe_layers", f"{arch} routes every layer", "Use moe_layers='all'")
    if cfg.bias and (arch in ("MixtralForCausalLM", "Qwen2MoeForCausalLM") or not all_moe):
        refuse("bias", f"{arch} has no biases where the native bias flag adds them"
                       + (" (o_proj)" if arch == "Qwen2MoeForCausalLM" else "" if all_moe else " (the dense FFN layers)"),
               "Export a model with bias=false")
    qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
    if qkv_bias and arch == "MixtralForCausalLM":
        refuse("qkv_bias", "Mixtral has no attention biases", "Export a model with bias=false and qkv_bias=null")
    if qkv_bias != cfg.bias and arch != "Qwen2MoeForCausalLM":
        refuse("qkv_bias", f"{arch} biases q/k/v and o_proj together (or neither)",
               "Export a model whose qkv_bias is null or equals bias")
    d: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        hidden_act="silu", max_position_embeddings=cfg.max_seq_len, initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, attention_dropout=cfg.dropout,
        num_experts_per_tok=cfg.moe_top_k, router_aux_loss_coef=cfg.moe_aux_coef if cfg.moe_balance == "aux" else 0.0,
        output_router_logits=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if arch == "MixtralForCausalLM":
        d.update(model_type="mixtral", intermediate_size=cfg.expert_d_ff, num_local_experts=cfg.moe_experts,
                 sliding_window=None, router_jitter_noise=0.0)
    elif arch == "OlmoeForCausalLM":
        d.update(model_type="olmoe", intermediate_size=cfg.expert_d_ff, num_experts=cfg.moe_experts,
                 norm_topk_prob=cfg.moe_renormalize, attention_bias=cfg.bias, clip_qkv=None)
    else:
        dense = [i for i in range(cfg.n_layers) if i not in cfg.moe_layer_ids]
        d.update(model_type="qwen2_moe" if arch == "Qwen2MoeForCausalLM" else "qwen3_moe", intermediate_size=cfg.d_ff,
                 moe_intermediate_size=cfg.expert_d_ff, num_experts=cfg.moe_experts, norm_topk_prob=cfg.moe_renormalize,
                 decoder_sparse_step=1, mlp_only_layers=dense, use_sliding_window=False, sliding_window=None)
        if arch == "Qwen2MoeForCausalLM":
            d.update(shared_expert_intermediate_size=cfg.moe_shared_experts * cfg.expert_d_ff, qkv_bias=qkv_bias)
        else:
            d.update(attention_bias=cfg.bias)
    d["architectures"] = [arch]
    return d, arch
