"""UniPool shared expert pools (morphlm/model/moe.py ExpertPool): G = L equals per-layer MoE, the pool loss by hand
(one micro-batch behind, none on the first), pool sizes and groups, and a `morphlm train` run end to end
(loss_aux and load statistics logged, bit-exact resume, eval's total vs active parameters, MoE/dense mismatches)."""

import json
from pathlib import Path

import pytest
import torch

from clihelp import cli
from morphlm.model import ConfigError, ModelConfig, TransformerLM
from morphlm.model.moe import ExpertPool, MoEFFN


def pool_cfg(**kw):
    base = dict(vocab_size=32, d_model=8, n_heads=2, n_layers=2, max_seq_len=16, bias=False, activation="swiglu",
                d_ff=16, moe_experts=3, moe_pool=True, moe_router="norm", moe_balance="pool", moe_aux_coef=0.1)
    base.update(kw)
    return ModelConfig(**base)


def test_pool_sizes_and_groups():
    c = pool_cfg(n_layers=4)
    assert c.pool_size == 12 and c.pool_groups == ((0, 1, 2, 3),)  # M = E·L
    c = pool_cfg(n_layers=4, moe_pool_groups=2)
    assert c.pool_size == 6 and c.pool_groups == ((0, 1), (2, 3))
    c = pool_cfg(n_layers=4, moe_pool_size=5, moe_layers="every_other")
    assert c.pool_size == 5 and c.pool_groups == ((1, 3),) and c.router_experts == 5
    m = TransformerLM(pool_cfg(n_layers=4, moe_pool_groups=2))
    assert len(m.expert_pools) == 2
    assert m.blocks[1].mlp.pool is m.expert_pools[0] and m.blocks[2].mlp.pool is m.expert_pools[1]
    assert m.blocks[0].mlp.router.weight.shape == (6, 8)
    names = list(m.state_dict())
    assert sum(".w1" in n for n in names) == 2  # each pool's weights once, not once per layer
    with pytest.raises(ConfigError, match="moe_pool_groups=3 must divide the 4 MoE layers"):
        pool_cfg(n_layers=4, moe_pool_groups=3)
    with pytest.raises(ValueError, match="needs the ExpertPool"):
        MoEFFN(pool_cfg(), 0)


def test_pool_with_one_group_per_layer_equals_per_layer_moe():
    torch.manual_seed(0)
    per_layer = TransformerLM(pool_cfg(moe_pool=False, moe_router="softmax", moe_balance="aux", moe_top_k=2))
    pooled = TransformerLM(pool_cfg(moe_pool_groups=2, moe_router="softmax", moe_balance="aux", moe_top_k=2))
    state = per_layer.state_dict()
    for i in range(2):  # layer i's experts become pool i's
        for w in ("w1", "w2"):
            state[f"expert_pools.{i}.experts.{w}"] = state.pop(f"blocks.{i}.mlp.experts.{w}")
    for key, value in pooled.state_dict().items():
        state.setdefault(key, value)  # the pools' loss buffers
    pooled.load_state_dict(state)
    x = torch.randint(0, 32, (2, 10))
    per_layer.train(), pooled.train()
    a, b = per_layer(x, labels=x), pooled(x, labels=x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(per_layer.moe_aux_loss(), pooled.moe_aux_loss())


def _router_view(layer, x):
    _, _, probs, _, _ = layer.router(x)
    counts = torch.bincount(layer.router(x)[0].reshape(-1), minlength=layer.n_experts).float()
    return counts / (x.shape[0] * layer.top_k), probs.mean(0)


def test_pool_loss_by_hand_one_micro_batch_behind():
    c = pool_cfg(n_layers=1)
    pool = ExpertPool(c, (0,))
    layer = MoEFFN(c, 0, pool).train()
    torch.manual_seed(0)
    x1, x2, x3 = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    pool.begin_forward()
    layer(x1)
    assert layer.aux_loss is None and pool.has_prev.item() == 0  # the first micro-batch has no pool loss
    f1, _ = _router_view(layer, x1)
    pool.begin_forward()
    layer(x2)
    _, P2 = _router_view(layer, x2)
    M = c.pool_size
    assert torch.allclose(pool.prev_load, f1)
    assert layer.aux_loss.item() == pytest.approx((0.1 * M * (f1 * P2).sum()).item(), rel=1e-6)
    f2, _ = _router_view(layer, x2)
    pool.begin_forward()
    layer(x3)  # the third uses the second's load, not its own
    _, P3 = _router_view(layer, x3)
    assert layer.aux_loss.item() == pytest.approx((0.1 * M * (f2 * P3).sum()).item(), rel=1e-6)
    layer.aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0 and pool.prev_load.grad is None  # f̄ is detached


def test_pool_loss_averages_f_and_p_over_the_layers_of_the_pool():
    torch.manual_seed(1)
    model = TransformerLM(pool_cfg()).train()
    x1, x2 = torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))
    model(x1)
    assert model.moe_aux_loss() is None
    loads = [b.mlp.last_stats["load"] / (16 * 1) for b in model.blocks]
    f_bar = (loads[0] + loads[1]) / 2
    P = []
    hooks = [b.mlp.router.register_forward_hook(lambda m, i, o: P.append(o[2].mean(0))) for b in model.blocks]
    model(x2)
    for h in hooks:
        h.remove()
    M = model.config.pool_size
    hand = 0.1 * M * (f_bar * (P[0] + P[1]) / 2).sum()
    assert torch.allclose(model.expert_pools[0].prev_load, f_bar)
    assert model.moe_aux_loss().item() == pytest.approx(hand.item(), rel=1e-6)
    stats = model.moe_metrics()
    assert {"pool0_cv", "pool0_max_vio", "pool0_dead", "moe0_norm_fallback"} <= set(stats)
    model.eval()
    before = model.expert_pools[0].prev_load.clone()
    with torch.no_grad():
        model(x1)  # evaluation leaves the pool's state alone
    assert torch.equal(model.expert_pools[0].prev_load, before)
    model.train()
    model(x1)
    assert not torch.equal(model.expert_pools[0].prev_load, before)  # the training forward moved it on


# ------------------------------------------------------------------------------------------------ CLI
MOE = ["--preset", "tiny-llama", "--corpus", "stdlib", "--max-bytes", "200000", "--seq-len", "32", "--batch-size",
       "4", "--micro-batch-size", "2", "--moe-experts", "2", "--moe-pool", "--moe-router", "norm", "--moe-balance",
       "pool", "--moe-z-coef", "1e-3", "--progress", "false"]


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_train_unipool_logs_resumes_bit_exactly_and_eval_reports_active_params(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cli("train", *MOE, "--max-steps", 3, "--schedule-steps", 6, "--out", a)
    cli("train", *MOE, "--max-steps", 6, "--out", a, "--resume", "auto")
    cli("train", *MOE, "--max-steps", 6, "--out", b)
    ra, rb = _rows(a), _rows(b)
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb] and len(ra) == 6
    assert [r["loss_aux"] for r in ra] == [r["loss_aux"] for r in rb]
    for key in ("loss_aux", "moe0_cv", "moe1_max_vio", "moe0_dead", "pool0_cv", "pool0_max_vio", "pool0_dead"):
        assert key in ra[0]
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["moe_pool"] is True and cfg["moe_experts"] == 2
    ev = json.loads(cli("eval", a, "--json", "--max-batches", 1).stdout.strip().splitlines()[-1])
    assert ev["active_params"] < ev["params"]
    # an MoE checkpoint into a dense model, and a dense one into an MoE model: refused, naming MoE vs dense
    res = cli("train", "--init", a, "--preset", "tiny-llama", "--corpus", "stdlib", "--max-bytes", "200000",
              "--seq-len", "32", "--batch-size", "4", "--max-steps", 1, "--out", tmp_path / "d", code=None)
    assert res.exit_code != 0 and "mixture-of-experts FFNs but the config is dense" in res.output
    dense = tmp_path / "dense"
    cli("train", *MOE[:10], "--max-steps", 1, "--progress", "false", "--out", dense)
    res = cli("train", "--init", dense, *MOE, "--max-steps", 1, "--out", tmp_path / "m", code=None)
    assert res.exit_code != 0 and "dense FFNs but the config asks for mixture-of-experts" in res.output
    res = cli("train", *MOE[:10], "--max-steps", 6, "--out", a, "--resume", "auto", code=None)
    assert res.exit_code != 0 and "moe_experts" in res.output  # resuming the MoE run as a dense one
