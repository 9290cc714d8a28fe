"""Hugging Face <-> native weight name maps (GPT-2, LLaMA, BERT; the MoE families in hf_moe.py), both directions.

DESIGN.md principle 7: foreign weights load through explicit, templated name maps with shape asserts
both ways, and the maps are tested by comparing logits with the transformers implementation on tiny
random configs (tests/test_interop_hf.py).

Each supported architecture is a table of rows ``(native template, HF template(s), op, condition)``;
``{i}`` stands for the block index. ``op`` says how the tensors relate:

  copy       same tensor, same layout
  transpose  GPT-2 ``Conv1D`` stores weights (in, out); nn.Linear stores (out, in)
  concat     one fused native tensor = HF tensors stacked on dim 0: ``qkv`` = [q; k; v]
             (k/v have n_kv_heads heads) and SwiGLU ``fc1`` = [gate; up]

HF state dicts also hold keys that carry no information of their own: tied duplicates ("aliases",
e.g. ``lm_head.weight`` when embeddings are tied, shape-checked and dropped), buffers (GPT-2's causal
``attn.bias``, ``position_ids``, rotary ``inv_freq``) and, for BertForMaskedLM, the pre-training-only
pooler / next-sentence head that transformers itself drops. They are listed per architecture below; any
other unexpected or missing key is an :class:`InteropError`.

Reading a checkpoint needs only torch, safetensors and json: ``import morphlm.interop.hf`` does not
import transformers. ``config_to_hf``, ``to_hf_module`` (and the tests) do.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from morphlm.model.config import ModelConfig
from morphlm.model.transformer import TransformerLM

__all__ = ["SUPPORTED_ARCHITECTURES", "InteropError", "state_dict_from_hf", "state_dict_to_hf"]


class InteropError(ValueError):
    """A Hugging Face config or checkpoint that morphlm cannot map; the message names the field, key or
    shape at fault and what to do about it."""


# ---------------------------------------------------------------------------------------------- tables
COPY, TRANSPOSE, CONCAT = "copy", "transpose", "concat"
# Row conditions: a row exists only when its condition holds for the native config (and, for block rows, the
# layer: MOE / DENSE rows exist in the routed / dense FFN layers of a mixture-of-experts model).
ALWAYS, BIAS, UNTIED, LEARNED = "always", "bias", "untied", "learned"
MOE, DENSE, DENSE_BIAS, SHARED, SHARED_GATE = "moe", "dense", "dense_bias", "shared", "shared_gate"
QKV_BIAS = "qkv_bias"  # the q/k/v projections have a bias (cfg.qkv_bias, or cfg.bias when that is None)


@dataclass(frozen=True)
class _Row:
    native: str  # template, "{i}" = block index
    hf: tuple[str, ...]  # one template, or several for CONCAT (in stacking order)
    op: str = COPY
    when: str = ALWAYS
    split: str = ""  # CONCAT only: "qkv", "gate_up" or "shared_gate_up" (how many rows each HF tensor holds)


def _r(native: str, hf: str | tuple[str, ...], op: str = COPY, when: str = ALWAYS, split: str = "") -> _Row:
    return _Row(native, hf if isinstance(hf, tuple) else (hf,), op, when, split)


@dataclass(frozen=True)
class _Arch:
    name: str  # transformers class name
    model_type: str
    config_class: str
    base_prefix: str  # prefix of the backbone in the task model ("transformer.", "model.", "bert.")
    embed: tuple[_Row, ...]
    block: tuple[_Row, ...]  # instantiated once per layer
    top: tuple[_Row, ...]  # final norm and head
    tied_aliases: tuple[tuple[str, str], ...]  # (alias, primary): only present when embeddings are tied
    aliases: tuple[tuple[str, str], ...]  # (alias, primary): always the same tensor in HF
    ignored: tuple[str, ...]  # regexes of HF keys that carry no weights we need
    # MoE families: how checkpoints written by save_pretrained lay out the experts (one tensor per expert and
    # projection), read and stacked into the fused 3-D tensors (hf_moe.py); None for dense architectures
    legacy_experts: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


_GPT2_BLOCK = (
    _r("blocks.{i}.norm1.weight", "transformer.h.{i}.ln_1.weight"),
    _r("blocks.{i}.norm1.bias", "transformer.h.{i}.ln_1.bias"),
    # c_attn is already fused with output columns [q | k | v]; Conv1D stores (D, 3D)
    _r("blocks.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", TRANSPOSE),
    _r("blocks.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias"),
    _r("blocks.{i}.attn.proj.weight", "transformer.h.{i}.attn.c_proj.weight", TRANSPOSE),
    _r("blocks.{i}.attn.proj.bias", "transformer.h.{i}.attn.c_proj.bias"),
    _r("blocks.{i}.norm2.weight", "transformer.h.{i}.ln_2.weight"),
    _r("blocks.{i}.norm2.bias", "transformer.h.{i}.ln_2.bias"),
    _r("blocks.{i}.mlp.fc1.weight", "transformer.h.{i}.mlp.c_fc.weight", TRANSPOSE),
    _r("blocks.{i}.mlp.fc1.bias", "transformer.h.{i}.mlp.c_fc.bias"),
    _r("blocks.{i}.mlp.fc2.weight", "transformer.h.{i}.mlp.c_proj.weight", TRANSPOSE),
    _r("blocks.{i}.mlp.fc2.bias", "transformer.h.{i}.mlp.c_proj.bias"),
)

_LLAMA_BLOCK = (
    _r("blocks.{i}.norm1.weight", "model.layers.{i}.input_layernorm.weight"),
    _r("blocks.{i}.attn.qkv.weight", ("model.layers.{i}.self_attn.q_proj.weight",
                                      "model.layers.{i}.self_attn.k_proj.weight",
                                      "model.layers.{i}.self_attn.v_proj.weight"), CONCAT, split="qkv"),
    _r("blocks.{i}.attn.qkv.bias", ("model.layers.{i}.self_attn.q_proj.bias",
                                    "model.layers.{i}.self_attn.k_proj.bias",
                                    "model.layers.{i}.self_attn.v_proj.bias"), CONCAT, BIAS, "qkv"),
    _r("blocks.{i}.attn.proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    _r("blocks.{i}.attn.proj.bias", "model.layers.{i}.self_attn.o_proj.bias", when=BIAS),
    _r("blocks.{i}.norm2.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    _r("blocks.{i}.mlp.fc1.weight", ("model.layers.{i}.mlp.gate_proj.weight",
                                     "model.layers.{i}.mlp.up_proj.weight"), CONCAT, split="gate_up"),
    _r("blocks.{i}.mlp.fc1.bias", ("model.layers.{i}.mlp.gate_proj.bias",
                                   "model.layers.{i}.mlp.up_proj.bias"), CONCAT, BIAS, "gate_up"),
    _r("blocks.{i}.mlp.fc2.weight", "model.layers.{i}.mlp.down_proj.weight"),
    _r("blocks.{i}.mlp.fc2.bias", "model.layers.{i}.mlp.down_proj.bias", when=BIAS),
)

_BERT_EMBED = (
    _r("tok_emb.weight", "bert.embeddings.word_embeddings.weight"),
    _r("pos_emb.weight", "bert.embeddings.position_embeddings.weight"),
    _r("seg_emb.weight", "bert.embeddings.token_type_embeddings.weight"),
    _r("emb_norm.weight", "bert.embeddings.LayerNorm.weight"),
    _r("emb_norm.bias", "bert.embeddings.LayerNorm.bias"),
)

_BERT_BLOCK = (
    _r("blocks.{i}.attn.qkv.weight", ("bert.encoder.layer.{i}.attention.self.query.weight",
                                      "bert.encoder.layer.{i}.attention.self.key.weight",
                                      "bert.encoder.layer.{i}.attention.self.value.weight"), CONCAT, split="qkv"),
    _r("blocks.{i}.attn.qkv.bias", ("bert.encoder.layer.{i}.attention.self.query.bias",
                                    "bert.encoder.layer.{i}.attention.self.key.bias",
                                    "bert.encoder.layer.{i}.attention.self.value.bias"), CONCAT, split="qkv"),
    _r("blocks.{i}.attn.proj.weight", "bert.encoder.layer.{i}.attention.output.dense.weight"),
    _r("blocks.{i}.attn.proj.bias", "bert.encoder.layer.{i}.attention.output.dense.bias"),
    # post-norm: norm1 follows the attention residual, norm2 the MLP residual
    _r("blocks.{i}.norm1.weight", "bert.encoder.layer.{i}.attention.output.LayerNorm.weight"),
    _r("blocks.{i}.norm1.bias", "bert.encoder.layer.{i}.attention.output.LayerNorm.bias"),
    _r("blocks.{i}.mlp.fc1.weight", "bert.encoder.layer.{i}.intermediate.dense.weight"),
    _r("blocks.{i}.mlp.fc1.bias", "bert.encoder.layer.{i}.intermediate.dense.bias"),
    _r("blocks.{i}.mlp.fc2.weight", "bert.encoder.layer.{i}.output.dense.weight"),
    _r("blocks.{i}.mlp.fc2.bias", "bert.encoder.layer.{i}.output.dense.bias"),
    _r("blocks.{i}.norm2.weight", "bert.encoder.layer.{i}.output.LayerNorm.weight"),
    _r("blocks.{i}.norm2.bias", "bert.encoder.layer.{i}.output.LayerNorm.bias"),
)

_BERT_IGNORED = (r"bert\.embeddings\.position_ids", r"bert\.embeddings\.token_type_ids")

_ARCHS: dict[str, _Arch] = {
    a.name: a
    for a in (
        _Arch(
            name="GPT2LMHeadModel", model_type="gpt2", config_class="GPT2Config", base_prefix="transformer.",
            embed=(_r("tok_emb.weight", "transformer.wte.weight"), _r("pos_emb.weight", "transformer.wpe.weight")),
            block=_GPT2_BLOCK,
            top=(_r("final_norm.weight", "transformer.ln_f.weight"), _r("final_norm.bias", "transformer.ln_f.bias"),
                 _r("lm_head.weight", "lm_head.weight", when=UNTIED)),
            tied_aliases=(("lm_head.weight", "transformer.wte.weight"),),
            aliases=(),
            # the lower-triangular mask buffers of older transformers versions
            ignored=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",),
        ),
        _Arch(
            name="LlamaForCausalLM", model_type="llama", config_class="LlamaConfig", base_prefix="model.",
            embed=(_r("tok_emb.weight", "model.embed_tokens.weight"),),
            block=_LLAMA_BLOCK,
            top=(_r("final_norm.weight", "model.norm.weight"), _r("lm_head.weight", "lm_head.weight", when=UNTIED)),
            tied_aliases=(("lm_head.weight", "model.embed_tokens.weight"),),
            aliases=(),
            ignored=(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
        ),
        _Arch(
            name="BertForMaskedLM", model_type="bert", config_class="BertConfig", base_prefix="bert.",
            embed=_BERT_EMBED,
            block=_BERT_BLOCK,
            top=(_r("mlm_dense.weight", "cls.predictions.transform.dense.weight"),
                 _r("mlm_dense.bias", "cls.predictions.transform.dense.bias"),
                 _r("mlm_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
                 _r("mlm_norm.bias", "cls.predictions.transform.LayerNorm.bias"),
                 _r("mlm_bias", "cls.predictions.bias"),
                 _r("lm_head.weight", "cls.predictions.decoder.weight", when=UNTIED)),
            tied_aliases=(("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),),
            # BertLMPredictionHead sets decoder.bias = bias (one Parameter under two names)
            aliases=(("cls.predictions.decoder.bias", "cls.predictions.bias"),),
            # pooler and next-sentence head of BertForPreTraining checkpoints: unused by the masked LM,
            # dropped by transformers' own BertForMaskedLM.from_pretrained as well
            ignored=_BERT_IGNORED + (r"bert\.pooler\..*", r"cls\.seq_relationship\..*"),
        ),
        _Arch(
            name="BertForSequenceClassification", model_type="bert", config_class="BertConfig", base_prefix="bert.",
            embed=_BERT_EMBED,
            block=_BERT_BLOCK,
            top=(_r("pooler.weight", "bert.pooler.dense.weight"), _r("pooler.bias", "bert.pooler.dense.bias"),
                 _r("classifier.weight", "classifier.weight"), _r("classifier.bias", "classifier.bias")),
            tied_aliases=(),
            aliases=(),
            ignored=_BERT_IGNORED,
        ),
    )
}

SUPPORTED_ARCHITECTURES = tuple(_ARCHS)
# model_type -> architecture when config.json names none
_DEFAULT_ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM"}


def _arch(arch: str) -> _Arch:
    if arch not in _ARCHS:
        raise InteropError(f"unsupported Hugging Face architecture {arch!r}; morphlm maps {list(_ARCHS)}. "
                           f"Load the checkpoint into one of these classes, or add a table to morphlm/interop/hf.py")
    return _ARCHS[arch]


# ---------------------------------------------------------------------------------------------- concrete maps
@dataclass(frozen=True)
class _Pair:
    native: str
    hf: tuple[str, ...]
    op: str
    sizes: tuple[int, ...]  # CONCAT: rows per HF tensor


@dataclass
class _Map:
    pairs: list[_Pair]
    aliases: dict[str, str]  # alias HF key -> primary HF key
    ignored: re.Pattern
    constants: dict[str, torch.Tensor]  # HF keys with a fixed value that the native model does not store


def _build_map(cfg: ModelConfig, arch: str) -> _Map:
    a = _arch(arch)
    routed = a.legacy_experts is not None
    if cfg.moe_experts and not routed:
        raise InteropError(f"ModelConfig {cfg.name!r} routes its FFNs through {cfg.moe_experts} experts "
                           f"(moe_experts={cfg.moe_experts}) but {arch} is a dense Hugging Face class with one FFN per "
                           f"layer; export a routed model to a mixture-of-experts class "
                           f"({', '.join(n for n, x in _ARCHS.items() if x.legacy_experts is not None)}), or "
                           f"convert a dense model (moe_experts=0) to {arch}")
    if routed and not cfg.moe_experts:
        raise InteropError(f"{arch} is a mixture-of-experts class but ModelConfig {cfg.name!r} is dense "
                           f"(moe_experts=0); use the config of a routed model (moe_experts > 0), or a dense class")
    shared = cfg.moe_shared_experts * cfg.expert_d_ff if cfg.moe_experts else 0
    sizes = {"qkv": (cfg.d_model, cfg.kv_dim, cfg.kv_dim), "gate_up": (cfg.d_ff, cfg.d_ff),
             "shared_gate_up": (shared, shared)}
    native_keys = set(_native_shapes(cfg))
    moe_layers = set(cfg.moe_layer_ids) if cfg.moe_experts else set()

    def keep(row: _Row, i) -> bool:
        if row.when == BIAS:
            return cfg.bias
        if row.when == UNTIED:
            return not cfg.tie_embeddings
        if row.when == QKV_BIAS:
            return cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
        if row.when in (MOE, DENSE, DENSE_BIAS, SHARED, SHARED_GATE):
            if (i in moe_layers) != (row.when in (MOE, SHARED, SHARED_GATE)):
                return False
            if row.when == DENSE_BIAS:
                return cfg.bias
            if row.when in (SHARED, SHARED_GATE):
                return cfg.moe_shared_experts > 0 and (row.when == SHARED or cfg.moe_shared_gate)
        return True

    def inst(rows, i=None) -> list[_Pair]:
        out = []
        for row in rows:
            if not keep(row, i):
                continue
            native = row.native.format(i=i)
            if native == "seg_emb.weight" and cfg.n_segments == 0:
                continue  # handled as a constant below
            out.append(_Pair(native, tuple(h.format(i=i) for h in row.hf), row.op,
                             sizes[row.split] if row.op == CONCAT else ()))
        return out

    pairs = inst(a.embed)
    for i in range(cfg.n_layers):
        pairs += inst(a.block, i)
    pairs += inst(a.top)
    mapped = {p.native for p in pairs}
    if mapped != native_keys:  # e.g. sandwich norms, or a head the architecture does not have
        raise InteropError(f"ModelConfig {cfg.name!r} does not fit {arch}: native parameters without an HF "
                           f"counterpart: {_list(native_keys - mapped) or 'none'}; map rows without a native "
                           f"parameter: {_list(mapped - native_keys) or 'none'}. Check head, norm_placement, "
                           f"position and n_segments against the architecture")
    aliases = dict(a.aliases)
    if cfg.tie_embeddings:
        aliases.update(a.tied_aliases)
    constants = {}
    if a.model_type == "bert" and cfg.n_segments == 0:
        # BertEmbeddings always adds a token-type embedding; a single all-zero row is the identity
        constants["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
    ignored = re.compile("|".join(f"(?:{p})" for p in a.ignored) or r"(?!)")
    return _Map(pairs, aliases, ignored, constants)


def _native_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of TransformerLM(cfg), read off a meta-device instance (no memory, no init cost),
    so the maps are checked against the model itself rather than a second description of it."""
    return dict(_shapes_for(cfg.to_json()))


@functools.lru_cache(maxsize=32)
def _shapes_for(cfg_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = TransformerLM(ModelConfig.from_dict(json.loads(cfg_json)))
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _hf_shapes(pair: _Pair, native_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if pair.op == COPY:
        return [native_shape]
    if pair.op == TRANSPOSE:
        return [tuple(reversed(native_shape))]
    return [(n,) + native_shape[1:] for n in pair.sizes]


def _check_shape(key: str, side: str, got: torch.Tensor, expected: tuple[int, ...], cfg: ModelConfig) -> None:
    if tuple(got.shape) != tuple(expected):
        raise InteropError(f"shape mismatch for {side} key {key!r}: expected {tuple(expected)} from the config "
                           f"(d_model={cfg.d_model}, n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, "
                           f"d_ff={cfg.d_ff}, vocab_size={cfg.vocab_size}), got {tuple(got.shape)}; "
                           f"the checkpoint does not match its config.json")


def _list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


# ---------------------------------------------------------------------------------------------- state dicts
def _normalize_hf_keys(hf_state: Mapping[str, torch.Tensor], a: _Arch) -> dict[str, torch.Tensor]:
    """Accept the two layouts transformers itself accepts: checkpoints saved from the bare backbone
    (GPT2Model / LlamaModel / BertModel: keys without ``transformer.``/``model.``/``bert.``, e.g. the
    original ``gpt2`` weights) and TF-era BERT LayerNorm names ``gamma``/``beta``."""
    state = dict(hf_state)
    if state and not any(k.startswith(a.base_prefix) for k in state):
        state = {a.base_prefix + k: v for k, v in state.items()}
    if a.legacy_experts is not None:
        state = a.legacy_experts(state)
    if a.model_type == "bert":
        renamed = {}
        for k, v in state.items():
            if "LayerNorm." in k:
                k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
            renamed[k] = v
        state = renamed
    return state


def state_dict_from_hf(hf_state: Mapping[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """HF state dict (as ``model.state_dict()`` or a safetensors file holds it) -> native state dict for
    ``TransformerLM(cfg)``. Every HF key is consumed, recognised as a tied alias / buffer, or an error."""
    a = _arch(arch)
    m = _build_map(cfg, arch)
    shapes = _native_shapes(cfg)
    state = _normalize_hf_keys(hf_state, a)
    used: set[str] = set()
    missing: list[str] = []
    out: dict[str, torch.Tensor] = {}

    def fetch(key: str) -> torch.Tensor | None:
        if key in state:
            used.add(key)
            return state[key]
        for alias, primary in m.aliases.items():  # e.g. only lm_head.weight stored for tied embeddings
            if primary == key and alias in state:
                used.add(alias)
                return state[alias]
        return None

    hf_expected: dict[str, tuple[int, ...]] = {}
    for pair in m.pairs:
        native_shape = shapes[pair.native]
        tensors = []
        for key, shape in zip(pair.hf, _hf_shapes(pair, native_shape)):
            hf_expected[key] = shape
            t = fetch(key)
            if t is None:
                missing.append(key)
                continue
            _check_shape(key, "Hugging Face", t, shape, cfg)
            tensors.append(t)
        if len(tensors) != len(pair.hf):
            continue
        if pair.op == COPY:
            value = tensors[0]
        elif pair.op == TRANSPOSE:
            value = tensors[0].t()
        else:
            value = torch.cat(tensors, dim=0)
        _check_shape(pair.native, "native", value, native_shape, cfg)
        out[pair.native] = value.detach().clone(memory_format=torch.contiguous_format)
    routed = a.legacy_experts is None and any(".experts." in k or ".mlp.gate." in k or "block_sparse_moe" in k
                                              for k in set(state) - used)
    moe_classes = ", ".join(n for n, x in _ARCHS.items() if x.legacy_experts)
    hint = (f" — the checkpoint holds mixture-of-experts weights (routers and experts): it is a routed model, so "
            f"load it with its own mixture-of-experts class ({moe_classes}) and a config.json that names it"
            if routed else "")
    if missing:
        raise InteropError(f"{arch} checkpoint is missing {len(missing)} key(s) the config needs: {_list(missing)}; "
                           f"check that config.json (n_layers, bias, tie_word_embeddings) matches the weights{hint}")

    for key, const in m.constants.items():
        if key in state:
            used.add(key)
            _check_shape(key, "Hugging Face", state[key], tuple(const.shape), cfg)
            if state[key].abs().max() != 0:
                raise InteropError(f"{key!r} is non-zero but the native config has n_segments=0; "
                                   f"use n_segments={state[key].shape[0]} to keep the token-type embeddings")
    extra = []
    for key in set(state) - used:
        if key in m.aliases:
            # a tied duplicate: same tensor as its primary, so only its shape can be wrong
            _check_shape(key, "Hugging Face", state[key], hf_expected[m.aliases[key]], cfg)
        elif not m.ignored.fullmatch(key):
            extra.append(key)
    if extra:
        raise InteropError(f"{arch} checkpoint has {len(extra)} key(s) with no native counterpart: {_list(extra)}; "
                           f"the config does not describe these weights (e.g. biases with bias=False, or an "
                           f"untied head with tie_word_embeddings=True){hint}")
    return out


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """Native state dict -> HF state dict for ``arch``, as transformers' ``save_pretrained`` writes it:
    tied duplicates are omitted, every tensor is a fresh contiguous copy (no shared storage)."""
    m = _build_map(cfg, arch)
    shapes = _native_shapes(cfg)
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    wanted = {p.native for p in m.pairs}
    missing = sorted(wanted - set(state))
    extra = sorted(set(state) - wanted)
    if missing or extra:
        raise InteropError(f"native state dict does not match {arch} for config {cfg.name!r}: "
                           f"missing {_list(missing) or 'none'}; unexpected {_list(extra) or 'none'}")
    out: dict[str, torch.Tensor] = {}
    for pair in m.pairs:
        t = state[pair.native].detach()
        _check_shape(pair.native, "native", t, shapes[pair.native], cfg)
        if pair.op == COPY:
            parts = [t]
        elif pair.op == TRANSPOSE:
            parts = [t.t()]
        else:
            parts = list(torch.split(t, pair.sizes, dim=0))
        for key, part, shape in zip(pair.hf, parts, _hf_shapes(pair, shapes[pair.native])):
            _check_shape(key, "Hugging Face", part, shape, cfg)
            out[key] = part.clone(memory_format=torch.contiguous_format)
    like = next(iter(out.values()))
    for key, const in m.constants.items():
        out[key] = const.to(dtype=like.dtype, device=like.device)
    return out
