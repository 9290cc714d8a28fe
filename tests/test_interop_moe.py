"""Hugging Face mixture-of-experts interop (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): logits parity with transformers
and equal router top-k choices on tiny random models, both directions (in memory, through exported folders, and
through `morphlm convert` from folders that save_pretrained wrote in its per-expert layout); the refusals; and the
two model switches the families need (qk_norm, moe_shared_gate).

Random HF inits leave norm gains at 1 and Qwen's routers at 0; every model is perturbed first so each tensor's
placement shows up in the logits and the routing is not a tie.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from clihelp import cli  # noqa: E402

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
from morphlm.model.config import ConfigError  # noqa: E402
from morphlm.model.moe import MoEFFN  # noqa: E402

TOL = 1e-4
V, T = 97, 12
_COMMON = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=32, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=None,
               attn_implementation="eager")
FAMILIES = {
    "MixtralForCausalLM": ("MixtralConfig", dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=2)),
    # a dense layer (mlp_only_layers), a shared expert of twice the expert width, gated, and q/k/v (only) biased
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", dict(intermediate_size=48, moe_intermediate_size=16, num_experts=4,
                                                   shared_expert_intermediate_size=32, num_experts_per_tok=2,
                                                   qkv_bias=True, mlp_only_layers=[1])),
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", dict(intermediate_size=48, moe_intermediate_size=16, num_experts=4,
                                                   num_experts_per_tok=2, norm_topk_prob=True,
                                                   tie_word_embeddings=True)),
    "OlmoeForCausalLM": ("OlmoeConfig", dict(intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                             norm_topk_prob=False)),
}
# native configs that export to each family
NATIVE = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=16, max_seq_len=32,
              activation="swiglu", norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
              moe_experts=4, moe_top_k=2)
NATIVE_FAMILIES = {
    "MixtralForCausalLM": dict(moe_renormalize=True),
    "Qwen2MoeForCausalLM": dict(d_ff=48, moe_expert_d_ff=16, moe_shared_experts=2, moe_shared_gate=True,
                                moe_layers="0", qkv_bias=True),
    "Qwen3MoeForCausalLM": dict(qk_norm="head", d_ff=48, moe_expert_d_ff=16, moe_layers="1", moe_renormalize=True),
    "OlmoeForCausalLM": dict(qk_norm="full", bias=True),
}


@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def _hf(arch: str, **over):
    cls, kw = FAMILIES[arch]
    cfg = getattr(transformers, cls)(**{**_COMMON, **kw, **over})
    torch.manual_seed(0)
    return _perturb(getattr(transformers, arch)(cfg))


def _native(arch: str, **over) -> TransformerLM:
    torch.manual_seed(0)
    return _perturb(TransformerLM(ModelConfig(**{**NATIVE, **NATIVE_FAMILIES[arch], **over})), seed=3)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, (2, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _routes(model, ids: torch.Tensor, native: bool) -> list[torch.Tensor]:
    """Per routed layer, the (tokens, k) expert ids the router chose, sorted within each token."""
    got: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        got.append((out[0] if native else out[2]).reshape(-1, out[0 if native else 2].shape[-1]).sort(-1).values)

    mods = ([m.router for m in model.modules() if isinstance(m, MoEFFN)] if native
            else [m.gate for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")])
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert got, "no routed layer ran"
    return got, logits


def _assert_same(hf_model, native_model, ids):
    hf_routes, hf_logits = _routes(hf_model, ids, native=False)
    nat_routes, nat_logits = _routes(native_model, ids, native=True)
    assert (hf_logits - nat_logits).abs().max().item() < TOL
    assert len(hf_routes) == len(nat_routes)
    for a, b in zip(hf_routes, nat_routes):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_hf_to_native_parity(arch):
    hf = _hf(arch)
    native = from_hf_module(hf)
    cfg = native.config
    assert cfg.moe_experts == 4 and cfg.moe_top_k == 2 and cfg.moe_router == "softmax"
    assert cfg.moe_renormalize == (arch in ("MixtralForCausalLM", "Qwen3MoeForCausalLM"))
    assert cfg.moe_layers == ("0" if arch == "Qwen2MoeForCausalLM" else "all")
    assert cfg.qk_norm == {"Qwen3MoeForCausalLM": "head", "OlmoeForCausalLM": "full"}.get(arch, "none")
    assert (cfg.bias, cfg.qkv_bias) == ((False, True) if arch == "Qwen2MoeForCausalLM" else (False, None))
    _assert_same(hf, native, _ids())


@pytest.mark.parametrize("arch", list(NATIVE_FAMILIES))
def test_native_to_hf_parity(arch, tmp_path):
    native = _native(arch)
    hf = to_hf_module(native)
    assert type(hf).__name__ == arch
    _assert_same(hf, native, _ids())
    export_hf_model(native, tmp_path / "hf")  # the fused layout on disk: from_pretrained reads it
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == [arch]
    loaded = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    _assert_same(loaded, native, _ids(2))
    back, back_cfg = load_hf_model(tmp_path / "hf")
    assert back_cfg.moe_layers == native.config.moe_layers and back_cfg.qk_norm == native.config.qk_norm
    _assert_same(loaded, back, _ids(3))


@pytest.mark.parametrize("arch", ["MixtralForCausalLM", "Qwen2MoeForCausalLM"])
def test_convert_cli_both_ways_from_per_expert_layout(arch, tmp_path):
    hf = _hf(arch)
    hf.save_pretrained(tmp_path / "hf")  # per-expert tensors (Mixtral: block_sparse_moe.experts.J.w1/w3/w2)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert not any(k.endswith("gate_up_proj") for k in keys)  # the layout this test is about
    cli("convert", tmp_path / "hf", tmp_path / "native")
    native, _ = load_hf_model(tmp_path / "hf")
    _assert_same(hf, native, _ids())
    cli("convert", tmp_path / "native", tmp_path / "hf2")
    again = getattr(transformers, arch).from_pretrained(tmp_path / "hf2").eval()
    _assert_same(again, native, _ids(2))


def test_state_dict_roundtrip_is_exact():
    native = _native("Qwen2MoeForCausalLM")
    cfg = native.config
    hf_state = state_dict_to_hf(native.state_dict(), cfg, "Qwen2MoeForCausalLM")
    assert hf_state["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 32, 32)  # (E, 2I, H), gate rows first
    assert torch.equal(hf_state["model.layers.0.mlp.experts.gate_up_proj"][:, :16],
                       native.state_dict()["blocks.0.mlp.experts.w1"][:, :16])
    assert hf_state["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 32)
    assert "model.layers.1.mlp.gate_proj.weight" in hf_state  # the dense layer
    assert "model.layers.0.self_attn.q_proj.bias" in hf_state and "model.layers.0.self_attn.o_proj.bias" not in hf_state
    assert "model.layers.1.mlp.gate_proj.bias" not in hf_state
    back = state_dict_from_hf(hf_state, cfg, "Qwen2MoeForCausalLM")
    assert set(back) == set(native.state_dict())
    assert all(torch.equal(back[k], v) for k, v in native.state_dict().items())


# ---------------------------------------------------------------------------------------------- refusals
def test_routed_model_to_dense_class_is_refused(tmp_path):
    native = _native("MixtralForCausalLM")
    with pytest.raises(InteropError, match=r"moe_experts=4.*LlamaForCausalLM is a dense"):
        state_dict_to_hf(native.state_dict(), native.config, "LlamaForCausalLM")


def test_moe_checkpoint_into_dense_config_and_reverse():
    hf = _hf("MixtralForCausalLM")
    moe_cfg = config_from_hf(hf.config, "MixtralForCausalLM")
    dense_cfg = moe_cfg.replace(moe_experts=0, moe_top_k=1, moe_renormalize=False, moe_aux_coef=1e-2)
    renamed = {k.replace("Mixtral", "Llama"): v for k, v in hf.state_dict().items()}
    with pytest.raises(InteropError, match=r"mixture-of-experts weights.*MixtralForCausalLM"):
        state_dict_from_hf(renamed, dense_cfg.replace(d_ff=16), "LlamaForCausalLM")
    with pytest.raises(InteropError, match=r"MixtralForCausalLM is a mixture-of-experts class.*dense"):
        state_dict_from_hf(hf.state_dict(), dense_cfg, "MixtralForCausalLM")


@pytest.mark.parametrize("over, field, words", [
    (dict(moe_pool=True, moe_balance="pool"), "moe_pool", "UniPool"),
    (dict(loop_repeats=2), "loop_repeats", "LoopMoE"),
    (dict(moe_router="sigmoid"), "moe_router", "softmax"),
    (dict(moe_balance="loss_free"), "moe_balance", "score bias"),
    (dict(moe_capacity_factor=1.25), "moe_capacity_factor", "dropless"),
    (dict(moe_renormalize=False), "moe_renormalize", "Mixtral"),
    (dict(moe_shared_experts=1), "moe_shared_gate", "ungated"),
    (dict(moe_layers="0"), "moe_layers", "routes every layer"),
    (dict(bias=True), "bias", "no biases"),
    (dict(qkv_bias=True), "qkv_bias", "no attention biases"),
])
def test_unexportable_routed_models_are_refused(over, field, words, tmp_path):
    model = _native("MixtralForCausalLM", **over)
    with pytest.raises(InteropError, match=rf"\b{field}=.*{words}"):
        export_hf_model(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(InteropError, match=rf"\b{field}="):
        config_to_hf(model.config)


def test_unipool_convert_cli_writes_nothing(tmp_path):
    from morphlm.train import checkpoint as ckpt

    model = _native("MixtralForCausalLM", moe_pool=True, moe_balance="pool")
    ckpt.save_checkpoint(tmp_path / "pool", model.state_dict(), model.config)
    res = cli("convert", tmp_path / "pool", tmp_path / "hf", code=None)
    assert res.exit_code != 0 and "UniPool" in res.output
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    assert not (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("arch, patch, field", [
    ("Qwen2MoeForCausalLM", {"shared_expert_intermediate_size": 24}, "shared_expert_intermediate_size"),
    ("Qwen2MoeForCausalLM", {"use_sliding_window": True}, "use_sliding_window"),
    ("OlmoeForCausalLM", {"clip_qkv": 8.0}, "clip_qkv"),
    ("MixtralForCausalLM", {"sliding_window": 8}, "sliding_window"),
    ("MixtralForCausalLM", {"router_jitter_noise": 0.1}, "router_jitter_noise"),
    ("Qwen3MoeForCausalLM", {"attention_bias": True, "mlp_only_layers": [0]}, "attention_bias"),
])
def test_unrepresentable_hf_features_are_named(arch, patch, field):
    d = dict(_hf(arch).config.to_dict(), **patch)
    with pytest.raises(InteropError, match=rf"\b{field}="):
        config_from_hf(d, arch)


# ---------------------------------------------------------------------------------------------- model switches
def test_switch_defaults_leave_configs_unchanged():
    dense = ModelConfig.from_name("tiny-llama")
    assert "qk_norm" not in dense.to_dict() and "moe_shared_gate" not in dense.to_dict()
    moe = ModelConfig(**NATIVE)
    assert "moe_shared_gate" not in moe.to_dict() and "qk_norm" not in moe.to_dict()
    assert not any("q_norm" in k or "shared_gate" in k for k in TransformerLM(moe).state_dict())
    gated = ModelConfig(**{**NATIVE, **NATIVE_FAMILIES["Qwen2MoeForCausalLM"]})
    assert ModelConfig.from_dict(gated.to_dict()) == gated
    with pytest.raises(ConfigError, match="moe_shared_gate"):
        ModelConfig(**NATIVE, moe_shared_gate=True)
    with pytest.raises(ConfigError, match="qk_norm"):
        ModelConfig(**NATIVE, qk_norm="layer")
    assert "qkv_bias" not in moe.to_dict()
    assert "attn.qkv.bias" not in " ".join(TransformerLM(moe).state_dict())


def test_dense_export_refuses_a_separate_qkv_bias(tmp_path):
    model = TransformerLM(ModelConfig.from_name("tiny-llama", qkv_bias=True))
    assert model.blocks[0].attn.qkv.bias is not None and model.blocks[0].attn.proj.bias is None
    with pytest.raises(InteropError, match=r"qkv_bias=True"):
        export_hf_model(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_flops_count_the_shared_gate():
    from morphlm.train.flops import moe_ffn_matmul_params

    cfg = ModelConfig(**{**NATIVE, "moe_shared_experts": 1})
    assert moe_ffn_matmul_params(cfg.replace(moe_shared_gate=True)) == moe_ffn_matmul_params(cfg) + 32


@torch.no_grad()
def test_shared_gate_scales_shared_experts_by_sigmoid():
    """y_gated = routed + sigmoid(x·g)·shared, with routed and shared read off the ungated layer (g = 0: a half)."""
    cfg = ModelConfig(**{**NATIVE, "moe_shared_experts": 1})
    torch.manual_seed(0)
    plain = MoEFFN(cfg, 0).eval()
    gated = MoEFFN(cfg.replace(moe_shared_gate=True), 0).eval()
    gated.load_state_dict({**plain.state_dict(), "shared_gate": torch.zeros(1, 32)})
    x = torch.randn(5, 32)
    shared = plain._shared(x)
    routed = plain(x) - shared
    assert torch.allclose(gated(x), routed + 0.5 * shared, atol=1e-6)
    g = torch.randn(1, 32)
    gated.shared_gate.copy_(g)
    assert torch.allclose(gated(x), routed + torch.sigmoid(x @ g.t()) * shared, atol=1e-6)


@torch.no_grad()
def test_qk_norm_head_and_full_by_hand():
    """qk_norm='head' RMS-normalises each head's q and k over head_dim, 'full' the whole projections, before RoPE."""
    from morphlm.model.attention import Attention

    for kind in ("head", "full"):
        cfg = ModelConfig(**{**NATIVE, "moe_experts": 0, "moe_top_k": 1, "qk_norm": kind})
        torch.manual_seed(0)
        attn = Attention(cfg).eval()
        attn.q_norm.weight.normal_()
        attn.k_norm.weight.normal_()
        x = torch.randn(1, 6, 32)
        q, k, v = attn.qkv(x).split((32, 16, 16), dim=-1)

        def rms(t, w):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

        if kind == "full":
            q, k = rms(q, attn.q_norm.weight), rms(k, attn.k_norm.weight)
        q = q.view(1, 6, 4, 8).transpose(1, 2)
        k = k.view(1, 6, 2, 8).transpose(1, 2)
        v = v.view(1, 6, 2, 8).transpose(1, 2)
        if kind == "head":
            q, k = rms(q, attn.q_norm.weight), rms(k, attn.k_norm.weight)
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        s = (q @ k.transpose(-2, -1)) / 8 ** 0.5
        s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
        want = attn.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 32))
        got, _ = attn(x)
        assert torch.allclose(got, want, atol=1e-5), kind


def test_growth_refuses_the_new_attention_switches():
    from morphlm.grow.errors import GrowthError
    from morphlm.grow.width import check_growable

    src = ModelConfig.from_name("tiny-llama", qk_norm="full")
    with pytest.raises(GrowthError, match=r"qk_norm='full'.*qk_norm='none'"):
        check_growable(src, src.replace(n_layers=src.n_layers + 2))
    src = ModelConfig.from_name("tiny-llama", qkv_bias=True)
    with pytest.raises(GrowthError, match=r"qkv_bias=True"):
        check_growable(src, src.replace(n_layers=src.n_layers + 2))


def test_qwen_sparse_step_and_dense_loop():
    d = dict(_hf("Qwen3MoeForCausalLM").config.to_dict(), num_hidden_layers=4, decoder_sparse_step=2,
             mlp_only_layers=[])
    cfg = config_from_hf(d, "Qwen3MoeForCausalLM")
    assert cfg.moe_layer_ids == (1, 3) and cfg.d_ff == 48 and cfg.expert_d_ff == 16
    looped = TransformerLM(ModelConfig.from_name("tiny-llama", loop_repeats=2))
    with pytest.raises(InteropError, match=r"loop_repeats.*no Hugging Face class"):
        config_to_hf(looped.config)
