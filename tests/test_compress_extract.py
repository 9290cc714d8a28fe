"""Extract-then-Distill: index maps shared with growth, keep-all exactness, the units each method keeps (incl.
GQA grouping, RoPE pairs, fused [q;k;v] and [gate;up]), Taylor importance against finite differences, ETD-Impt
picking the top units of a constructed teacher, uniform depth, bad students, and `morphlm extract` end to end."""

import json

import pytest
import torch

from morphlm.compress import CompressionError
from morphlm.compress.extract import (_width_plan, choose_units, extract, extract_student, importance_scores,
                                      resolve_layers)
from morphlm.grow import IndexMap
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.checkpoint import load_model

from clihelp import cli


def teacher(preset="tiny", seed=0, **over):
    """A model whose weights look trained (norm gains/biases away from 1/0)."""
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig.from_name(preset, **over))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


def inputs(cfg, seed=1, T=24):
    g = torch.Generator().manual_seed(seed)
    kw = {"input_ids": torch.randint(0, cfg.vocab_size, (2, T), generator=g)}
    if cfg.n_segments:
        kw["token_type_ids"] = torch.randint(0, 2, (2, T), generator=g)
    return kw


def logits(model, cfg=None):
    with torch.no_grad():
        return model.eval()(**inputs(cfg or model.config)).logits


class Batches:
    """A BatchSource of labelled batches (the teacher's own loss is differentiated)."""

    def __init__(self, cfg, B=4, T=24):
        self.cfg, self.B, self.T = cfg, B, T

    def train_batch(self, step):
        g = torch.Generator().manual_seed(100 + step)
        ids = torch.randint(0, self.cfg.vocab_size, (self.B, self.T), generator=g)
        if self.cfg.head == "cls":
            return {"input_ids": ids, "labels": torch.randint(0, self.cfg.n_classes, (self.B,), generator=g)}
        return {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}


# ---------------------------------------------------------------------------- index maps
def test_per_unit_within_keeps_chosen_rows_of_each_unit():
    heads = IndexMap.select([2, 0], 3)
    assert heads.per_unit(4).to_list() == [8, 9, 10, 11, 0, 1, 2, 3]  # unchanged default
    assert heads.per_unit(4, [1, 3]).to_list() == [9, 11, 1, 3]  # shared offsets
    assert heads.per_unit(4, [[0, 2], [3, 1]]).to_list() == [8, 10, 3, 1]  # per-unit offsets, in order
    assert heads.per_unit(4, [1]).n_source == 12
    with pytest.raises(ValueError):
        heads.per_unit(4, [4])
    with pytest.raises(ValueError):
        heads.per_unit(4, [[0], [1], [2]])


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("preset,over", [("tiny", {}), ("tiny-llama", {}), ("tiny-bert", {}),
                                         ("tiny-bert", {"head": "cls", "n_classes": 3}),
                                         ("tiny", {"norm_placement": "sandwich", "tie_embeddings": False})])
@pytest.mark.parametrize("method", ["leading", "rand", "impt"])
def test_keep_all_extraction_is_an_exact_copy(preset, over, method):
    t = teacher(preset, **over)
    out = extract(t, t.config, method=method, data=Batches(t.config), n_batches=1, seed=3)
    assert out.function_preserving.startswith("exact")
    assert torch.equal(logits(out.model), logits(t))
    for name, value in t.state_dict().items():
        assert torch.equal(out.model.state_dict()[name], value), name


def test_shorter_max_seq_len_keeps_leading_positions():
    t = teacher("tiny")
    s = extract_student(t, t.config.replace(max_seq_len=32), method="leading")
    assert torch.equal(s.pos_emb.weight, t.pos_emb.weight[:32])
    assert torch.equal(logits(s), logits(t))


# ---------------------------------------------------------------------------- which units are kept
def test_kept_units_are_the_claimed_ones_mha():
    t = teacher("tiny", n_layers=4)  # d 64, 4 heads of 16, d_ff 256
    scfg = t.config.replace(d_model=32, n_heads=4, n_layers=2, d_ff=96)  # head_dim 8
    out = extract(t, scfg, method="rand", seed=5)
    c, s, ts = out.choice, out.model.state_dict(), t.state_dict()
    assert c.layers == [1, 3]
    assert len(c.hidden) == 32 and c.hidden == sorted(set(c.hidden))
    H = torch.tensor(c.hidden)
    assert torch.equal(s["tok_emb.weight"], ts["tok_emb.weight"][:, H])
    assert torch.equal(s["pos_emb.weight"], ts["pos_emb.weight"][:, H])
    for k, l in enumerate(c.layers):
        q = [h * 16 + d for h, dims in zip(c.q_heads[l], c.head_dims[l]) for d in dims]
        kv = [64 + r for r in q], [128 + r for r in q]  # MHA: kv head g = query head g
        rows = torch.tensor(q + kv[0] + kv[1])
        assert torch.equal(s[f"blocks.{k}.attn.qkv.weight"], ts[f"blocks.{l}.attn.qkv.weight"][rows][:, H])
        assert torch.equal(s[f"blocks.{k}.attn.qkv.bias"], ts[f"blocks.{l}.attn.qkv.bias"][rows])
        assert torch.equal(s[f"blocks.{k}.attn.proj.weight"], ts[f"blocks.{l}.attn.proj.weight"][H][:, torch.tensor(q)])
        F = torch.tensor(c.ffn[l])
        assert len(c.ffn[l]) == 96
        assert torch.equal(s[f"blocks.{k}.mlp.fc1.weight"], ts[f"blocks.{l}.mlp.fc1.weight"][F][:, H])
        assert torch.equal(s[f"blocks.{k}.mlp.fc2.weight"], ts[f"blocks.{l}.mlp.fc2.weight"][H][:, F])
        assert torch.equal(s[f"blocks.{k}.mlp.fc2.bias"], ts[f"blocks.{l}.mlp.fc2.bias"][H])
        assert torch.equal(s[f"blocks.{k}.norm1.weight"], ts[f"blocks.{l}.norm1.weight"][H])
    assert torch.equal(s["final_norm.bias"], ts["final_norm.bias"][H])
    # leading = the first units
    lead = choose_units(t.config, scfg, "leading")
    assert lead.hidden == list(range(32)) and lead.ffn[1] == list(range(96))
    assert lead.head_dims[1] == [list(range(8))] * 4
    # rand: reproducible from the seed, different for another seed
    assert choose_units(t.config, scfg, "rand", seed=5) == c
    assert choose_units(t.config, scfg, "rand", seed=6).hidden != c.hidden


def test_gqa_groups_rope_pairs_and_fused_swiglu():
    t = teacher("tiny-llama", n_heads=8, n_kv_heads=4, d_model=64)  # 8 q heads of 8, 4 kv heads, R = 2
    scfg = t.config.replace(d_model=24, n_heads=4, n_kv_heads=2, d_ff=40)  # head_dim 6, rep 2
    for seed in range(4):
        out = extract(t, scfg, method="rand", seed=seed)
        c, s, ts = out.choice, out.model.state_dict(), t.state_dict()
        for k, l in enumerate(c.layers):
            kv, q = c.kv_heads[l], c.q_heads[l]
            assert len(kv) == 2 and len(q) == 4
            for j, h in enumerate(q):  # student query head j attends with student kv head j // 2
                assert h // 2 == kv[j // 2]
            for dims in c.head_dims[l]:  # rotation pairs (t, t + 4) stay together
                assert dims[3:] == [d + 4 for d in dims[:3]] and max(dims[:3]) < 4
            dims = c.head_dims[l]
            qrows = [h * 8 + d for j, h in enumerate(q) for d in dims[j // 2]]
            krows = [64 + g * 8 + d for g, ds in zip(kv, dims) for d in ds]
            vrows = [r + 32 for r in krows]
            H = torch.tensor(c.hidden)
            want = ts[f"blocks.{l}.attn.qkv.weight"][torch.tensor(qrows + krows + vrows)][:, H]
            assert torch.equal(s[f"blocks.{k}.attn.qkv.weight"], want)
            F = torch.tensor(c.ffn[l])
            d_ff = t.config.d_ff
            assert torch.equal(s[f"blocks.{k}.mlp.fc1.weight"],
                               ts[f"blocks.{l}.mlp.fc1.weight"][torch.cat([F, F + d_ff])][:, H])
        assert out.model(**inputs(scfg)).logits.shape == (2, 24, scfg.vocab_size)


# ---------------------------------------------------------------------------- importance
def _loss(model, batch):
    with torch.no_grad():
        return float(model(**batch).loss)


def test_importance_matches_finite_differences_of_unit_masks():
    t = teacher("tiny").double()
    data = Batches(t.config)
    sc = importance_scores(t, data, n_batches=1)
    batch = data.train_batch(0)
    eps = 1e-5

    def fd(param, index):
        with torch.no_grad():
            orig = param[index].clone()
            param[index] = orig * (1 + eps)
            up = _loss(t, batch)
            param[index] = orig * (1 - eps)
            down = _loss(t, batch)
            param[index] = orig
        return abs(up - down) / (2 * eps)

    fc2 = t.blocks[1].mlp.fc2.weight
    for j in (0, 7, 100):
        assert fd(fc2, (slice(None), j)) == pytest.approx(float(sc["ffn"][1][j]), rel=1e-4, abs=1e-9)
    proj = t.blocks[0].attn.proj.weight
    for h in (0, 3):
        assert fd(proj, (slice(None), slice(16 * h, 16 * (h + 1)))) == pytest.approx(float(sc["heads"][0][h]), rel=1e-4)
    # hidden dim i: every parameter entry on dim i of the residual stream
    wplan, D = _width_plan(t.config, t.config, choose_units(t.config, t.config, "leading", layers="bottom"))
    params = dict(t.named_parameters())
    i = 5
    with torch.no_grad():
        saved = {n: p.clone() for n, p in params.items()}

        def scale(f):
            for n, pm in wplan.items():
                for dim, m in enumerate(pm.maps):
                    if m is D:
                        idx = [slice(None)] * params[n].dim()
                        idx[dim] = i
                        params[n][tuple(idx)] = saved[n][tuple(idx)] * f

        scale(1 + eps)
        up = _loss(t, batch)
        for n, p in params.items():
            p.copy_(saved[n])
        scale(1 - eps)
        down = _loss(t, batch)
        for n, p in params.items():
            p.copy_(saved[n])
    assert abs(up - down) / (2 * eps) == pytest.approx(float(sc["hidden"][i]), rel=1e-4)
    assert sc["kv_heads"][0].shape == (4,) and sc["head_dims"][0].shape == (4, 16)


def test_etd_impt_picks_the_highest_scoring_units():
    t = teacher("tiny")
    dead = list(range(0, 256, 2))  # half the FFN neurons write nothing
    with torch.no_grad():
        for b in t.blocks:
            b.mlp.fc2.weight[:, dead] = 0.0
    scfg = t.config.replace(d_ff=128)
    out = extract(t, scfg, method="impt", data=Batches(t.config), n_batches=2)
    alive = list(range(1, 256, 2))
    assert out.choice.ffn == {0: alive, 1: alive}
    # removing only dead neurons is function-preserving up to summation order
    assert (logits(out.model) - logits(t)).abs().max().item() < 1e-5

    # heads: zero the output columns of heads 0 and 2 in every layer; hidden dims: zero everything on dims 0..31
    t = teacher("tiny", seed=1)
    wplan, D = _width_plan(t.config, t.config, choose_units(t.config, t.config, "leading", layers="bottom"))
    params = dict(t.named_parameters())
    with torch.no_grad():
        for b in t.blocks:
            b.attn.proj.weight[:, 0:16] = 0.0
            b.attn.proj.weight[:, 32:48] = 0.0
        for n, pm in wplan.items():
            for dim, m in enumerate(pm.maps):
                if m is D:
                    idx = [slice(None)] * params[n].dim()
                    idx[dim] = slice(0, 32)
                    params[n][tuple(idx)] = 0.0
    sc = importance_scores(t, Batches(t.config), n_batches=2)
    assert float(sc["hidden"][:32].abs().max()) == 0.0 and float(sc["hidden"][32:].min()) > 0
    c = choose_units(t.config, t.config.replace(d_model=32, n_heads=2, n_kv_heads=2), "impt", scores=sc)
    assert c.hidden == list(range(32, 64))
    assert c.q_heads == {0: [1, 3], 1: [1, 3]}


# ---------------------------------------------------------------------------- depth
def test_depth_selection_is_uniform():
    assert resolve_layers("uniform", 6, 3) == [1, 3, 5]
    assert resolve_layers("uniform", 12, 4) == [2, 5, 8, 11]  # TinyBERT's g(m) = 3m
    assert resolve_layers("uniform", 4, 4) == [0, 1, 2, 3]
    assert resolve_layers("bottom", 6, 2) == [0, 1] and resolve_layers("top", 6, 2) == [4, 5]
    assert resolve_layers("0,2", 6, 2) == [0, 2]
    t = teacher("tiny", n_layers=6)
    s = extract_student(t, t.config.replace(n_layers=3), method="leading")
    for k, l in enumerate([1, 3, 5]):
        for name in ("attn.qkv.weight", "mlp.fc1.bias", "norm2.weight"):
            assert torch.equal(s.state_dict()[f"blocks.{k}.{name}"], t.state_dict()[f"blocks.{l}.{name}"])
    with pytest.raises(ValueError, match="layer map"):
        resolve_layers([0, 9], 6, 2)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("preset,change,match", [
    ("tiny", dict(d_model=128, n_heads=8, n_kv_heads=8), "larger than the teacher in d_model"),
    ("tiny", dict(n_layers=3), "larger than the teacher in n_layers"),
    ("tiny", dict(d_model=64, n_heads=2, n_kv_heads=2), "incompatible heads.*head_dim"),
    ("tiny-llama", dict(n_heads=4, n_kv_heads=1), "incompatible heads.*kv"),
    ("tiny", dict(vocab_size=256), "vocab_size=512"),
    ("tiny", dict(activation="relu"), "differ in activation"),
])
def test_bad_students_are_refused_with_a_fix(preset, change, match):
    t = teacher(preset)
    with pytest.raises(CompressionError, match=match):
        extract_student(t, t.config.replace(**change))


def test_bad_method_and_missing_data():
    t = teacher("tiny")
    with pytest.raises(CompressionError, match="choose one of"):
        extract_student(t, t.config, method="magnitude")
    with pytest.raises(CompressionError, match="needs data"):
        extract_student(t, t.config, method="impt")


# ---------------------------------------------------------------------------- CLI


def test_cli_extract_end_to_end(tmp_path):
    src = tmp_path / "teacher"
    cli("train", "--preset", "tiny-bert", "--corpus", "stdlib", "--max-bytes", 200000, "--max-steps", 3, "--out", src,
        "--seq-len", 32, "--batch-size", 4)
    out = tmp_path / "student"
    res = cli("extract", src, "--method", "impt", "--d-model", 32, "--n-layers", 1, "--d-ff", 96, "--n-batches", 2,
              "--out", out)
    assert "by impt" in res.stdout and "teacher layers [1]" in res.stdout
    student = load_model(out)
    assert (student.config.d_model, student.config.n_layers, student.config.d_ff) == (32, 1, 96)
    assert (out / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["verb"] == "extract" and lineage["method"] == "impt" and lineage["options"]["n_batches"] == 2
    assert lineage["parents"][0]["role"] == "teacher"
    assert lineage["parents"][0]["sha256"] == json.loads((src / "config.json").read_text())["weights_sha256"]
    assert len(lineage["choice"]["hidden"]) == 32 and lineage["choice"]["layers"] == [1]
    metrics = json.loads(cli("eval", out, "--json", "--max-batches", 1).stdout.strip().splitlines()[-1])
    assert metrics["val_loss"] > 0
    # keep-all through the CLI copies the teacher exactly
    same = tmp_path / "same"
    assert "function-preserving: exact" in cli("extract", src, "--out", same).stdout
    assert torch.equal(logits(load_model(same)), logits(load_model(src)))
    # errors: one clear line, exit 2
    res = cli("extract", src, "--d-model", 128, "--n-heads", 8, "--out", tmp_path / "big", code=2)
    assert "larger than the teacher" in res.output
    res = cli("extract", src, "--out", out, code=2)
    assert "already holds a checkpoint" in res.output
