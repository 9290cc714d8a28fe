"""Hugging Face interop: logits parity with transformers on tiny random models, both directions, through
in-memory modules and through an exported directory; and the errors for what cannot be mapped.

Random HF inits have zero biases and unit norm gains, which would hide a swapped bias or gain; every
model here is perturbed with noise first so each tensor's placement shows up in the logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from morphlm.interop.hf import (  # noqa: E402
    InteropError,
    config_from_hf,
    config_to_hf,
    export_hf_model,
    from_hf_module,
    load_hf_model,
    state_dict_from_hf,
    state_dict_to_hf,
    to_hf_module,
)
from morphlm.model import ModelConfig, TransformerLM  # noqa: E402

TOL = 1e-4
V, T = 97, 12
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():  # tied parameters appear once
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def _inputs(vocab: int = V, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, 8:] = 0  # right padding in the second row
    segments = torch.zeros(2, T, dtype=torch.long)
    segments[:, 6:] = 1  # sentence pair: A = first 6 tokens, B = the rest
    return ids, mask, segments


def _hf_gpt2(**over):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                  attn_implementation="eager", **over)
    return _perturb(transformers.GPT2LMHeadModel(cfg))


def _hf_llama(tied: bool):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None,
                                   attn_implementation="sdpa")
    return _perturb(transformers.LlamaForCausalLM(cfg))


def _hf_bert(cls_name: str, **over):
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation="eager", **over)
    return _perturb(getattr(transformers, cls_name)(cfg))


def _native(preset: str, **over) -> TransformerLM:
    torch.manual_seed(0)
    return _perturb(TransformerLM(ModelConfig.from_name(preset, **over)), seed=3)


def _hf_logits(hf, cfg: ModelConfig, ids, mask, segments) -> torch.Tensor:
    with torch.no_grad():
        if cfg.causal:
            return hf(input_ids=ids).logits
        return hf(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits


def _native_logits(model: TransformerLM, ids, mask, segments) -> torch.Tensor:
    with torch.no_grad():
        if model.config.causal:
            return model(ids).logits
        return model(ids, attention_mask=mask, token_type_ids=segments).logits


def _assert_close(a: torch.Tensor, b: torch.Tensor, cfg: ModelConfig, mask: torch.Tensor) -> None:
    assert a.shape == b.shape
    if cfg.head == "mlm":  # padded query positions are not defined the same way; compare real tokens
        a, b = a[mask.bool()], b[mask.bool()]
    diff = (a - b).abs().max().item()
    assert diff < TOL, f"max |Δlogits| = {diff:.3e}"


# ---------------------------------------------------------------------------------------------- HF -> native
HF_MODELS = {
    "gpt2": lambda: _hf_gpt2(),
    "gpt2-relu-untied": lambda: _hf_gpt2(activation_function="relu", n_inner=80, tie_word_embeddings=False),
    "llama-gqa-untied": lambda: _hf_llama(tied=False),
    "llama-gqa-tied": lambda: _hf_llama(tied=True),
    "bert-mlm": lambda: _hf_bert("BertForMaskedLM"),
    "bert-cls": lambda: _hf_bert("BertForSequenceClassification", num_labels=3),
}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_to_native_logits(name):
    hf = HF_MODELS[name]()
    model = from_hf_module(hf)
    cfg = model.config
    assert not model.training
    ids, mask, segments = _inputs()
    ref = _hf_logits(hf, cfg, ids, mask, segments)
    _assert_close(_native_logits(model, ids, mask, segments), ref, cfg, mask)
    if name.startswith("llama"):
        assert cfg.n_kv_heads == 2 and cfg.n_heads == 4 and cfg.rope_theta == 500.0
        assert cfg.tie_embeddings == name.endswith("-tied")
    if name == "bert-cls":
        assert cfg.head == "cls" and cfg.n_classes == 3 and ref.shape == (2, 3)


def test_gpt2_original_checkpoint_layout():
    """The original gpt2 weights were saved from GPT2Model: no ``transformer.`` prefix, no lm_head, and
    the causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` stored as tensors."""
    hf = _hf_gpt2()
    cfg = config_from_hf(hf.config, "GPT2LMHeadModel")
    ref = state_dict_from_hf(hf.state_dict(), cfg, "GPT2LMHeadModel")
    legacy = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(cfg.n_layers):
        legacy[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        legacy[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    got = state_dict_from_hf(legacy, cfg, "GPT2LMHeadModel")
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------------------------- native -> HF
NATIVE = {
    "tiny": ("tiny", {}),
    "tiny-gelu-untied": ("tiny", {"activation": "gelu", "tie_embeddings": False}),
    "tiny-llama": ("tiny-llama", {}),
    "tiny-llama-tied": ("tiny-llama", {"tie_embeddings": True, "rope_theta": 500.0}),
    "tiny-bert": ("tiny-bert", {}),
    "tiny-bert-cls": ("tiny-bert", {"head": "cls", "n_classes": 3}),
}
# exported exactly, but comes back as a different (equivalent) config: n_segments=1 with a zero row
NATIVE_ONE_WAY = {"tiny-bert-noseg": ("tiny-bert", {"n_segments": 0, "activation": "gelu_tanh"})}


@pytest.mark.parametrize("name", list(NATIVE) + list(NATIVE_ONE_WAY))
def test_native_to_hf_logits(name):
    preset, over = {**NATIVE, **NATIVE_ONE_WAY}[name]
    model = _native(preset, **over)
    hf = to_hf_module(model, attn_implementation="eager")
    assert not hf.training
    ids, mask, segments = _inputs(model.config.vocab_size)
    if model.config.n_segments == 0:
        segments = torch.zeros_like(ids)
    _assert_close(_hf_logits(hf, model.config, ids, mask, segments), _native_logits(model, ids, mask, segments),
                  model.config, mask)
    # and back: the native -> HF -> native weights are bit-identical
    back = from_hf_module(hf).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("name", list(NATIVE))
def test_export_roundtrip(name, tmp_path):
    preset, over = NATIVE[name]
    model = _native(preset, **over)
    out = export_hf_model(model, tmp_path / "hf")
    assert (out / "model.safetensors").is_file()
    written = json.loads((out / "config.json").read_text())
    arch = written["architectures"][0]

    hf, info = getattr(transformers, arch).from_pretrained(out, output_loading_info=True,
                                                           attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    ids, mask, segments = _inputs(model.config.vocab_size)
    native_logits = _native_logits(model, ids, mask, segments)
    _assert_close(_hf_logits(hf, model.config, ids, mask, segments), native_logits, model.config, mask)

    loaded, cfg = load_hf_model(out)
    assert cfg.to_dict() | {"name": ""} == model.config.to_dict() | {"name": ""}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    _assert_close(_native_logits(loaded, ids, mask, segments), native_logits, cfg, mask)


def test_export_without_segments(tmp_path):
    """BertEmbeddings always adds a token-type embedding: n_segments=0 exports as one all-zero row."""
    preset, over = NATIVE_ONE_WAY["tiny-bert-noseg"]
    model = _native(preset, **over)
    out = export_hf_model(model, tmp_path / "hf")
    hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
    ids, mask, _ = _inputs(model.config.vocab_size)
    zeros = torch.zeros_like(ids)
    ref = _native_logits(model, ids, mask, None)
    _assert_close(_hf_logits(hf, model.config, ids, mask, zeros), ref, model.config, mask)
    loaded, cfg = load_hf_model(out)
    assert cfg.n_segments == 1 and not loaded.seg_emb.weight.any()
    _assert_close(_native_logits(loaded, ids, mask, zeros), ref, cfg, mask)
    # loading into the n_segments=0 config is allowed only while the row is zero
    hf_state = dict(hf.state_dict())
    assert state_dict_from_hf(hf_state, model.config, "BertForMaskedLM").keys() == model.state_dict().keys()
    hf_state["bert.embeddings.token_type_embeddings.weight"] = torch.ones(1, 64)
    with pytest.raises(InteropError, match="n_segments"):
        state_dict_from_hf(hf_state, model.config, "BertForMaskedLM")


def test_config_that_does_not_fit_architecture():
    cfg = ModelConfig.from_name("tiny", norm_placement="sandwich")
    hf_state = to_hf_module(_native("tiny")).state_dict()
    with pytest.raises(InteropError, match=r"norm1_out"):
        state_dict_from_hf(hf_state, cfg, "GPT2LMHeadModel")


def test_export_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    out = export_hf_model(_native("tiny"), tmp_path / "hf", tokenizer_json=tok.to_str())
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert fast("hello world")["input_ids"] == [1, 2]


def test_load_without_transformers(tmp_path):
    """load_hf_model parses config.json itself: it must work where transformers cannot be imported."""
    model = _native("tiny-llama")
    out = export_hf_model(model, tmp_path / "hf")
    ids, _, _ = _inputs(model.config.vocab_size)
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        torch.save(model(ids).logits, tmp_path / "ref.pt")
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import torch; from morphlm.interop import load_hf_model\n"
        f"m, cfg = load_hf_model({str(out)!r})\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r}); ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        "with torch.no_grad(): d = (m(ids).logits - ref).abs().max().item()\n"
        "assert d < 1e-4, d\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", list(NATIVE))
def test_config_roundtrip(name):
    preset, over = NATIVE[name]
    cfg = ModelConfig.from_name(preset, dropout=0.1, init_std=0.01, **over)
    hf_cfg, arch = config_to_hf(cfg)
    assert type(hf_cfg).__name__ == getattr(transformers, arch).config_class.__name__
    back = config_from_hf(hf_cfg, arch)
    assert back.to_dict() | {"name": ""} == cfg.to_dict() | {"name": ""}


# ---------------------------------------------------------------------------------------------- errors
def test_shape_mismatch_names_key():
    hf = _hf_gpt2()
    cfg = config_from_hf(hf.config, "GPT2LMHeadModel")
    state = dict(hf.state_dict())
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    with pytest.raises(InteropError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*\(32, 128\).*\(32, 100\)"):
        state_dict_from_hf(state, cfg, "GPT2LMHeadModel")

    native_cfg = ModelConfig.from_name("tiny-llama")
    native = TransformerLM(native_cfg).state_dict()
    native["blocks.0.attn.qkv.weight"] = torch.zeros(96, 64)
    with pytest.raises(InteropError, match=r"blocks\.0\.attn\.qkv\.weight.*\(128, 64\).*\(96, 64\)"):
        state_dict_to_hf(native, native_cfg, "LlamaForCausalLM")


def test_missing_and_unexpected_keys():
    hf = _hf_llama(tied=False)
    cfg = config_from_hf(hf.config, "LlamaForCausalLM")
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(InteropError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        state_dict_from_hf(state, cfg, "LlamaForCausalLM")
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)  # bias=False in the config
    with pytest.raises(InteropError, match=r"no native counterpart.*q_proj\.bias"):
        state_dict_from_hf(state, cfg, "LlamaForCausalLM")


@pytest.mark.parametrize("preset, over, field", [
    ("tiny", {"norm_placement": "sandwich"}, "norm_placement"),
    ("tiny-llama", {"norm_placement": "dssn"}, "norm_placement"),
    ("tiny", {"n_kv_heads": 2}, "n_kv_heads"),
    ("tiny-bert", {"norm_placement": "pre"}, "norm_placement"),
    ("tiny", {"bias": False}, "bias"),
])
def test_unsupported_export_names_field(preset, over, field, tmp_path):
    model = TransformerLM(ModelConfig.from_name(preset, **over))
    with pytest.raises(InteropError, match=rf"\b{field}="):
        export_hf_model(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    with pytest.raises(InteropError, match=rf"\b{field}="):
        config_to_hf(model.config)


@pytest.mark.parametrize("patch, field", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"activation_function": "quick_gelu"}, "activation_function"),
])
def test_unsupported_hf_gpt2_config(patch, field):
    d = dict(_hf_gpt2().config.to_dict(), **patch)
    with pytest.raises(InteropError, match=field):
        config_from_hf(d, "GPT2LMHeadModel")


def test_unsupported_hf_llama_rope_scaling():
    d, _ = config_to_hf(ModelConfig.from_name("tiny-llama"))
    d = dict(d.to_dict(), rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(InteropError, match="rope_scaling"):
        config_from_hf(d, "LlamaForCausalLM")


def test_unsupported_architecture():
    with pytest.raises(InteropError, match="GPTNeoXForCausalLM"):
        config_from_hf({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]})


def test_pickle_only_directory_is_refused(tmp_path):
    hf = _hf_gpt2()
    hf.config.architectures = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(InteropError, match=r"pytorch_model\.bin.*safetensors"):
        load_hf_model(tmp_path)
