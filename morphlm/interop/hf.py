"""Hugging Face <-> native models: configs, local directories, in-memory modules.

The weight name tables and state-dict conversions live in :mod:`morphlm.interop.hf_maps`; this module
maps configs (GPT2Config / LlamaConfig / BertConfig <-> ModelConfig; the MoE families' configs in
:mod:`morphlm.interop.hf_moe`), reads and writes local Hugging Face
directories (safetensors only) and converts in-memory transformers modules. ``import morphlm.interop.hf``
does not import transformers; ``config_to_hf`` and ``to_hf_module`` do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from morphlm.io import atomic_path, write_atomic
from morphlm.model.config import ConfigError, ModelConfig
from morphlm.model.transformer import TransformerLM

from .hf_maps import (_ARCHS, _DEFAULT_ARCH, InteropError, _arch, _build_map, _list, state_dict_from_hf,
                      state_dict_to_hf)
from .hf_moe import MOE_MODEL_TYPES, config_from_hf_moe, hf_config_dict_moe

SUPPORTED_ARCHITECTURES = tuple(_ARCHS)  # the dense tables of hf_maps and the MoE families of hf_moe

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "InteropError",
    "config_from_hf",
    "config_to_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "load_hf_model",
    "export_hf_model",
    "hf_token_roles",
    "from_hf_module",
    "to_hf_module",
]


# ---------------------------------------------------------------------------------------------- configs
# HF activation name -> native. "gelu_new" is GPT-2's tanh approximation written out; PyTorch's
# approximate="tanh" is the same function (agrees to ~1e-7).
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _as_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        d = hf_config.to_dict()
        if hasattr(hf_config, "num_labels"):
            d["num_labels"] = hf_config.num_labels
        return d
    raise InteropError(f"expected a transformers config or a config.json dict, got {type(hf_config).__name__}")


def _resolve_arch(d: dict[str, Any], arch: str | None) -> str:
    if arch is None:
        archs = d.get("architectures") or []
        if archs:
            arch = archs[0]
        else:
            model_type = d.get("model_type")
            if model_type not in _DEFAULT_ARCH:
                raise InteropError(f"config has model_type={model_type!r} and no 'architectures'; morphlm maps "
                                   f"model types {sorted(_DEFAULT_ARCH)} ({list(_ARCHS)})")
            arch = _DEFAULT_ARCH[model_type]
    a = _arch(arch)
    if d.get("model_type", a.model_type) != a.model_type:
        raise InteropError(f"config model_type={d.get('model_type')!r} does not match architecture {arch} "
                           f"(expects {a.model_type!r})")
    return arch


def _need(cond: bool, field: str, value: Any, msg: str) -> None:
    if not cond:
        raise InteropError(f"unsupported Hugging Face config field {field}={value!r}: {msg}")


def _req(d: dict[str, Any], key: str) -> Any:
    if d.get(key) is None:
        raise InteropError(f"Hugging Face config lacks the required field {key!r}; "
                           f"the config.json is incomplete or belongs to another architecture")
    return d[key]


def _activation(d: dict[str, Any], key: str) -> str:
    act = d.get(key)
    _need(act in _ACT_FROM_HF, key, act, f"morphlm supports {sorted(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def config_from_hf(hf_config: Any, arch: str | None = None) -> ModelConfig:
    """A GPT2Config / LlamaConfig / BertConfig, or a Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE config (object or
    config.json dict) -> ModelConfig.

    ``arch`` (a transformers class name) is read from ``architectures`` when not given; in-memory configs
    often have none, so :func:`from_hf_module` passes the model's class name."""
    d = _as_dict(hf_config)
    arch = _resolve_arch(d, arch)
    model_type = _arch(arch).model_type
    if model_type in MOE_MODEL_TYPES:
        return config_from_hf_moe(d, arch)
    if model_type == "gpt2":
        _need(d.get("scale_attn_weights", True), "scale_attn_weights", d.get("scale_attn_weights"),
              "the native attention always scales scores by 1/sqrt(head_dim)")
        _need(not d.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx", True,
              "no native equivalent")
        _need(not d.get("add_cross_attention", False), "add_cross_attention", True, "decoder-only models only")
        n_embd = _req(d, "n_embd")
        fields = dict(
            vocab_size=_req(d, "vocab_size"), d_model=n_embd, n_layers=_req(d, "n_layer"), n_heads=_req(d, "n_head"),
            d_ff=d.get("n_inner") or 4 * n_embd, max_seq_len=_req(d, "n_positions"),
            activation=_activation(d, "activation_function"), norm="layernorm", norm_placement="pre",
            norm_eps=d.get("layer_norm_epsilon", 1e-5), position="learned", causal=True,
            tie_embeddings=d.get("tie_word_embeddings", True), bias=True, head="lm",
            dropout=d.get("resid_pdrop", 0.0),
        )
    elif model_type == "llama":
        act = d.get("hidden_act", "silu")
        _need(act in ("silu", "swish"), "hidden_act", act, "the native SwiGLU uses SiLU")
        hidden, heads = _req(d, "hidden_size"), _req(d, "num_attention_heads")
        head_dim = d.get("head_dim")
        _need(head_dim in (None, hidden // heads), "head_dim", head_dim,
              f"the native attention needs head_dim = hidden_size / num_attention_heads = {hidden // heads}")
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        for field, spec in (("rope_parameters", rope), ("rope_scaling", scaling)):
            kind = spec.get("rope_type", spec.get("type", "default"))
            _need(kind == "default", field, spec, "only plain RoPE (rope_type='default') is implemented natively")
        theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0  # older / newer transformers
        attn_bias, mlp_bias = d.get("attention_bias", False), d.get("mlp_bias", False)
        _need(attn_bias == mlp_bias, "mlp_bias", mlp_bias,
              f"the native model has one bias flag; attention_bias={attn_bias} must equal mlp_bias")
        fields = dict(
            vocab_size=_req(d, "vocab_size"), d_model=hidden, n_layers=_req(d, "num_hidden_layers"), n_heads=heads,
            n_kv_heads=d.get("num_key_value_heads") or heads, d_ff=_req(d, "intermediate_size"),
            max_seq_len=d.get("max_position_embeddings", 2048), activation="swiglu", norm="rmsnorm",
            norm_placement="pre", norm_eps=d.get("rms_norm_eps", 1e-6), position="rope", rope_theta=float(theta),
            causal=True, tie_embeddings=d.get("tie_word_embeddings", False), bias=bool(attn_bias), head="lm",
            dropout=d.get("attention_dropout", 0.0),
        )
    else:  # bert
        _need(not d.get("is_decoder", False), "is_decoder", True, "only the bidirectional BERT encoder is mapped")
        _need(not d.get("add_cross_attention", False), "add_cross_attention", True, "encoder-only models only")
        pos = d.get("position_embedding_type", "absolute")
        _need(pos == "absolute", "position_embedding_type", pos, "only absolute learned positions are mapped")
        fields = dict(
            vocab_size=_req(d, "vocab_size"), d_model=_req(d, "hidden_size"),
            n_layers=_req(d, "num_hidden_layers"), n_heads=_req(d, "num_attention_heads"),
            d_ff=_req(d, "intermediate_size"), max_seq_len=_req(d, "max_position_embeddings"),
            activation=_activation(d, "hidden_act"), norm="layernorm", norm_placement="post",
            norm_eps=d.get("layer_norm_eps", 1e-12), position="learned", causal=False,
            tie_embeddings=d.get("tie_word_embeddings", True), bias=True, embed_norm=True, final_norm=False,
            n_segments=d.get("type_vocab_size", 2), dropout=d.get("hidden_dropout_prob", 0.0),
            head="cls" if arch == "BertForSequenceClassification" else "mlm",
        )
        if arch == "BertForSequenceClassification":
            n = d.get("num_labels") or len(d.get("id2label") or {}) or 2
            _need(n >= 2, "num_labels", n, "the native cls head needs >= 2 classes (regression is not mapped)")
            fields["n_classes"] = n
            fields["tie_embeddings"] = True  # no output embedding in a classifier
    fields["init_std"] = d.get("initializer_range", 0.02)
    fields["name"] = f"hf-{model_type}"
    try:
        return ModelConfig(**fields)
    except ConfigError as exc:
        raise InteropError(f"the {arch} config maps to an invalid ModelConfig: {exc}") from exc


def _hf_config_dict(cfg: ModelConfig) -> tuple[dict[str, Any], str]:
    """ModelConfig -> (config.json dict in transformers' format, architecture). Pure Python: no
    transformers import. Fields with no HF equivalent raise an InteropError naming the field."""

    def need(field: str, ok: bool, target: str, want: str) -> None:
        if not ok:
            raise InteropError(f"cannot export ModelConfig field {field}={getattr(cfg, field)!r} to Hugging Face: "
                               f"{target} needs {want}. Export a model whose config has {want}, or keep it native")

    if cfg.attention != "full":  # a Hugging Face class would silently run full attention without the routers
        raise InteropError(f"cannot export ModelConfig field attention={cfg.attention!r} to Hugging Face: the mapped "
                           f"classes run full attention (no per-token Switch Attention routing or sliding window); "
                           f"keep it native")
    if cfg.moe_experts:  # routed FFNs: one of the mixture-of-experts classes, never a dense one
        return hf_config_dict_moe(cfg)
    if cfg.loop_repeats is not None:
        raise InteropError("cannot export a looped model (loop_repeats) to Hugging Face: no Hugging Face class runs "
                           "weight-shared blocks R times with IterAdaLN; keep it native")
    if cfg.qkv_bias is not None and cfg.qkv_bias != cfg.bias:
        raise InteropError(f"cannot export ModelConfig field qkv_bias={cfg.qkv_bias!r} to Hugging Face: the mapped "
                           f"dense classes bias q/k/v and the output projection together (bias={cfg.bias}); set "
                           f"qkv_bias=null, or keep it native")
    if cfg.qk_norm != "none":
        raise InteropError(f"cannot export ModelConfig field qk_norm={cfg.qk_norm!r} to Hugging Face: the mapped dense "
                           f"classes (LlamaForCausalLM, GPT2LMHeadModel, BERT) have no QK-norm; keep it native")
    if cfg.causal:
        llama = cfg.position == "rope" or cfg.norm == "rmsnorm" or cfg.activation == "swiglu"
        target = "LlamaForCausalLM" if llama else "GPT2LMHeadModel"
        need("head", cfg.head == "lm", target, "head='lm'")
        need("norm_placement", cfg.norm_placement == "pre", target, "norm_placement='pre'")
        need("final_norm", bool(cfg.final_norm), target, "final_norm=True")
        need("embed_norm", not cfg.embed_norm, target, "embed_norm=False")
        need("n_segments", cfg.n_segments == 0, target, "n_segments=0")
        if llama:
            need("activation", cfg.activation == "swiglu", target, "activation='swiglu'")
            need("norm", cfg.norm == "rmsnorm", target, "norm='rmsnorm'")
            need("position", cfg.position == "rope", target, "position='rope'")
            d = dict(
                model_type="llama", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
                max_position_embeddings=cfg.max_seq_len, initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps,
                tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta,
                # newer transformers keep rope_theta here; older ones ignore the key
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout,
            )
        else:
            need("activation", cfg.activation in _ACT_TO_HF, target, f"activation in {sorted(_ACT_TO_HF)}")
            need("position", cfg.position == "learned", target, "position='learned'")
            need("bias", cfg.bias, target, "bias=True")
            need("n_kv_heads", cfg.n_kv_heads == cfg.n_heads, target, f"n_kv_heads=n_heads={cfg.n_heads} "
                 f"(use the LLaMA layout, rope/rmsnorm/swiglu, for grouped-query attention)")
            d = dict(
                model_type="gpt2", vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                activation_function=_ACT_TO_HF[cfg.activation], layer_norm_epsilon=cfg.norm_eps,
                initializer_range=cfg.init_std, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.dropout, tie_word_embeddings=cfg.tie_embeddings, scale_attn_weights=True,
                scale_attn_by_inverse_layer_idx=False,
            )
    else:
        target = "BertForSequenceClassification" if cfg.head == "cls" else "BertForMaskedLM"
        need("head", cfg.head in ("mlm", "cls"), target, "head='mlm' or 'cls'")
        need("activation", cfg.activation in _ACT_TO_HF, target, f"activation in {sorted(_ACT_TO_HF)}")
        need("norm", cfg.norm == "layernorm", target, "norm='layernorm'")
        need("norm_placement", cfg.norm_placement == "post", target, "norm_placement='post'")
        need("position", cfg.position == "learned", target, "position='learned'")
        need("embed_norm", cfg.embed_norm, target, "embed_norm=True")
        need("final_norm", not cfg.final_norm, target, "final_norm=False")
        need("bias", cfg.bias, target, "bias=True")
        need("n_kv_heads", cfg.n_kv_heads == cfg.n_heads, target, f"n_kv_heads=n_heads={cfg.n_heads}")
        d = dict(
            model_type="bert", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, hidden_act=_ACT_TO_HF[cfg.activation],
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.max_seq_len, type_vocab_size=max(cfg.n_segments, 1),
            initializer_range=cfg.init_std, layer_norm_eps=cfg.norm_eps, position_embedding_type="absolute",
            is_decoder=False, tie_word_embeddings=cfg.tie_embeddings,
        )
        if cfg.head == "cls":
            d["num_labels"] = cfg.n_classes
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.n_classes)}
    if cfg.causal:
        # the defaults (GPT-2: 50256, LLaMA: 1/2) belong to those models' tokenizers, not to ours;
        # export_hf_model fills them from the tokenizer it exports (by role)
        d.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    d["architectures"] = [target]
    return d, target


def config_to_hf(cfg: ModelConfig):
    """ModelConfig -> (transformers config object, architecture class name). Needs transformers."""
    d, arch = _hf_config_dict(cfg)
    transformers = _transformers()
    drop = ("model_type", "id2label", "label2id") + (() if cfg.moe_experts else ("rope_parameters",))
    kwargs = {k: v for k, v in d.items() if k not in drop}
    return getattr(transformers, _arch(arch).config_class)(**kwargs), arch


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InteropError("this function builds a transformers model and needs `pip install transformers`; "
                           "load_hf_model / export_hf_model work without it") from exc
    return transformers


# ---------------------------------------------------------------------------------------------- files
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
    if pickles:
        raise InteropError(f"{path} holds only {pickles} and no model.safetensors; morphlm never unpickles weights. "
                           f"Convert it first, in an environment you trust, with the class named in config.json's "
                           f"'architectures': `transformers.<Arch>.from_pretrained(dir).save_pretrained(new_dir)` "
                           f"(transformers >= 4.35 writes model.safetensors)")
    raise InteropError(f"{path} has no model.safetensors (or model.safetensors.index.json); "
                       f"pass a Hugging Face model directory")


# encoder-only backbones (no task head in the checkpoint): the head morphlm adds -> the table that maps it
_BACKBONES = {"BertModel": {"mlm": "BertForMaskedLM", "cls": "BertForSequenceClassification"}}


def _with_fresh_head(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, arch: str,
                     seed: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``hf_state`` of a bare backbone plus the head weights of ``arch`` the checkpoint lacks, freshly
    initialised (TransformerLM's init, seeded by ``seed``); returns the state and the head keys added."""
    from .hf_maps import _normalize_hf_keys

    state = _normalize_hf_keys(hf_state, _arch(arch))
    torch.manual_seed(seed)
    fresh = state_dict_to_hf(TransformerLM(cfg).state_dict(), cfg, arch)
    body = tuple(_arch(arch).base_prefix + part for part in ("embeddings.", "encoder."))
    added = sorted(k for k in fresh if k not in state and not k.startswith(body))  # the head (and a missing pooler)
    state.update({k: fresh[k] for k in added})
    return state, added


def load_hf_model(path: str | os.PathLike, *, head: str | None = None, n_classes: int = 2, seed: int = 0,
                  notes: list[str] | None = None) -> tuple[TransformerLM, ModelConfig]:
    """Local HF directory (config.json + model.safetensors, or a sharded safetensors index) -> native
    model in eval mode (float32) and its config. Needs no transformers: config.json is parsed as JSON.

    An encoder-only ``BertModel`` folder (a sentence encoder such as MiniLM: no task head) gets a freshly
    initialised head: ``head="mlm"`` (the default: a masked-LM head tied to the embeddings) or ``"cls"`` (the
    checkpoint's pooler and a new ``n_classes``-way classifier); what was added is appended to ``notes``."""
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path} is not a directory; pass a local Hugging Face model directory "
                           f"(download hub models first, e.g. with `huggingface-cli download`)")
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise InteropError(f"{path} has no config.json; it is not a Hugging Face model directory")
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InteropError(f"could not parse {cfg_path}: {exc}") from exc
    archs = d.get("architectures") or []
    if archs and archs[0] in _BACKBONES:
        heads = _BACKBONES[archs[0]]
        head = head or "mlm"
        if head not in heads:
            raise InteropError(f"head={head!r} cannot be added to {archs[0]}; choose one of {sorted(heads)}")
        arch = heads[head]
        d = {**d, "architectures": [arch], "num_labels": n_classes}
        cfg = config_from_hf(d, arch)
        hf_state, added = _with_fresh_head(_read_safetensors(path), cfg, arch, seed)
        if notes is not None:
            what = "masked-LM" if head == "mlm" else f"{n_classes}-class classification"
            notes.append(f"{path.name} is an encoder-only {archs[0]} (no task head): added a fresh {what} head "
                         f"({len(added)} tensors, seed {seed}: {', '.join(added)}); it is untrained until you "
                         f"train or distil it")
    else:
        arch = _resolve_arch(d, None)
        if head is not None and head != ("cls" if arch == "BertForSequenceClassification" else
                                         "mlm" if arch == "BertForMaskedLM" else "lm"):
            raise InteropError(f"{path} is a {arch} with its own head; --head {head} applies only to encoder-only "
                               f"folders ({', '.join(_BACKBONES)}). Convert it without --head, then change the "
                               f"head with `morphlm train --init OUT --head {head} ...`")
        cfg = config_from_hf(d, arch)
        hf_state = _read_safetensors(path)
    state = state_dict_from_hf(hf_state, cfg, arch)
    model = TransformerLM(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg


def _exportable_state(model: TransformerLM) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(state dict, config) of the plain model a Hugging Face model can hold. MSG growth masks that reached 1 are
    inert and dropped (exact); a model whose masks still ramp is refused: HF models have no masks."""
    masks = getattr(model, "growth_masks", None)
    if masks is not None and not masks.done:
        raise InteropError(f"the model still carries MSG growth masks at m={masks.mask:g} (training step "
                           f"{masks._step} of a {masks.ramp_steps}-step ramp): a Hugging Face model has no masks, "
                           f"so it would compute a different function. Train it until the ramp ends "
                           f"(`morphlm train --init DIR --max-steps {masks.ramp_steps}` or more), then convert")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("growth_masks.")}
    packed = {name: m for name, m in model.named_modules() if hasattr(m, "weight_packed") and hasattr(m, "dequantized")}
    if packed:  # a ternary directory of `morphlm quantize`: HF holds its dequantized weights (the same function)
        act = sorted({m.act_bits for m in packed.values() if getattr(m, "act_bits", None)})
        if act:
            raise InteropError(f"this ternary model quantizes activations to {act} bits, which a Hugging Face "
                               f"model does not do, so the export would compute a different function. Quantize "
                               f"with `morphlm quantize ... --act-bits 0` (weights-only ternary) to export it")
        for name, m in packed.items():
            state = {k: v for k, v in state.items() if not k.startswith(f"{name}.") or k == f"{name}.bias"}
            state[f"{name}.weight"] = m.weight.detach()
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, model.config.replace()


_HF_TOKEN_KEYS = {r: f"{r}_token" for r in ("pad", "unk", "bos", "eos", "mask", "cls", "sep")}


def _tokenizer_text(tokenizer_json: str) -> str:
    tok = tokenizer_json
    if not tok.lstrip().startswith("{"):
        tok_path = Path(tok)
        if not tok_path.is_file():
            raise InteropError(f"tokenizer_json={tokenizer_json!r} is neither JSON text nor an existing file")
        tok = tok_path.read_text(encoding="utf-8")
    try:
        json.loads(tok)
    except json.JSONDecodeError as exc:
        raise InteropError(f"tokenizer_json is not valid JSON: {exc}") from exc
    return tok


def hf_token_roles(folder: str | os.PathLike) -> dict[str, str]:
    """role -> token string that a Hugging Face folder declares in tokenizer_config.json (``cls_token`` ...,
    a string or an AddedToken dict) and special_tokens_map.json; {} when it declares none."""
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        f = Path(folder) / name
        if not f.is_file():
            continue
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InteropError(f"cannot read {f} ({exc}); repair or delete it") from exc
        for role, key in _HF_TOKEN_KEYS.items():
            v = doc.get(key) if isinstance(doc, dict) else None
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str) and v:
                roles[role] = v
    return roles


def _make_readable(paths) -> None:
    """Exported files are for sharing: mode 0644 like any file a user writes (safetensors creates 0600)."""
    for p in paths:
        os.chmod(p, 0o644)


def export_hf_model(model: TransformerLM, out_dir: str | os.PathLike, *, tokenizer_json: str | None = None) -> Path:
    """Write ``config.json`` (transformers format, with ``architectures``) and ``model.safetensors`` so that
    ``<Arch>.from_pretrained(out_dir)`` loads the model. ``tokenizer_json`` is a path to a tokenizer.json
    file or its JSON text; it is written as ``tokenizer.json`` with ``tokenizer_config.json`` and
    ``special_tokens_map.json`` naming its special tokens by role (pad/unk/bos/eos/mask/cls/sep, as
    :class:`morphlm.data.Tokenizer` reads them), so ``AutoTokenizer.from_pretrained(out_dir)`` pads batches;
    config.json gets the matching ``pad_token_id``/``bos_token_id``/``eos_token_id``. Every file is
    world-readable (0644). Needs no transformers."""
    from safetensors.torch import save_file

    from morphlm.data.tokenizer import Tokenizer, TokenizerError

    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    native, cfg = _exportable_state(model)
    d, arch = _hf_config_dict(cfg)
    state = state_dict_to_hf(native, cfg, arch)
    dtype = next(iter(state.values())).dtype
    d["dtype"] = str(dtype).removeprefix("torch.")
    state = {k: v.cpu() for k, v in state.items()}
    tok = roles = None
    if tokenizer_json is not None:
        tok = _tokenizer_text(tokenizer_json)
        try:
            tk = Tokenizer.from_json_str(tok)
        except TokenizerError as exc:
            raise InteropError(f"the tokenizer to export is not a valid tokenizer.json: {exc}") from exc
        roles = tk.roles
        for role in ("pad", "bos", "eos"):
            if role in roles:
                d[f"{role}_token_id"] = tk.role_id(role)
        for role in ("cls", "sep", "mask"):
            if role in roles and not cfg.causal:
                d[f"{role}_token_id"] = tk.role_id(role)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    written = [out / "model.safetensors", out / "config.json"]
    write_atomic(out / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")
    if tok is not None:
        write_atomic(out / "tokenizer.json", tok)
        specials = {_HF_TOKEN_KEYS[r]: t for r, t in sorted(roles.items())}
        meta = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len, **specials}
        write_atomic(out / "tokenizer_config.json", json.dumps(meta, indent=2) + "\n")
        write_atomic(out / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
        written += [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json"]
    _make_readable(written)
    return out


# ---------------------------------------------------------------------------------------------- modules
def from_hf_module(hf_model) -> TransformerLM:
    """In-memory transformers model (one of SUPPORTED_ARCHITECTURES) -> native TransformerLM with the same
    weights, on the same device and dtype, in the same train/eval mode."""
    arch = type(hf_model).__name__
    cfg = config_from_hf(hf_model.config, arch)
    state = state_dict_from_hf(hf_model.state_dict(), cfg, arch)
    model = TransformerLM(cfg)
    model.load_state_dict(state, strict=True)
    ref = next(hf_model.parameters())
    return model.to(device=ref.device, dtype=ref.dtype).train(hf_model.training)


def to_hf_module(model: TransformerLM, attn_implementation: str | None = None):
    """Native TransformerLM -> in-memory transformers model with the same weights (needs transformers).
    ``attn_implementation`` ("eager", "sdpa") is passed to the HF config; None keeps transformers' default."""
    model = getattr(model, "_orig_mod", model)
    transformers = _transformers()
    native, cfg = _exportable_state(model)
    hf_cfg, arch = config_to_hf(cfg)
    if attn_implementation is not None:
        hf_cfg._attn_implementation = attn_implementation
    state = state_dict_to_hf(native, cfg, arch)
    ref = next(model.parameters())
    hf = getattr(transformers, arch)(hf_cfg).to(dtype=ref.dtype)
    result = hf.load_state_dict(state, strict=False)
    m = _build_map(cfg, arch)
    # keys transformers holds that we did not write: tied duplicates (loaded through their primary, the
    # same Parameter) and buffers that older transformers versions keep in the state dict
    leftover = [k for k in result.missing_keys if k not in m.aliases and not m.ignored.fullmatch(k)]
    if leftover or result.unexpected_keys:
        raise InteropError(f"{arch} rejected the mapped weights: missing {_list(leftover) or 'none'}, "
                           f"unexpected {_list(result.unexpected_keys) or 'none'} (transformers version mismatch?)")
    hf_state = hf.state_dict()
    for alias, primary in m.aliases.items():
        if alias in hf_state and not torch.equal(hf_state[alias], hf_state[primary]):
            raise InteropError(f"{arch}: {alias!r} is not tied to {primary!r} after loading; "
                               f"check tie_word_embeddings in the transformers config")
    return hf.to(ref.device).train(model.training)
