"""Learned growth operators (LiGO, Mango): exact special cases, fitting through fit(), shapes, frozen source."""

import json

import pytest
import torch

from morphlm.grow.learned import LiGOGrower, check_growth_target, ligo_grow
from morphlm.grow.mango import MangoGrower, mango_grow
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import flops as flops_mod
from morphlm.train.loop import TrainArgs, fit
from toydata import ToyData

PRESETS = ["tiny", "tiny-llama", "tiny-bert"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These matmuls are tiny: a second thread buys nothing, and OpenMP's spin-waits make steps up to 50x slower
    when the other core is busy (seen on the 2-core CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _src(preset="tiny", seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.from_name(preset, **kw)).eval()


def _ids(seed=1, shape=(2, 16)):
    return torch.randint(0, 512, shape, generator=torch.Generator().manual_seed(seed))


def _wider(cfg, factor=2, **kw):
    """Every width times ``factor`` at fixed head_dim (kv heads too), depth unchanged."""
    return cfg.replace(d_model=cfg.d_model * factor, n_heads=cfg.n_heads * factor,
                       n_kv_heads=cfg.n_kv_heads * factor, d_ff=cfg.d_ff * factor, **kw)


def _stackbert(n_src_layers):
    """StackBERT computed directly: target layer i is source layer i mod L."""
    def source_name(name):
        if not name.startswith("blocks."):
            return name
        _, i, rest = name.split(".", 2)
        return f"blocks.{int(i) % n_src_layers}.{rest}"
    return source_name


@pytest.mark.parametrize("preset", PRESETS)
def test_ligo_stack_init_equals_stackbert(preset):
    src = _src(preset)
    target = src.config.replace(n_layers=5)  # 2 -> 5: not a multiple, exercises l mod L
    grown = LiGOGrower(src, target, init="stack").materialise().eval()
    src_state, name = src.state_dict(), _stackbert(src.config.n_layers)
    for key, value in grown.state_dict().items():
        assert torch.allclose(value, src_state[name(key)], rtol=0, atol=1e-6), key
    # and the same network: StackBERT built by copying layers
    ref = TransformerLM(target).eval()
    ref.load_state_dict({k: src_state[name(k)] for k in ref.state_dict()})
    with torch.no_grad():
        assert torch.allclose(grown(_ids()).logits, ref(_ids()).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_duplication_init_preserves_function_when_widths_double(preset):
    """init='stack' with only widths grown (d_model x2, heads x2 incl. GQA kv heads, d_ff x2): the source function."""
    src = _src(preset)
    target = _wider(src.config)
    with torch.no_grad():
        ref = src(_ids()).logits
        growers = [LiGOGrower(src, target, init="stack"), LiGOGrower(src, target, init="stack", share_width=False),
                   MangoGrower(src, target, rank=1, init="stack"), MangoGrower(src, target, rank=3, init="stack")]
        for g in growers:
            out = g.materialise().eval()(_ids()).logits
            assert (out - ref).abs().max() < 1e-5, type(g).__name__


@pytest.mark.parametrize("n_kv_heads", [2, 8])
def test_ligo_keeps_the_kv_grouping_when_the_group_size_changes(n_kv_heads):
    """4 query / 2 kv heads -> 8 / 2 (groups of 4) or 8 / 8 (MHA): every target query head still attends with the
    kv head of the source head it copies, so the duplication init stays exact."""
    src = _src("tiny-llama")
    target = src.config.replace(d_model=128, n_heads=8, n_kv_heads=n_kv_heads, d_ff=384)
    with torch.no_grad():
        out = LiGOGrower(src, target, init="stack").materialise().eval()(_ids()).logits
        assert (out - src(_ids()).logits).abs().max() < 1e-5


def test_mango_rank1_is_the_modewise_product():
    src = _src("tiny-llama")  # GQA + SwiGLU + RMSNorm: every slice kind
    target = src.config.replace(d_model=128, n_heads=8, n_kv_heads=4, n_layers=3)
    g = MangoGrower(src, target, rank=1, init="random", seed=3)
    with torch.no_grad():
        m_t, v_t = g.layer_tensors()
        sb, so, si, sl, sc = (getattr(g, n)[0, :, :, 0] for n in ("S_B", "S_O", "S_I", "S_L", "S_C"))
        # independent mode-wise maps: M_t = M_s x_B S_B x_O S_O x_I S_I x_L S_L (Tucker product, rank-1 cores)
        x = torch.einsum("boil,bB->Boil", g.M_s, sb)
        x = torch.einsum("Boil,oO->BOil", x, so)
        x = torch.einsum("BOil,iI->BOIl", x, si)
        explicit_m = torch.einsum("BOIl,lL->BOIL", x, sl)
        explicit_v = torch.einsum("col,cC,oO,lL->COL", g.V_s, sc, so, sl)
        assert m_t.shape == (len(g.mats_t), 128, 128, 3)
        assert torch.allclose(m_t, explicit_m, rtol=0, atol=1e-5 * explicit_m.abs().max())
        assert torch.allclose(v_t, explicit_v, rtol=0, atol=1e-5 * explicit_v.abs().max())
        # the native weights are read from the right slices of that tensor
        layers = g.grown_layers()
        q = explicit_m[g.mats_t.index("q")].permute(2, 0, 1)  # (L_t, D_t, D_t)
        assert torch.allclose(layers["q"], q, rtol=0, atol=1e-5 * explicit_m.abs().max())


def test_mango_rank_above_one_couples_modes():
    src = _src("tiny")
    target = src.config.replace(n_layers=3)
    g1 = MangoGrower(src, target, rank=2, init="random", seed=0)
    with torch.no_grad():  # a rank-2 ring is not the product of its rank-averaged mode maps
        m_t, _ = g1.layer_tensors()
        maps = [torch.diagonal(getattr(g1, n), dim1=0, dim2=3).sum(-1) for n in ("S_B", "S_O", "S_I", "S_L")]
        product = torch.einsum("boil,bB,oO,iI,lL->BOIL", g1.M_s, *maps)
        assert not torch.allclose(m_t, product, atol=1e-4)


def _trained_source(preset="tiny", steps=15):
    src = _src(preset).train()
    fit(src, None, ToyData(), TrainArgs(max_steps=steps, lr=3e-3, warmup_steps=2, progress=False, eval_at_end=False))
    return src.eval()


def _val_loss(model, data):
    model.eval()
    with torch.no_grad():
        return sum(float(model(**b).loss) for b in data.val_batches()) / len(data.val_batches())


@pytest.mark.parametrize("grow_fn, kw", [(ligo_grow, {}), (mango_grow, {"rank": 2})])
def test_fitting_lowers_the_grown_models_loss_and_leaves_the_source_frozen(grow_fn, kw):
    src = _trained_source()
    before = {k: v.clone() for k, v in src.state_dict().items()}
    target = src.config.replace(d_model=96, n_heads=6, n_kv_heads=6, d_ff=None, n_layers=4)
    data = ToyData()
    initial, _ = grow_fn(src, target, data, steps=0, **kw)  # the initial operator, materialised
    # fp32: fit's own evaluation is compared with an fp32 forward below (precision auto is bf16 on a bf16 CPU)
    grown, info = grow_fn(src, target, data, steps=20, fit_args={"precision": "fp32"}, **kw)
    assert _val_loss(grown, data) < _val_loss(initial, data) - 0.1
    assert info["final_val_loss"] < info["initial_val_loss"]
    assert abs(info["final_val_loss"] - _val_loss(grown, data)) < 1e-4  # fit evaluated the same weights
    for k, v in src.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in src.parameters())
    # FLOPs for the lineage: the target's training FLOPs per token x tokens, plus the operator's matmuls
    B, T = data.train_batch(0)["input_ids"].shape
    assert info["tokens"] == 20 * B * T
    per_token = flops_mod.training_flops_per_token(target, T)
    assert info["flops_target_training"] == pytest.approx(per_token * info["tokens"])
    assert 0 < info["flops_operator"]
    assert info["flops"] == pytest.approx(info["flops_target_training"] + info["flops_operator"])
    json.dumps(info)


@pytest.mark.parametrize("cls", [LiGOGrower, MangoGrower])
def test_wrapper_forward_equals_materialised_forward(cls):
    src = _src("tiny-llama")
    target = src.config.replace(d_model=96, n_heads=6, n_kv_heads=3, n_layers=3)
    g = cls(src, target, init="noisy")
    fit(g, None, ToyData(), TrainArgs(max_steps=3, lr=1e-3, warmup_steps=0, weight_decay=0.0, progress=False,
                                      eval_at_end=False))
    g.eval()
    model = g.materialise().eval()
    with torch.no_grad():
        assert torch.allclose(g(_ids()).logits, model(_ids()).logits, rtol=0, atol=1e-6)
    # only the operator is trainable state; the source rides in non-persistent buffers
    names = set(g.state_dict())
    assert names == {n for n, _ in g.named_parameters()} and not any("src" in n for n in names)


@pytest.mark.parametrize("preset, src_kw, changes", [
    ("tiny-llama", {}, dict(d_model=128, n_heads=8, n_kv_heads=2, d_ff=320, n_layers=3)),  # GQA group 2 -> 4
    ("tiny-llama", {}, dict(d_model=128, n_heads=8, n_kv_heads=8, n_layers=4)),  # GQA -> MHA
    ("tiny-bert", dict(d_ff=200), dict(d_model=96, n_heads=6, n_kv_heads=6, d_ff=300, n_layers=3)),  # d_ff % d_model
    ("tiny-bert", dict(head="cls"), dict(d_model=96, n_heads=6, n_kv_heads=6, n_layers=3)),
    ("tiny", dict(norm_placement="sandwich", tie_embeddings=False), dict(d_model=96, n_heads=6, n_kv_heads=6)),
])
def test_variants_materialise_with_the_target_shapes(preset, src_kw, changes):
    src = _src(preset, **src_kw)
    target = src.config.replace(**changes)
    expected = {k: v.shape for k, v in TransformerLM(target).state_dict().items()}
    for g in (LiGOGrower(src, target), MangoGrower(src, target, rank=2)):
        model = g.materialise()
        assert {k: v.shape for k, v in model.state_dict().items()} == expected
        with torch.no_grad():
            out = model(_ids(), labels=torch.zeros(2, dtype=torch.long) if target.head == "cls" else _ids(2))
        assert torch.isfinite(out.loss)


def test_impossible_targets_raise_value_errors():
    cfg = ModelConfig.from_name("tiny")
    cases = [
        (cfg.replace(d_model=32, n_heads=2, n_kv_heads=2), "smaller"),
        (cfg.replace(n_layers=1), "smaller"),
        (cfg.replace(vocab_size=1024), "vocab"),
        (cfg.replace(d_model=128), "head_dim"),  # 4 heads of 32 instead of 16
        (cfg.replace(max_seq_len=256), "max_seq_len"),
        (cfg.replace(activation="swiglu"), "activation"),
    ]
    src = TransformerLM(cfg)
    for target, match in cases:
        with pytest.raises(ValueError, match=match):
            check_growth_target(cfg, target)
        with pytest.raises(ValueError):
            LiGOGrower(src, target)
        with pytest.raises(ValueError):
            MangoGrower(src, target)
    with pytest.raises(ValueError, match="init"):
        LiGOGrower(src, cfg, init="zeros")
    with pytest.raises(ValueError, match="rank"):
        MangoGrower(src, cfg, rank=0)
    with pytest.raises(ValueError, match="checkpoint"):
        ligo_grow(src, cfg, ToyData(), steps=2, fit_args={"out_dir": "somewhere"})


def test_registered_in_the_growth_verb(tmp_path):
    from morphlm.grow import GrowthError, available_methods, grow_checkpoint, grow_model
    from morphlm.train import checkpoint as ckpt

    assert {"ligo", "mango"} <= set(available_methods())
    src = _src("tiny")
    target = src.config.replace(n_layers=3)
    with pytest.raises(GrowthError, match="data"):
        grow_model(src, target, "ligo")
    out = grow_model(src, target, "mango", data=ToyData(), steps=2, rank=1)
    assert out.flops > 0 and out.options["operator"]["steps"] == 2 and out.model.config.n_layers == 3
    ckpt.save_checkpoint(tmp_path / "src", src.state_dict(), src.config)
    summary = grow_checkpoint(tmp_path / "src", target, "ligo", tmp_path / "grown", data=ToyData(), steps=2)
    lineage = ckpt.read_lineage(tmp_path / "grown")
    assert lineage["method"] == "ligo" and lineage["flops"] == summary["flops"] > 0
    assert ckpt.load_model(tmp_path / "grown").config.n_layers == 3
