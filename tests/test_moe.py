"""The mixture-of-experts FFN (morphlm/model/moe.py): routers and balancing rules against hand-computed values,
dispatch kernels against each other and against the dense FFN, capacity, config errors, the FLOPs ruler, and
training through fit() (loss_aux, load statistics, bit-exact resume of the loss-free bias)."""

import json
import logging
import math

import pytest
import torch

from morphlm.model import ConfigError, ModelConfig, TransformerLM
from morphlm.model import moe as moe_mod
from morphlm.model.ffn import MLP
from morphlm.model.moe import MoEFFN, Router, load_stats, make_ffn, norm_router_constant
from morphlm.train import flops
from morphlm.train.loop import TrainArgs, fit
from toydata import ToyData


def cfg(**kw):
    base = dict(d_model=4, n_heads=1, n_layers=1, vocab_size=16, max_seq_len=8, bias=False, activation="gelu",
                moe_experts=3, moe_aux_coef=0.0, moe_balance="none")
    base.update(kw)
    return ModelConfig(**base)


def identity_router(router: Router) -> Router:
    """Router weight = the first E rows of the identity: the logits are x[:, :E]."""
    with torch.no_grad():
        router.weight.copy_(torch.eye(router.n_experts, router.weight.shape[1]))
    return router


# ------------------------------------------------------------------------------------------------ config
def test_dense_config_is_unchanged_and_moe_round_trips():
    dense = ModelConfig.from_name("tiny")
    assert not any(k.startswith("moe_") for k in dense.to_dict())  # config.json of a dense model: as before
    c = ModelConfig.from_name("tiny-llama", moe_experts=4, moe_top_k=2, moe_router="sigmoid", moe_balance="loss_free",
                              moe_capacity_factor=1.25, moe_layers="every_other", moe_shared_experts=1)
    back = ModelConfig.from_dict(json.loads(c.to_json()))
    assert back == c and back.moe_layer_ids == (1,)
    assert c.replace(moe_experts=0) == ModelConfig.from_name("tiny-llama")  # back to dense drops the routing fields
    assert isinstance(make_ffn(c, 0), MLP) and isinstance(make_ffn(c, 1), MoEFFN)


@pytest.mark.parametrize("kw, words", [
    (dict(moe_experts=2, moe_top_k=3), ["moe_top_k=3", "moe_experts=2"]),
    (dict(moe_experts=0, moe_top_k=2), ["moe_top_k=2", "moe_experts=0", "set moe_experts > 0"]),
    (dict(moe_experts=4, moe_router="relu"), ["moe_router='relu'", "softmax"]),
    (dict(moe_experts=4, moe_balance="x"), ["moe_balance='x'", "loss_free"]),
    (dict(moe_experts=4, moe_layers="0,7"), ["moe_layers='0,7'", "0..1"]),
    (dict(moe_experts=4, moe_router="norm", moe_renormalize=True), ["moe_renormalize", "norm"]),
    (dict(moe_experts=4, moe_balance="pool"), ["moe_balance='pool'", "moe_pool=true"]),
    (dict(moe_experts=4, moe_pool_size=8), ["moe_pool_size=8", "moe_pool=false"]),
    (dict(moe_experts=4, moe_pool=True, moe_pool_groups=3), ["moe_pool_groups=3", "[1, 2]"]),
    (dict(moe_experts=1, moe_pool=True, moe_pool_size=2, moe_top_k=3), ["moe_top_k=3", "moe_pool_size=2"]),
    (dict(moe_experts=4, moe_capacity_factor=0.0), ["moe_capacity_factor=0.0"]),
    (dict(moe_experts=4, msg_ramp_steps=3), ["msg_ramp_steps", "mixture-of-experts"]),
])
def test_bad_configs_name_the_field_and_the_fix(kw, words):
    with pytest.raises(ConfigError) as exc:
        ModelConfig.from_name("tiny", **kw)
    for w in words:
        assert w in str(exc.value)


# ------------------------------------------------------------------------------------------------ routers
def test_softmax_router_gates_plain_and_renormalized():
    x = torch.tensor([[1.0, 2.0, 0.0, 5.0]])  # logits [1, 2, 0]
    p = torch.tensor([math.e, math.e ** 2, 1.0]) / (1 + math.e + math.e ** 2)
    idx, gates, probs, _, _ = identity_router(Router(cfg(moe_top_k=2), 3))(x)
    assert idx.tolist() == [[1, 0]]
    assert torch.allclose(gates, torch.tensor([[p[1], p[0]]]), atol=1e-7)
    assert torch.allclose(probs, p[None], atol=1e-7)
    _, gates, _, _, _ = identity_router(Router(cfg(moe_top_k=2, moe_renormalize=True), 3))(x)
    assert torch.allclose(gates, torch.tensor([[p[1], p[0]]]) / (p[0] + p[1]), atol=1e-7)


def test_router_math_is_fp32_under_bf16_autocast():
    r = identity_router(Router(cfg(), 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, gates, probs, logits, _ = r(torch.randn(5, 4))
    assert gates.dtype == probs.dtype == logits.dtype == torch.float32


def test_loss_free_bias_selects_but_does_not_gate():
    r = identity_router(Router(cfg(moe_router="sigmoid", moe_balance="loss_free"), 3)).train()
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    idx, gates, _, _, _ = r(x)
    assert idx.tolist() == [[0]] and gates.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    r.score_bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    idx, gates, _, _, _ = r(x)
    assert idx.tolist() == [[1]]  # the bias changed the choice ...
    assert gates.item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())  # ... not the gate


def test_loss_free_bias_update_sign_and_mean_subtraction():
    r = identity_router(Router(cfg(moe_router="sigmoid", moe_balance="loss_free", moe_bias_update=0.1), 3)).train()
    r(torch.tensor([[3.0, 0, 0, 0], [3.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 3.0, 0, 0]]))  # loads [3, 1, 0]
    assert r.load_accum.tolist() == [3.0, 1.0, 0.0]
    r.update_bias()
    # u·sign(mean − load) = 0.1·[−1, +1, +1], minus its mean 0.1/3
    assert torch.allclose(r.score_bias, torch.tensor([-4.0, 2.0, 2.0]) / 30, atol=1e-7)
    assert r.score_bias.sum().abs() < 1e-7 and r.load_accum.tolist() == [0.0, 0.0, 0.0]
    before = r.score_bias.clone()
    r.update_bias()  # nothing counted since: no change
    assert torch.equal(r.score_bias, before)
    r.eval()
    r(torch.tensor([[3.0, 0, 0, 0]]))  # evaluation does not count loads
    assert r.load_accum.sum() == 0


def test_norm_router_gates_are_raw_scores():
    c = norm_router_constant(3, 2)
    r = identity_router(Router(cfg(moe_router="norm", moe_top_k=2), 3))
    idx, gates, probs, _, fallback = r(torch.tensor([[3.0, -4.0, 0.0, 9.0]]))  # ‖z‖ = 5, ReLU(z/‖z‖) = [.6, 0, 0]
    assert idx[0, 0].item() == 0 and not fallback.any()
    assert gates[0, 0].item() == pytest.approx(c * 0.6, rel=1e-5) and gates[0, 1].item() == 0.0  # not renormalised
    assert torch.allclose(probs, torch.tensor([[c * 0.6, 0.0, 0.0]]), rtol=1e-5)
    with torch.no_grad():
        r.sigma.fill_(2.0)
    assert r(torch.tensor([[3.0, -4.0, 0.0, 9.0]]))[1][0, 0].item() == pytest.approx(2 * c * 0.6, rel=1e-5)


def test_norm_router_constant_matches_an_independent_estimate():
    for m, k in ((64, 1), (32, 2)):  # pool sizes where the 1/‖·‖ tail is negligible (module docstring)
        x = torch.randn(200_000, m, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        s = torch.relu(x / x.norm(dim=-1, keepdim=True)).topk(k, dim=-1).values.norm(dim=-1)
        independent = (1 / s[s > 0]).mean().item()
        assert norm_router_constant(m, k) == pytest.approx(independent, rel=0.01)
    assert norm_router_constant(4, 1) == norm_router_constant(4, 1, seed=0)  # fixed generator: deterministic


def test_norm_router_all_negative_logits_never_give_a_silent_zero_gate():
    c = norm_router_constant(3, 1)
    r = identity_router(Router(cfg(moe_router="norm"), 3))
    x = torch.tensor([[-1.0, -2.0, -3.0, 0.0]], requires_grad=True)  # every ReLU score would be 0
    idx, gates, _, _, fallback = r(x)
    assert fallback.tolist() == [True] and idx.tolist() == [[0]]  # the least negative logit wins
    assert gates.item() == pytest.approx(c * 2 / math.sqrt(14), rel=1e-5)  # (z − min z)/‖z‖ = [2, 1, 0]/√14
    gates.sum().backward()
    assert r.weight.grad.abs().sum() > 0  # the router learns from it
    _, gates, _, _, fallback = r(torch.zeros(1, 4))  # all logits equal: σ/k
    assert fallback.tolist() == [True] and gates.item() == pytest.approx(1.0)
    layer = MoEFFN(cfg(moe_router="norm"), 0)
    identity_router(layer.router)
    layer(torch.tensor([[-1.0, -2.0, -3.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    assert layer.last_stats["norm_fallback"].item() == 1.0  # reported, not silent


# ------------------------------------------------------------------------------------------------ losses
def test_switch_aux_loss_and_z_loss_by_hand():
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    p1 = torch.softmax(torch.tensor([1.0, 2.0, 0.0]), 0)
    p2 = torch.softmax(torch.tensor([3.0, 0.0, 0.0]), 0)
    P = (p1 + p2) / 2
    f = torch.tensor([0.5, 0.5, 0.0])  # token 1 -> expert 1, token 2 -> expert 0
    layer = MoEFFN(cfg(moe_balance="aux", moe_aux_coef=0.01), 0).train()
    identity_router(layer.router)
    layer(x)
    assert layer.aux_loss.item() == pytest.approx((0.01 * 3 * (f * P).sum()).item(), rel=1e-6)
    layer.aux_loss.backward()  # P carries the gradient, f does not
    assert layer.router.weight.grad.abs().sum() > 0
    z = MoEFFN(cfg(moe_z_coef=1e-3), 0).train()
    identity_router(z.router)
    z(x)
    lse = torch.stack([torch.logsumexp(torch.tensor([1.0, 2.0, 0.0]), 0),
                       torch.logsumexp(torch.tensor([3.0, 0.0, 0.0]), 0)])
    assert z.aux_loss.item() == pytest.approx((1e-3 * (lse ** 2).mean()).item(), rel=1e-6)
    z.eval()
    z(x)
    assert z.aux_loss is None  # evaluation adds no loss
    assert MoEFFN(cfg(), 0).train()(x) is not None and MoEFFN(cfg(), 0).aux_loss is None  # balance none, z 0


def test_load_stats_by_hand():
    s = load_stats(torch.tensor([3.0, 1.0, 0.0, 0.0]))
    assert s["cv"].item() == pytest.approx(math.sqrt(((2 ** 2) + 0 + 1 + 1) / 4) / 1.0)
    assert s["max_vio"].item() == pytest.approx(2.0) and s["dead"].item() == 2.0


# ------------------------------------------------------------------------------------------------ dispatch
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_one_expert_top1_equals_the_dense_ffn(activation):
    c = cfg(activation=activation, moe_experts=1, d_model=8, n_heads=2, d_ff=16)
    dense = MLP(c)
    layer = MoEFFN(c, 0)
    with torch.no_grad():
        layer.experts.w1[0].copy_(dense.fc1.weight)
        layer.experts.w2[0].copy_(dense.fc2.weight)
    x = torch.randn(2, 5, 8)
    assert torch.equal(layer(x), dense(x))


@pytest.mark.parametrize("capacity", [None, 1.0])
def test_grouped_mm_equals_the_loop_in_fp32(capacity):
    torch.manual_seed(0)
    kw = dict(d_model=8, n_heads=2, d_ff=16, activation="swiglu", moe_experts=4, moe_top_k=2,
              moe_capacity_factor=capacity)
    loop = MoEFFN(cfg(moe_impl="loop", **kw), 0)
    grouped = MoEFFN(cfg(moe_impl="grouped", **kw), 0)
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(3, 7, 8)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = loop(xa), grouped(xb)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)
    for (name, pa), pb in zip(loop.named_parameters(), grouped.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_bf16_auto_uses_grouped_mm_and_falls_back_once_with_a_message(caplog, monkeypatch):
    torch.manual_seed(0)
    kw = dict(d_model=16, n_heads=2, d_ff=32, moe_experts=4, moe_top_k=2)
    ref = MoEFFN(cfg(moe_impl="loop", **kw), 0)
    auto = MoEFFN(cfg(**kw), 0)
    auto.load_state_dict(ref.state_dict())
    x = torch.randn(64, 16)
    assert auto._kernel(x, torch.bfloat16) == "grouped" and auto._kernel(x, torch.float32) == "loop"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = auto(x)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref(x), atol=2e-2, rtol=5e-2)
    monkeypatch.setattr(moe_mod, "_fallback_said", set())
    odd = MoEFFN(cfg(d_model=12, n_heads=2, d_ff=20, moe_experts=2), 0)  # 12 bf16 values: not 16-byte rows
    with caplog.at_level(logging.WARNING, logger="morphlm.model.moe"):
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                odd(torch.randn(4, 12))
    said = [r.getMessage() for r in caplog.records if "per-expert loop" in r.getMessage()]
    assert len(said) == 1 and "d_model=12" in said[0] and "multiple of 8" in said[0]


def test_capacity_drops_the_later_tokens_of_a_full_expert():
    layer = MoEFFN(cfg(moe_experts=2, moe_capacity_factor=1.0), 0)
    identity_router(layer.router)
    x = torch.tensor([[5.0, 0.0, 1.0, 1.0], [4.0, 0.0, 2.0, 1.0], [3.0, 0.0, 3.0, 1.0], [2.0, 0.0, 4.0, 1.0]])
    y = layer(x)  # all four pick expert 0; capacity ceil(1.0·1·4/2) = 2
    full = MoEFFN(cfg(moe_experts=2), 0)
    full.load_state_dict(layer.state_dict())
    y_full = full(x)
    assert torch.equal(y[:2], y_full[:2])  # the first two in token order are served
    assert torch.equal(y[2:], torch.zeros(2, 4)) and y_full[2:].abs().sum() > 0  # the rest are dropped
    assert layer.last_stats["dropped"].item() == 2.0


def test_shared_experts_add_a_dense_ffn():
    c = cfg(d_model=8, n_heads=2, d_ff=16, moe_experts=2, moe_shared_experts=1)
    layer = MoEFFN(c, 0)
    dense = MLP(c)
    with torch.no_grad():
        layer.experts.w2.zero_()  # routed experts output 0: what is left is the shared expert
        layer.shared_w1.copy_(dense.fc1.weight)
        layer.shared_w2.copy_(dense.fc2.weight)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)


def test_dispatch_is_deterministic_and_shape_preserving():
    torch.manual_seed(0)
    layer = MoEFFN(cfg(d_model=8, n_heads=2, moe_experts=4, moe_top_k=2), 0)
    x = torch.randn(2, 9, 8)
    a, b = layer(x), layer(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert layer.last_stats["load"].sum().item() == 2 * 9 * 2


# ------------------------------------------------------------------------------------------------ FLOPs
def test_flops_active_below_total_and_equal_for_dense():
    dense = ModelConfig.from_name("tiny-llama")
    total, active = flops.param_counts(dense)
    assert total == active == TransformerLM(dense).num_parameters()
    m = ModelConfig.from_name("tiny-llama", moe_experts=8, moe_top_k=2, moe_shared_experts=1, moe_expert_d_ff=64)
    total, active = flops.param_counts(m)
    assert total == TransformerLM(m).num_parameters() and active < total
    d, e_ff = 64, 64
    expert = 3 * d * e_ff  # SwiGLU: gate, up, down
    assert total - active == 2 * (8 - 2) * expert
    attn = flops.attention_matmul_params(m)
    assert flops.layer_matmul_params(m, 0) == attn + d * 8 + (2 + 1) * expert  # router + top-k + shared
    assert flops.matmul_params(m, 32) == 2 * (attn + d * 8 + 3 * expert) + d * 512
    assert flops.training_flops_per_token(m, 32) < flops.training_flops_per_token(
        m.replace(moe_top_k=8), 32)
    half = ModelConfig.from_name("tiny-llama", moe_experts=4, moe_layers="every_other")  # layer 1 only
    assert flops.matmul_params(half, 32) == (flops.layer_matmul_params(half.replace(moe_experts=0), 0)
                                             + flops.layer_matmul_params(half, 1) + d * 512)


# ------------------------------------------------------------------------------------------------ training
def _moe_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.from_name("tiny", bias=False, **kw))


def _args(out, steps, **kw):
    return TrainArgs(out_dir=str(out) if out else None, max_steps=steps, schedule_steps=12, warmup_steps=2, lr=3e-3,
                     progress=False, resume="auto", **kw)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fit_adds_aux_loss_logs_load_stats_and_resumes_the_loss_free_bias_bit_exactly(tmp_path):
    moe = dict(moe_experts=4, moe_top_k=2, moe_router="sigmoid", moe_balance="loss_free", moe_bias_update=1e-2,
               moe_z_coef=1e-3)
    kw = dict(micro_batch_size=4, save_every=3)
    data = ToyData(seq_len=16)
    fit(_moe_model(**moe), None, data, _args(tmp_path / "a", 3, **kw))
    model = _moe_model(seed=7, **moe)
    fit(model, None, data, _args(tmp_path / "a", 6, **kw))  # resumes: weights and bias from disk
    fit(_moe_model(**moe), None, data, _args(tmp_path / "b", 6, **kw))
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["loss_aux"] for r in a] == [r["loss_aux"] for r in b] and all(r["loss_aux"] > 0 for r in a)
    for key in ("moe0_cv", "moe1_max_vio", "moe0_dead", "moe_cv", "moe_max_vio", "moe_dead"):
        assert key in a[0]
    bias = model.blocks[0].mlp.router.score_bias
    assert bias.abs().sum() > 0 and abs(bias.sum().item()) < 1e-6  # moved by the per-step update, mean zero


def test_aux_loss_reaches_the_gradient(tmp_path):
    """fit differentiates loss + aux: with a huge aux coefficient the router gets a different update."""
    data = ToyData(seq_len=16)
    runs = []
    for coef in (0.0, 100.0):
        model = _moe_model(moe_experts=4, moe_aux_coef=coef)
        fit(model, None, data, _args(None, 1))
        runs.append(model.blocks[0].mlp.router.weight.detach().clone())
    assert not torch.equal(runs[0], runs[1])


def test_dense_training_logs_no_routing_metrics(tmp_path):
    fit(_moe_model(), None, ToyData(seq_len=16), _args(tmp_path / "d", 1))
    assert not any(k.startswith(("loss_aux", "moe")) for k in _rows(tmp_path / "d")[0])


def test_weights_kind_hint_names_moe_versus_dense():
    from morphlm.model.moe import weights_kind_hint

    dense, routed = ["blocks.0.mlp.fc1.weight"], ["blocks.0.mlp.router.weight", "blocks.0.mlp.experts.w1"]
    assert "weights hold mixture-of-experts FFNs but the config is dense" in weights_kind_hint(dense, routed)
    assert "weights hold dense FFNs but the config asks for mixture-of-experts" in weights_kind_hint(routed, dense)
    assert "layout differs" in weights_kind_hint(["expert_pools.0.experts.w1"], routed)
    assert weights_kind_hint(["blocks.0.attn.qkv.weight"], []) == ""


def test_grouped_mm_is_refused_where_it_cannot_run(monkeypatch):
    bank = MoEFFN(cfg(d_model=12, n_heads=2, moe_experts=2), 0).experts
    x = torch.randn(4, 12)
    assert bank.grouped_reason(x, torch.float32) is None
    assert "16-byte" in bank.grouped_reason(x, torch.bfloat16)  # d_model 12: fine for fp32 rows, not for bf16
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "fp32 meta kernel" in bank.grouped_reason(x, torch.float32)


def test_describe_names_active_parameters():
    c = ModelConfig.from_name("tiny-llama", moe_experts=4, moe_top_k=2)
    total, active = flops.param_counts(c)
    line = flops.describe(c, total, 32)
    assert f"{total:,} parameters ({active:,} active per token)" in line and "MoE on 2 layers: 4 experts" in line
