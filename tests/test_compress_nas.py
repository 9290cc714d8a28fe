"""AutoTinyBERT: the search space, sub-model views equal to extracted standalone sub-models, gradients only on
the sampled slices, bit-exact resume of super-model training, the latency predictor, evolutionary vs random
search at equal evaluation counts under a latency bound, and `morphlm search arch` end to end."""

import json
import random

import pytest
import torch

from morphlm.compress import CompressionError
from morphlm.compress.nas import (Arch, LatencyPredictor, SearchSpace, SubnetView, SupernetLoss, arch_config,
                                  evolutionary_search, fit_latency_predictor, hand_designed_arch,
                                  measure_arch_latencies, proxy_fitness, random_search, sample_arch, subnet,
                                  train_supernet)
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import flops as flops_mod
from morphlm.train.checkpoint import load_model, load_state_dict
from morphlm.train.optim import TrainArgs
from toydata import ToyData

from clihelp import cli


def supermodel(preset="tiny", seed=0, **over):
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig.from_name(preset, **over))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model


def inputs(cfg, T=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    kw = {"input_ids": torch.randint(0, cfg.vocab_size, (2, T), generator=g)}
    if cfg.n_segments:
        kw["token_type_ids"] = torch.randint(0, 2, (2, T), generator=g)
    return kw


# ---------------------------------------------------------------------------- space
def test_space_candidates_are_valid_and_bounded():
    cfg = ModelConfig.from_name("tiny-llama")  # RoPE, GQA (4 q / 2 kv heads), head_dim 16
    space = SearchSpace(cfg, (1, 2), (16, 64, 8), (2, 4), (32, 192, 32))
    cands = space.candidates()
    assert cands and all(space.valid(a) for a in cands)
    for a in cands:
        hd = a.d_model // a.n_heads
        assert a.d_model % a.n_heads == 0 and hd <= 16 and hd % 2 == 0 and a.n_heads % 2 == 0
        assert arch_config(cfg, a).n_kv_heads == a.n_heads // 2
    assert Arch(2, 40, 2, 64) not in cands  # head_dim 20 > 16
    assert space.max_arch() == Arch(2, 64, 4, 192)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))).candidates() == cands
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [sample_arch(space, rng1) for _ in range(5)] == [sample_arch(space, rng2) for _ in range(5)]
    with pytest.raises(CompressionError, match="exceeds the super-model"):
        SearchSpace(cfg, (1, 3), (16, 64, 8), (4,), (32, 192, 32))
    with pytest.raises(CompressionError, match="no valid architecture"):
        SearchSpace(cfg, (1, 2), (20, 20, 1), (4,), (32, 192, 32))


# ---------------------------------------------------------------------------- views and sub-models
@pytest.mark.parametrize("preset,over", [("tiny", {}), ("tiny-llama", {}), ("tiny-bert", {}),
                                         ("tiny-bert", {"head": "cls", "n_classes": 3})])
def test_subnet_view_forward_equals_extracted_standalone_submodel(preset, over):
    sup = supermodel(preset, **over).eval()
    space = SearchSpace.for_model(sup.config, heads=(2, 4))
    rng = random.Random(0)
    archs = [sample_arch(space, rng) for _ in range(4)] + [space.max_arch()]
    for arch in archs:
        kw = inputs(sup.config)
        with torch.no_grad():
            view = SubnetView(sup, arch)(**kw, output_hidden_states=True)
            alone = subnet(sup, arch).eval()(**kw, output_hidden_states=True)
        assert torch.equal(view.logits, alone.logits), arch
        assert len(view.hidden_states) == arch.n_layers + 1
    with torch.no_grad():  # the maximal arch is the super-model itself
        kw = inputs(sup.config)
        assert torch.equal(SubnetView(sup, space.max_arch())(**kw).logits, sup(**kw).logits)


def test_only_the_sampled_slices_get_gradients():
    sup = supermodel("tiny-llama", n_layers=3)
    arch = Arch(2, 32, 4, 96)
    view = SubnetView(sup, arch)
    kw = inputs(sup.config)
    view(**kw, labels=torch.roll(kw["input_ids"], -1, 1)).loss.backward()
    # the entries the view reads: the gradient of the sum of its slices w.r.t. a ones-copy of every parameter
    ones = {n: torch.ones_like(p, requires_grad=True) for n, p in sup.named_parameters()}
    from morphlm.surgery import remap

    sum(remap(ones[pm.source], pm.maps).sum() for pm in view.plan.params.values()).backward()
    for n, p in sup.named_parameters():
        used = ones[n].grad != 0 if ones[n].grad is not None else torch.zeros_like(p, dtype=torch.bool)
        if n.startswith("blocks.2."):  # layer 3 is not part of a 2-layer arch: never read, no gradient
            assert not bool(used.any()) and p.grad is None, n
            continue
        assert float(p.grad[~used].abs().sum()) == 0.0, n
        if n.endswith("weight") and "norm" not in n:
            assert bool((p.grad[used] != 0).any()), n
    assert sup.blocks[0].mlp.fc2.weight.grad[:32, :96].abs().sum() > 0  # leading slices: rows d, cols d_ff
    g = sup.blocks[0].mlp.fc2.weight.grad
    assert g[32:].abs().sum() == 0 and g[:, 96:].abs().sum() == 0


def test_supernet_training_resumes_bit_exactly_and_counts_sampled_flops(tmp_path):
    cfg = ModelConfig.from_name("tiny", n_layers=2)
    space = SearchSpace.for_model(cfg, heads=(2, 4))
    data = ToyData(seq_len=16, batch_size=4)
    args = dict(max_steps=4, schedule_steps=4, warmup_steps=1, lr=1e-3, progress=False, eval_at_end=True, seed=7)

    def run(out, steps, resume="never"):
        torch.manual_seed(0)
        model = TransformerLM(cfg)
        return model, train_supernet(model, data, TrainArgs(out_dir=str(out), resume=resume,
                                                            **{**args, "max_steps": steps}), space)

    full, res = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    _, res_b = run(tmp_path / "b", 4, resume="auto")
    sa, _ = load_state_dict(tmp_path / "a")
    sb, _ = load_state_dict(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    loss = SupernetLoss(space, seed=7)
    archs = [loss.arch_at(s) for s in range(4)]
    assert len(set(archs)) > 1 and archs == [SupernetLoss(space, seed=7).arch_at(s) for s in range(4)]
    want = sum(flops_mod.training_flops_per_token(space.arch_config(a), 16) * 4 * 16 for a in archs)
    assert res.flops == pytest.approx(want, rel=1e-9) and res_b.flops == pytest.approx(want, rel=1e-9)
    lineage = json.loads((tmp_path / "a" / "lineage.json").read_text())
    assert lineage["verb"] == "supernet" and SearchSpace.from_dict(lineage["space"]).candidates() == space.candidates()
    with pytest.raises(CompressionError, match="super-model's shape"):
        train_supernet(TransformerLM(cfg.replace(d_ff=128)), data, TrainArgs(max_steps=1, progress=False), space)


# ---------------------------------------------------------------------------- latency
def synthetic_ms(a):
    return 0.2 + 3e-3 * a.n_layers * a.d_model + 2e-6 * a.n_layers * a.d_model * a.d_ff + 0.05 * a.n_layers * a.n_heads


def test_latency_predictor_fits_a_linear_latency_and_measures_real_ones():
    space = SearchSpace.for_model(ModelConfig.from_name("tiny"), heads=(2, 4))
    archs = random.Random(0).sample(space.candidates(), 60)
    ms = [synthetic_ms(a) for a in archs]
    pred, report = fit_latency_predictor(archs, ms, holdout=0.25)
    assert report["n_holdout"] == 15 and report["holdout_mape"] < 0.05 and report["train_mape"] < 0.05
    assert pred.predict(archs[0]) == pytest.approx(ms[0], rel=1e-3)
    again = LatencyPredictor.from_dict(json.loads(json.dumps(pred.to_dict())))
    assert again.predict(archs[1]) == pred.predict(archs[1])
    with pytest.raises(CompressionError, match="not fitted"):
        LatencyPredictor().predict(archs[0])
    measured = measure_arch_latencies(space, [Arch(1, 16, 2, 32), space.max_arch()], seq_len=32, warmup=1, runs=3,
                                      progress=False)
    assert all(m > 0 for m in measured)


# ---------------------------------------------------------------------------- search
def test_searches_spend_equal_evaluations_within_the_latency_bound():
    space = SearchSpace.for_model(ModelConfig.from_name("tiny"), heads=(2, 4))
    pred = LatencyPredictor().fit(space.candidates(), [synthetic_ms(a) for a in space.candidates()])
    bound = 1.2
    calls = {"evo": [], "rand": []}

    def make(tag):
        def fitness(a):
            calls[tag].append(a)
            return a.d_model + a.d_ff / 10 + 3 * a.n_layers - a.n_heads
        return fitness

    evo = evolutionary_search(space, make("evo"), pred, bound, 40, seed=1)
    rnd = random_search(space, make("rand"), pred, bound, 40, seed=1)
    for res, tag in ((evo, "evo"), (rnd, "rand")):
        assert res["n_evals"] == 40 == len(res["history"]) == len(calls[tag])
        assert len(set(calls[tag])) == 40  # no arch is evaluated twice
        assert all(h["pred_ms"] <= bound and pred.predict(h["arch"]) <= bound for h in res["history"])
        assert res["best_fitness"] == max(h["fitness"] for h in res["history"])
        assert isinstance(res["best_arch"], Arch) and pred.predict(res["best_arch"]) <= bound
    assert any(h["origin"] == "mutation" for h in evo["history"])
    # fewer feasible archs than the budget: both evaluate each feasible arch once
    feasible = [a for a in space.candidates() if pred.predict(a) <= 0.45]
    small = [f(space, make("evo"), pred, 0.45, 10**4, seed=0)["n_evals"] for f in (evolutionary_search, random_search)]
    assert small == [len(feasible)] * 2 and len(feasible) > 0
    with pytest.raises(CompressionError, match="no architecture satisfies"):
        random_search(space, make("rand"), pred, 0.1, 5)
    with pytest.raises(CompressionError, match="no architecture satisfies"):
        evolutionary_search(space, make("evo"), pred, 0.1, 5)
    hand = hand_designed_arch(space, pred, 1.0)
    assert hand.n_layers == 2 and hand.n_heads == 4
    assert abs(hand.d_ff - 4 * hand.d_model) == min(abs(f - 4 * hand.d_model) for f in space.ffn_choices)


def test_confirm_by_measurement_keeps_the_fittest_finalist_inside_the_measured_window():
    from morphlm.compress.nas import confirm_by_measurement

    archs = [Arch(2, 64, 2, 256), Arch(2, 96, 2, 256), Arch(1, 128, 2, 512), Arch(1, 64, 2, 128)]
    fits = [0.70, 0.75, 0.80, 0.60]
    res = {"best_arch": archs[2], "best_fitness": 0.80, "n_evals": 4,
           "history": [{"eval": i, "arch": a.to_dict(), "fitness": f, "pred_ms": 1.0, "origin": "random"}
                       for i, (a, f) in enumerate(zip(archs, fits))]}
    true_ms = {archs[0]: 0.9, archs[1]: 1.3, archs[2]: 0.5, archs[3]: 0.95}  # the predictor was wrong on 1, 2
    timed = []

    def measure(a):
        timed.append(a)
        return true_ms[a]

    out = confirm_by_measurement(res, measure, 1.0, min_latency_ms=0.85, top_k=3)
    assert out["best_arch"] == archs[0] and out["best_fitness"] == 0.70  # 2 too fast, 1 too slow
    assert out["search_best_arch"] == archs[2] and out["confirmed"]["in_window"]
    assert timed == [archs[2], archs[1], archs[0]]  # only the top 3 by fitness are timed
    assert res["best_arch"] == archs[2]  # the input is not modified
    none = confirm_by_measurement(res, measure, 0.2, top_k=2)
    assert none["best_arch"] == archs[2] and not none["confirmed"]["in_window"]
    with pytest.raises(CompressionError, match="top_k"):
        confirm_by_measurement(res, measure, 1.0, top_k=0)


def test_proxy_fitness_uses_inherited_weights():
    sup = supermodel("tiny")
    space = SearchSpace.for_model(sup.config, heads=(4,))
    data = ToyData(seq_len=16, batch_size=4)
    batches = data.val_batches()
    fitness = proxy_fitness(sup, batches)
    sup.eval()
    with torch.no_grad():
        full = sum(float(sup(**b).loss) for b in batches) / len(batches)
        small_arch = Arch(1, 32, 4, 64)
        small = sum(float(subnet(sup, small_arch)(**b).loss) for b in batches) / len(batches)
    assert fitness(space.max_arch()) == pytest.approx(-full, rel=1e-6)
    assert fitness(small_arch) == pytest.approx(-small, rel=1e-6)
    tuned = proxy_fitness(sup, batches, finetune_data=data,
                          finetune_args=TrainArgs(max_steps=2, lr=1e-3, warmup_steps=0))
    assert tuned(small_arch) != pytest.approx(-small, rel=1e-9)


# ---------------------------------------------------------------------------- CLI


def test_cli_train_supernet_then_search_and_extract(tmp_path):
    sup = tmp_path / "sup"
    res = cli("search", "arch", sup, "--train-supernet", "--preset", "tiny-bert", "--corpus", "stdlib",
              "--max-bytes", 200000, "--max-steps", 4, "--seq-len", 32, "--batch-size", 4, "--heads", "2,4",
              "--layers", "1:2", "--hidden", "32:64:8", "--ffn", "64:256:64")
    assert "super-model: step 4" in res.stdout
    out = tmp_path / "found"
    res = cli("search", "arch", sup, "--max-latency-ms", 1000, "--evals", 4, "--out", out, "--strategy", "both",
              "--latency-samples", 6, "--latency-runs", 1, "--eval-batches", 1)
    assert "held-out" in res.stdout and "evolutionary: best" in res.stdout and "random: best" in res.stdout
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["verb"] == "search-arch" and lineage["searches"]["random"]["n_evals"] == 4
    assert lineage["searches"]["evolutionary"]["n_evals"] == 4 and lineage["parents"][0]["role"] == "supernet"
    arch = Arch.from_dict(lineage["arch"])
    model = load_model(out)
    assert torch.equal(model.eval()(**inputs(model.config)).logits,
                       subnet(load_model(sup), arch).eval()(**inputs(model.config)).logits)
    search = json.loads((out / "search.json").read_text())
    assert len(search["latency_samples"]) == 6 and len(search["history"]["evolutionary"]) == 4
    assert json.loads(cli("eval", out, "--json", "--max-batches", 1).stdout.strip().splitlines()[-1])["val_loss"] > 0
    res = cli("search", "arch", sup, "--max-latency-ms", 1e-6, "--evals", 2, "--out", tmp_path / "none",
              "--latency-samples", 6, "--latency-runs", 1, code=2)
    assert "no architecture satisfies" in res.output
    res = cli("search", "arch", tmp_path / "found", "--max-latency-ms", 5, "--out", tmp_path / "x", code=2)
    assert "not a super-model directory" in res.output
