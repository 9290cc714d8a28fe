"""Width growth: index maps, bert2BERT FPI (function preservation, stated tolerance) and AKI, bad targets.

Tolerance for "exact" FPI: float32 rounding only. Growing d_model by an integer factor duplicates every unit
equally often, so norm statistics are unchanged; what remains is summation order (a sum over D = k·d terms
of values divided by k), ~1e-7 relative per op, accumulated over the layers. We assert
max|Δlogits| <= 2e-5 · max(1, max|logits|) and measure about 1e-6 · max|logits|.
"""

import pytest
import torch

from morphlm.grow import GrowthError, IndexMap, grow, grow_model, remap
from morphlm.grow.plans import gqa_head_maps
from morphlm.surgery import SurgeryError
from morphlm.model import ModelConfig, TransformerLM


def source(preset="tiny", seed=0, **over):
    """A model whose weights look trained (norm gains/biases away from 1/0, larger matrices)."""
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig.from_name(preset, **over))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


def logits(model, cfg=None, seed=1):
    cfg = cfg or model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=g)
    kw = {"token_type_ids": torch.randint(0, 2, (2, 32), generator=g)} if cfg.n_segments else {}
    model.eval()
    with torch.no_grad():
        return model(ids, **kw).logits


def assert_preserved(grown, src):
    a, b = logits(grown, src.config), logits(src)
    tol = 2e-5 * max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


# ---------------------------------------------------------------------------- index maps
def test_grow_map_identity_prefix_balanced_counts():
    g = torch.Generator().manual_seed(0)
    m = IndexMap.grow(4, 8, g)
    assert m.to_list()[:4] == [0, 1, 2, 3] and m.counts.tolist() == [2, 2, 2, 2]
    assert m.is_new.tolist() == [False] * 4 + [True] * 4
    m = IndexMap.grow(4, 6, g)
    assert sorted(m.counts.tolist()) == [1, 1, 2, 2]
    assert torch.allclose(m.scale, 1.0 / m.counts[m.index].double())
    m = IndexMap.grow(3, 11, g)
    assert max(m.counts.tolist()) - min(m.counts.tolist()) <= 1
    with pytest.raises(SurgeryError):  # a surgery primitive: its own error class (GrowthError's base)
        IndexMap.grow(4, 3, g)


def test_cat_per_unit_select_and_without_duplicates():
    a, b = IndexMap.select([0, 1, 0], 2), IndexMap.select([1, -1], 3)
    assert IndexMap.cat([a, b]).to_list() == [0, 1, 0, 3, -1]
    assert IndexMap.cat([a, b]).n_source == 5
    assert a.per_unit(2).to_list() == [0, 1, 2, 3, 0, 1]
    assert IndexMap.select([1, -1], 2).per_unit(2).to_list() == [2, 3, -1, -1]
    assert a.without_duplicates().to_list() == [0, 1, -1]
    assert IndexMap.extend(2, 4).is_fresh.tolist() == [False, False, True, True]


def test_remap_in_dimension_division_preserves_a_linear_map():
    g = torch.Generator().manual_seed(1)
    W, x = torch.randn(5, 4, generator=g), torch.randn(4, generator=g)
    g_in, g_out = IndexMap.grow(4, 7, g), IndexMap.grow(5, 9, g)
    U = remap(W, (g_out, g_in), divide=(1,))
    y = U @ x[g_in.index]  # duplicated input units
    assert torch.allclose(y, (W @ x)[g_out.index], atol=1e-6)
    # selection (extraction): keep rows 4 and 1, no division
    assert torch.equal(remap(W, (IndexMap.select([4, 1], 5), None)), W[[4, 1]])
    fresh = torch.full((2, 4), 7.0)
    out = remap(W, (IndexMap.select([0, -1], 5), None), fresh=fresh)
    assert torch.equal(out[0], W[0]) and torch.equal(out[1], fresh[1])


@pytest.mark.parametrize("h,hkv,H,Hkv", [(4, 4, 8, 8), (4, 2, 8, 4), (4, 2, 8, 2), (4, 2, 4, 4), (4, 2, 6, 2),
                                         (4, 2, 12, 6), (2, 1, 6, 3)])
def test_gqa_head_maps_keep_every_query_with_its_kv_group(h, hkv, H, Hkv):
    q, kv = gqa_head_maps(h, hkv, H, Hkv, torch.Generator().manual_seed(0))
    rep, R = h // hkv, H // Hkv
    assert set(q.to_list()) == set(range(h))  # every source head survives
    for j, src_head in enumerate(q.to_list()):
        assert kv.to_list()[j // R] == src_head // rep
    if R == rep:
        assert q.to_list()[:h] == list(range(h))


def test_gqa_head_maps_refuse_merging_kv_heads():
    with pytest.raises(GrowthError, match="n_kv_heads"):
        gqa_head_maps(4, 4, 6, 2)


# ---------------------------------------------------------------------------- FPI
FPI_EXACT = [
    ("tiny", {}, dict(d_model=128, n_heads=8, n_kv_heads=8)),
    ("tiny", {}, dict(d_model=192, n_heads=12, n_kv_heads=12, d_ff=512)),
    ("tiny", {}, dict(d_model=128, n_heads=8, n_kv_heads=4)),  # MHA source → GQA target
    ("tiny", {}, dict(d_ff=320)),  # FFN only: exact for any size
    ("tiny", dict(norm_placement="sandwich"), dict(d_model=128, n_heads=8, n_kv_heads=8)),
    ("tiny", dict(norm_placement="dssn", norm="rmsnorm"), dict(d_model=128, n_heads=8, n_kv_heads=8)),
    ("tiny", dict(tie_embeddings=False), dict(d_model=128, n_heads=8, n_kv_heads=8, max_seq_len=256)),
    ("tiny-llama", {}, dict(d_model=128, n_heads=8, n_kv_heads=4)),
    ("tiny-llama", {}, dict(d_model=128, n_heads=8, n_kv_heads=2, d_ff=256)),
    ("tiny-llama", {}, dict(n_kv_heads=4)),  # kv heads only: regrouped queries
    ("tiny-bert", {}, dict(d_model=128, n_heads=8, n_kv_heads=8, max_seq_len=256)),
    ("tiny-bert", dict(head="cls"), dict(d_model=128, n_heads=8, n_kv_heads=8)),
]


@pytest.mark.parametrize("preset,over,target", FPI_EXACT)
def test_fpi_preserves_the_function(preset, over, target):
    src = source(preset, **over)
    out = grow_model(src, src.config.replace(**target), "fpi", seed=3)
    assert out.function_preserving == "exact up to float32 rounding"
    assert out.flops == 0.0
    assert_preserved(out.model, src)


def test_fpi_is_only_approximate_when_d_model_is_not_a_multiple():
    src = source("tiny")
    out = grow_model(src, src.config.replace(d_model=96, n_heads=6, n_kv_heads=6), "fpi", seed=3)
    assert out.function_preserving.startswith("approximate")
    diff = (logits(out.model, src.config) - logits(src)).abs().max().item()
    assert 1e-4 < diff < 0.5  # the norms see duplicated units unevenly


def test_fpi_outgoing_weights_sum_back_to_the_source():
    src = source("tiny-llama")
    out = grow_model(src, src.config.replace(d_ff=256), "fpi", seed=5)
    F = out.plan.params["blocks.0.mlp.fc2.weight"].maps[1]
    W, U = src.blocks[0].mlp.fc2.weight, out.model.blocks[0].mlp.fc2.weight
    summed = torch.zeros_like(W).index_add_(1, F.index, U)  # Σ_{i: g(i)=x} U[:, i]
    assert torch.allclose(summed, W, atol=1e-6)
    gate_up = out.model.blocks[0].mlp.fc1.weight
    f = src.config.d_ff
    assert torch.equal(gate_up[:256], src.blocks[0].mlp.fc1.weight[:f][F.index])  # gate rows follow g_F
    assert torch.equal(gate_up[256:], src.blocks[0].mlp.fc1.weight[f:][F.index])  # up rows: the same map


# ---------------------------------------------------------------------------- AKI
def test_aki_takes_new_units_from_the_layer_above():
    src = source("tiny", n_layers=3)
    target = src.config.replace(d_model=128, n_heads=8, n_kv_heads=8, d_ff=384)
    fpi = grow_model(src, target, "fpi", seed=7)
    aki = grow_model(src, target, "aki", seed=7)
    assert aki.function_preserving.startswith("no")
    new = aki.plan.params["blocks.0.mlp.fc1.weight"].maps[0].is_new
    a0, f0, f1 = (m.blocks[i].mlp.fc1.weight for m, i in ((aki.model, 0), (fpi.model, 0), (fpi.model, 1)))
    assert torch.equal(a0[~new], f0[~new])  # old units as FPI
    assert torch.equal(a0[new], f1[new])  # new units: layer l+1's
    assert not torch.allclose(a0[new], f0[new])  # symmetry broken: they differ from their FPI copies
    D_new = aki.plan.params["blocks.0.attn.proj.weight"].maps[0].is_new
    assert torch.equal(aki.model.blocks[1].attn.proj.weight[D_new], fpi.model.blocks[2].attn.proj.weight[D_new])
    for name, p in aki.model.blocks[2].named_parameters():  # the top layer falls back to FPI
        assert torch.equal(p, dict(fpi.model.blocks[2].named_parameters())[name])
    assert (logits(aki.model, src.config) - logits(src)).abs().max() > 1e-3


def test_aki_gqa_and_bert_variants_run_and_keep_old_rows():
    for preset, target in (("tiny-llama", dict(d_model=128, n_heads=8, n_kv_heads=4)),
                           ("tiny-bert", dict(d_model=128, n_heads=8, n_kv_heads=8))):
        src = source(preset)
        aki = grow_model(src, src.config.replace(**target), "aki", seed=1)
        fpi = grow_model(src, src.config.replace(**target), "fpi", seed=1)
        qkv = aki.plan.params["blocks.0.attn.qkv.weight"].maps[0].is_new
        assert torch.equal(aki.model.blocks[0].attn.qkv.weight[~qkv], fpi.model.blocks[0].attn.qkv.weight[~qkv])
        assert torch.equal(aki.model.blocks[0].attn.qkv.weight[qkv], fpi.model.blocks[1].attn.qkv.weight[qkv])
        assert torch.isfinite(logits(aki.model, src.config)).all()


def test_growth_is_deterministic_in_the_seed_and_leaves_the_source_alone():
    src = source("tiny")
    before = {k: v.clone() for k, v in src.state_dict().items()}
    target = src.config.replace(d_model=96, n_heads=6, n_kv_heads=6)
    a, b, c = (grow(src, target, "fpi", seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    assert all(torch.equal(before[k], v) for k, v in src.state_dict().items())


# ---------------------------------------------------------------------------- bad targets
@pytest.mark.parametrize("change,message", [
    (dict(vocab_size=1024), "vocab_size=512"),
    (dict(d_model=32, n_heads=2, n_kv_heads=2), "smaller than the source in d_model"),
    (dict(n_layers=1), "n_layers 2 → 1"),
    (dict(d_model=128), "head_dim changes from 16 to 32"),
    (dict(d_model=120, n_heads=4), "not a multiple of 16"),
    (dict(norm="rmsnorm"), "differ in norm"),
    (dict(position="rope"), "differ in position"),
    (dict(norm_placement="post", final_norm=True), "differ in norm_placement"),
])
def test_incompatible_targets_are_refused(change, message):
    src = source("tiny")
    with pytest.raises(GrowthError, match=message):
        grow(src, src.config.replace(**change), "fpi")


def test_head_type_and_unknown_method_or_option():
    bert = source("tiny-bert")
    with pytest.raises(GrowthError, match="differ in head"):
        grow(bert, bert.config.replace(head="cls"), "fpi")
    with pytest.raises(GrowthError, match="unknown growth method 'nope'"):
        grow(bert, bert.config, "nope")
    with pytest.raises(GrowthError, match=r"\['ramp_steps'\] do not apply"):
        grow(bert, bert.config, "fpi", ramp_steps=5)
    with pytest.raises(GrowthError, match="unknown target 'huge'"):
        grow(bert, "huge", "fpi")
