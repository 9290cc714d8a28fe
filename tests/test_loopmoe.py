"""LoopMoE: IterAdaLN blocks looped R times (model/loop.py), its FLOPs, capacity balancing, and a CLI run."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from clihelp import cli
from morphlm.model import ConfigError, ModelConfig, TransformerLM
from morphlm.model.loop import IterAdaLNBlock, iteration_encoding, loop_capacity
from morphlm.model.transformer import Block
from morphlm.train import flops


def tiny(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    base.update(kw)
    return ModelConfig.from_name("tiny", **base)


def ids(B=2, T=12, seed=0):
    return torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_modulation(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            block.mod.weight.copy_(0.2 * torch.randn(block.mod.weight.shape, generator=g))
            block.mod.bias.copy_(0.2 * torch.randn(block.mod.bias.shape, generator=g))


# ------------------------------------------------------------------ IterAdaLN
def test_iteradaln_starts_as_identity():
    """Zero-initialised W_mod: (1 + γ)·N(h) + β = N(h) and unit gates (1 + g = 1), for any token state and
    iteration; the model's own initialisation keeps W_mod at zero."""
    torch.manual_seed(0)
    model = TransformerLM(tiny(loop_repeats=3))
    h = torch.randn(2, 5, 32)
    for block in model.blocks:
        assert torch.count_nonzero(block.mod.weight) == 0 and torch.count_nonzero(block.mod.bias) == 0
        for k in range(3):
            v = model.loop.iter_mlp(k)
            assert v.abs().sum() > 0  # the iteration signal itself is not zero ...
            scale1, shift1, gate1, scale2, shift2, gate2 = block.modulation(h, v)
            n = block.norm1(h)
            assert torch.equal(n * (1 + scale1) + shift1, n)  # ... but the modulation is the identity
            assert torch.equal(1 + gate1, torch.ones_like(gate1)) and torch.equal(1 + gate2, torch.ones_like(gate2))
            assert torch.equal(scale2, torch.zeros_like(scale2)) and torch.equal(shift2, torch.zeros_like(shift2))


def test_iteration_encoding_hand_values():
    assert torch.equal(iteration_encoding(0, 6), torch.tensor([1.0, 1, 1, 0, 0, 0]))
    # dim 4: frequencies 10000^0 = 1 and 10000^(-1/2) = 0.01
    want = torch.tensor([math.cos(3.0), math.cos(0.03), math.sin(3.0), math.sin(0.03)])
    assert torch.allclose(iteration_encoding(3, 4), want, atol=1e-7)


def test_loop_r1_zero_modulation_equals_unlooped_model():
    """LoopMoE with R = 1 and zero-initialised modulation is the unlooped model with the same weights, bit for bit;
    a non-zero W_mod changes the function (so the equality is not vacuous)."""
    torch.manual_seed(0)
    plain = TransformerLM(tiny())
    looped = TransformerLM(tiny(loop_repeats=1))
    missing, unexpected = looped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert all(".mod." in k or ".cond_norm." in k or k.startswith("loop.") for k in missing)
    x = ids()
    want = plain(x).logits
    assert torch.equal(looped(x).logits, want)
    # the block alone: IterAdaLNBlock(zero mod) == Block, whatever the iteration signal
    blk, ref = IterAdaLNBlock(looped.config, 0), Block(plain.config)
    blk.load_state_dict(ref.state_dict(), strict=False)
    h = torch.randn(2, 7, 32)
    assert torch.equal(blk(h, torch.randn(32))[0], ref(h)[0])
    randomize_modulation(looped)
    assert not torch.allclose(looped(x).logits, want, atol=1e-4)


def test_loop_at_init_is_the_weight_tied_stack_and_iterations_differ_once_modulated():
    """R = 2 over one unique block at init == the unlooped 2-layer model whose two blocks share those weights;
    once W_mod is non-zero the two iterations see different signals v_0 ≠ v_1 (the loop is not weight tying)."""
    torch.manual_seed(0)
    looped = TransformerLM(tiny(n_layers=1, loop_repeats=2))
    tied = TransformerLM(tiny(n_layers=2))
    state = {k: v for k, v in looped.state_dict().items() if ".mod." not in k and ".cond_norm." not in k
             and not k.startswith("loop.")}
    for k in [k for k in state if k.startswith("blocks.0.")]:
        state["blocks.1." + k[len("blocks.0."):]] = state[k]
    tied.load_state_dict(state)
    x = ids()
    out = looped(x, output_hidden_states=True)
    assert torch.equal(out.logits, tied(x).logits)
    assert len(out.hidden_states) == 3  # embeddings + one entry per block run (n_layers·R)
    v0, v1 = looped.loop.iter_mlp(0), looped.loop.iter_mlp(1)
    assert not torch.allclose(v0, v1)
    randomize_modulation(looped)
    assert not torch.allclose(looped(x).logits, tied(x).logits, atol=1e-4)
    # the block's second call sees v_1: replaying the two calls by hand reproduces the model
    h = looped.tok_emb(x) + looped.pos_emb(torch.arange(x.shape[1]))
    blk = looped.blocks[0]
    h = blk(blk(h, looped.loop.iter_mlp(0))[0], looped.loop.iter_mlp(1))[0]
    assert torch.allclose(looped.head(looped.final_norm(h)), looped(x).logits, atol=1e-6)


def test_gradients_reach_modulation_and_iteration_mlp():
    torch.manual_seed(0)
    model = TransformerLM(tiny(loop_repeats=2))
    x = ids()
    model(x, labels=x).loss.backward()
    assert model.blocks[0].mod.weight.grad.abs().sum() > 0  # W_mod learns from the first step
    randomize_modulation(model)
    model.zero_grad()
    model(x, labels=x).loss.backward()
    assert model.loop.iter_mlp.fc1.weight.grad.abs().sum() > 0  # MLP_iter once W_mod is non-zero


# ------------------------------------------------------------------ per-iteration statistics and aux losses
class CountingFFN(nn.Module):
    """A stand-in FFN with the MoE layer's interface: ``aux_loss`` and ``last_stats`` set on every call."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.aux_loss = torch.tensor(float(self.calls))
        self.last_stats = {"calls": self.calls, "max_vio": torch.tensor(0.5 * self.calls)}
        return self.lin(x)


def test_per_iteration_stats_and_summed_aux_loss():
    """A reused block's FFN overwrites its stats on each call: the loop keeps them per iteration (iter{k}) and
    sums the R calls' aux losses back onto the FFN (as R vanilla layers would contribute)."""
    torch.manual_seed(0)
    model = TransformerLM(tiny(loop_repeats=3))
    for block in model.blocks:
        block.mlp = CountingFFN(32)
    model(ids())
    stats = model.loop.iter_stats
    assert list(stats) == ["iter0", "iter1", "iter2"]
    for k in range(3):
        assert stats[f"iter{k}"]["layer0"]["calls"] == k + 1 and stats[f"iter{k}"]["layer1"]["calls"] == k + 1
    assert "cos_prev" not in stats["iter0"] and -1 <= stats["iter2"]["cos_prev"] <= 1
    for block in model.blocks:
        assert float(block.mlp.aux_loss) == 1 + 2 + 3
    # the FFN's own last_stats (what a metrics writer reads) carries every iteration, not just the last call's
    assert {k: float(v) for k, v in model.blocks[0].mlp.last_stats.items()} == {
        "iter0_calls": 1, "iter1_calls": 2, "iter2_calls": 3, "iter0_max_vio": 0.5, "iter1_max_vio": 1.0,
        "iter2_max_vio": 1.5}
    flat = model.loop.flat_stats()
    assert flat["iter1/layer0/calls"] == 2 and flat["iter2/layer1/max_vio"] == 1.5 and "iter1/cos_prev" in flat


# ------------------------------------------------------------------ parameters and FLOPs
def test_params_counted_once_and_flops_times_r():
    d, V, T = 64, 512, 32
    cfgs = {R: ModelConfig.from_name("tiny", loop_repeats=R) for R in (1, 3)}  # d 64, 2 layers, gelu d_ff 256
    plain = TransformerLM(ModelConfig.from_name("tiny")).num_parameters()
    extra_block = d + (d * 6 * d + 6 * d)  # cond_norm gain + W_mod and its bias
    iter_mlp = (64 * d + d) + (d * d + d)
    for R, cfg in cfgs.items():
        assert TransformerLM(cfg).num_parameters() == plain + 2 * extra_block + iter_mlp  # independent of R
    layer = 4 * d * d + 2 * d * 256  # attention q,k,v,o + FFN in/out = 49152
    mod = 6 * d * d  # W_mod per token per block run = 24576
    head = d * V  # 32768
    assert flops.matmul_params(cfgs[3], T) == 3 * 2 * (layer + mod) + head == 475136
    assert flops.training_flops_per_token(cfgs[3], T) == 3 * (2 * 475136 + 4 * (2 * 3) * d * T) == 2998272
    assert flops.training_flops_per_token(cfgs[1], T) == 3 * (2 * (2 * (layer + mod) + head) + 4 * 2 * d * T)
    # an unlooped model's FLOPs are unchanged: 6·N + 12·L·d·T
    assert flops.training_flops_per_token(ModelConfig.from_name("tiny"), T) == 6 * (2 * layer + head) + 12 * 2 * d * T


# ------------------------------------------------------------------ capacity balancing
def test_capacity_balancing_hand_example():
    # vanilla: L = 4 layers, A = 4·64² = 16384, E = 8 experts of s = 2·64·64 = 8192, top-1; R = 2
    cap = loop_capacity(layers=4, attention=16384, experts=8, expert=8192, top_k=1, repeats=2)
    # E'·s = R(A + Es) − A = 2·(16384 + 65536) − 16384 = 147456 = 18·8192
    assert (cap.loop_layers, cap.loop_experts) == (2, 18)
    assert cap.total == 4 * (16384 + 8 * 8192) == 2 * (16384 + 18 * 8192)  # total parameters match
    assert cap.active == 4 * (16384 + 8192) == 2 * 2 * (16384 + 8192)  # per-token FLOPs match (each layer runs R times)
    # A' / (k's') = A / (ks): attention and top-k unchanged


def test_capacity_balancing_errors_name_the_field_and_offer_the_nearest():
    # s = 2·64·48 = 6144: E'·s = 2·(16384 + 8·6144) − 16384 = 114688 = 18.67·6144
    with pytest.raises(ConfigError, match=r"moe_experts cannot match exactly.*moe_experts=18 .*moe_experts=19"):
        loop_capacity(layers=4, attention=16384, experts=8, expert=6144, top_k=1, repeats=2)
    with pytest.raises(ConfigError, match=r"n_layers=6 .*not divisible by loop_repeats=4.*\[2, 3, 6\]"):
        loop_capacity(layers=6, attention=16384, experts=8, expert=8192, top_k=1, repeats=4)
    with pytest.raises(ConfigError, match=r"loop_repeats=0 must be an integer >= 1"):
        loop_capacity(layers=4, attention=16384, experts=8, expert=8192, top_k=1, repeats=0)


# ------------------------------------------------------------------ config
def test_config_round_trip_and_plain_config_unchanged():
    cfg = tiny(loop_repeats=2, loop_iter_dim=16)
    back = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.depth == 4
    plain = tiny().to_dict()
    assert "loop_repeats" not in plain and "loop_iter_dim" not in plain  # an unlooped config.json is as before
    assert tiny().depth == 2


@pytest.mark.parametrize("kw, words", [
    (dict(loop_repeats=0), "loop_repeats=0 must be an integer >= 1"),
    (dict(loop_repeats=2.0), "loop_repeats=2.0 must be an integer"),
    (dict(loop_repeats=2, loop_iter_dim=7), "loop_iter_dim=7 must be an even integer"),
    (dict(loop_iter_dim=32), "loop_iter_dim=32 only applies to a looped model; set loop_repeats"),
    (dict(loop_repeats=2, norm_placement="sandwich"), "loop_repeats needs norm_placement='pre'"),
    (dict(loop_repeats=2, head="mlm", causal=False), "set head=lm or drop loop_repeats"),
    (dict(loop_repeats=2, msg_ramp_steps=5), "loop_repeats cannot be combined with MSG growth masks"),
])
def test_bad_loop_config_errors(kw, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        tiny(**kw)


# ------------------------------------------------------------------ the CLI: train, resume, generate
BASE = ["--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "200000", "--seq-len", "32", "--batch-size", "4",
        "--d-model", "32", "--n-layers", "1", "--warmup-steps", "2"]
SMALL = BASE + ["--loop-repeats", "2", "--loop-iter-dim", "16"]


def losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_train_resume_bit_exact_and_generate(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cli("train", *SMALL, "--max-steps", 3, "--schedule-steps", 6, "--out", a)
    cfg = json.loads((a / "config.json").read_text())
    assert (cfg["loop_repeats"], cfg["loop_iter_dim"], cfg["n_layers"]) == (2, 16, 1)
    cli("train", *SMALL, "--max-steps", 6, "--out", a, "--resume", "auto")
    cli("train", *SMALL, "--max-steps", 6, "--out", b)
    assert losses(a) == losses(b) and len(losses(a)) == 6
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.count_nonzero(wa["blocks.0.mod.weight"]) > 0  # the modulation trained
    res = cli("generate", a, "--prompt", "def ", "--max-new-tokens", 5, "--temperature", 0)
    assert "def " in res.stdout
    # the looped run cannot be resumed as a plain model, and a bad loop setting writes nothing
    res = cli("train", *BASE, "--max-steps", 8, "--out", a, "--resume", "auto", code=2)
    assert "different model" in res.output and "loop_repeats" in res.output
    res = cli("train", *BASE, "--loop-repeats", 0, "--max-steps", 2, "--out", tmp_path / "bad", code=2)
    assert "loop_repeats=0" in res.output and not (tmp_path / "bad").exists()
    # verbs that map plain blocks one to one refuse a looped source, writing nothing
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"preset": "tiny", "d_model": 64, "n_heads": 8, "n_layers": 2}))
    res = cli("grow", a, "--to", target, "--out", tmp_path / "grown", code=None)
    assert res.exit_code != 0 and "looped model (LoopMoE, loop_repeats=2)" in res.output
    assert not (tmp_path / "grown").exists()


# ------------------------------------------------------------------ with the MoE layer (model/moe.py)
def moe_cfg(**kw):
    pytest.importorskip("morphlm.model.moe", reason="the MoE layer (model/moe.py) is not in this checkout")
    base = dict(d_model=64, n_layers=4, n_heads=4, max_seq_len=16, vocab_size=97, moe_experts=8, moe_top_k=1,
                moe_expert_d_ff=64)
    base.update(kw)
    return ModelConfig.from_name("tiny", **base)


def test_capacity_balancing_on_an_moe_config():
    """Vanilla 4 layers × 8 experts (s = 2·64·64), top-1, R = 2 → 2 unique layers × 18 experts: stored attention +
    expert weights equal, and the ruler's FLOPs differ by exactly the routers and W_mod (outside the rule)."""
    from morphlm.model.loop import balance_loop_capacity

    vanilla = moe_cfg()
    looped, cap = balance_loop_capacity(vanilla, 2)
    assert (looped.n_layers, looped.loop_repeats, looped.moe_experts, looped.moe_top_k) == (2, 2, 18, 1)
    assert (looped.expert_d_ff, looped.d_model) == (64, 64)

    def matched(model):  # attention projections and routed/shared experts, as the rule counts them
        return sum(p.numel() for n, p in model.named_parameters()
                   if (".attn." in n and n.endswith("weight")) or ".experts." in n or "shared_w" in n)

    assert matched(TransformerLM(vanilla)) == matched(TransformerLM(looped)) == cap.total == 4 * (16384 + 8 * 8192)
    T, d = 16, 64
    router = 2 * 2 * d * 18 - 4 * d * 8  # R·L_b·d·E' − L·d·E
    w_mod = 2 * 2 * 6 * d * d
    assert flops.training_flops_per_token(looped, T) - flops.training_flops_per_token(vanilla, T) == 6 * (router + w_mod)
    with pytest.raises(ConfigError, match=r"moe_experts cannot match exactly.*moe_experts=18 .*moe_experts=19"):
        balance_loop_capacity(moe_cfg(moe_expert_d_ff=48), 2)
    with pytest.raises(ConfigError, match=r"dense FFNs \(moe_experts=0\)"):
        balance_loop_capacity(tiny(), 2)
    with pytest.raises(ConfigError, match=r"already has loop_repeats=2"):
        balance_loop_capacity(looped, 2)
    with pytest.raises(ConfigError, match=r"moe_layers='every_other'"):
        balance_loop_capacity(moe_cfg(moe_layers="every_other"), 2)


def test_loop_r1_zero_modulation_equals_unlooped_moe_model():
    torch.manual_seed(0)
    plain = TransformerLM(moe_cfg(n_layers=2, moe_top_k=2))
    looped = TransformerLM(moe_cfg(n_layers=2, moe_top_k=2, loop_repeats=1))
    missing, unexpected = looped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".mod." in k or ".cond_norm." in k or k.startswith("loop.") for k in missing)
    x = ids()
    assert torch.equal(looped(x).logits, plain(x).logits)


def test_moe_loop_sums_aux_losses_and_logs_routing_per_iteration():
    """A routed block run R = 2 times: the model's aux loss is the sum of both calls' (replayed by hand), and the
    layer's stats — what metrics.jsonl logs — hold each iteration and the load summed over the calls."""
    torch.manual_seed(0)
    model = TransformerLM(moe_cfg(n_layers=1, loop_repeats=2))
    randomize_modulation(model)
    model.train()
    x = ids()
    model(x)
    total = model.moe_aux_loss()
    blk = model.blocks[0]
    iter_stats = model.loop.iter_stats
    h = model.tok_emb(x) + model.pos_emb(torch.arange(x.shape[1]))
    parts, loads = [], []
    for k in range(2):
        h = blk(h, model.loop.iter_mlp(k))[0]
        parts.append(blk.mlp.aux_loss)
        loads.append(blk.mlp.last_stats["load"])
    assert torch.allclose(total, parts[0] + parts[1]) and not torch.allclose(parts[0], parts[1])
    for k in range(2):
        assert torch.equal(iter_stats[f"iter{k}"]["layer0"]["load"], loads[k])
    model(x)
    metrics = model.moe_metrics()
    assert {"moe0_iter0_max_vio", "moe0_iter1_max_vio", "moe0_iter1_cv", "moe_cv"} <= set(metrics)
    assert torch.equal(model.blocks[0].mlp.last_stats["load"], loads[0] + loads[1])
    assert float(metrics["moe0_iter1_max_vio"]) == float(iter_stats["iter1"]["layer0"]["max_vio"])


def test_unipool_loop_pool_loss_counts_every_call():
    model = TransformerLM(moe_cfg(n_layers=2, loop_repeats=3, moe_pool=True, moe_balance="pool"))
    assert [p.layers_per_forward for p in model.expert_pools] == [2 * 3]
    model.train()
    model(ids())
    assert float(model.expert_pools[0].cur_calls) == 6  # every call of every looped layer recorded its load


def test_moe_loop_cli_run_resumes_bit_exactly(tmp_path):
    moe_cfg()  # skips without the MoE layer
    flags = SMALL + ["--moe-experts", "4", "--moe-top-k", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    cli("train", *flags, "--max-steps", 2, "--schedule-steps", 4, "--out", a)
    cli("train", *flags, "--max-steps", 4, "--out", a, "--resume", "auto")
    cli("train", *flags, "--max-steps", 4, "--out", b)
    assert losses(a) == losses(b)
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_aux" in r and "moe0_iter1_max_vio" in r for r in rows if "loss" in r)


def test_memory_estimate_grows_with_the_loop():
    """Activation memory grows linearly with R (each block run keeps its activations for the backward)."""
    from morphlm.train.memory import estimate_training_memory

    d, d_ff, tokens = 32, 128, 4 * 16
    est = {R: estimate_training_memory(tiny(loop_repeats=R), 4, 16) for R in (1, 3)}
    per_run = tokens * (12 * d + 2 * d_ff + 7 * d) * 4  # fp32; gelu FFN; IterAdaLN's c and six modulations
    assert est[3].activations - est[1].activations == 2 * 2 * per_run  # 2 unique blocks, 2 more runs each
    plain = estimate_training_memory(tiny(), 4, 16)
    assert est[1].activations - plain.activations == 2 * tokens * 7 * d * 4
