"""Scale-aware distillation losses: row-centred score MSE, MiniLM's attention KL, teacher→student head maps,
variance-normalised and cosine hidden-state losses — each against hand-computed values on tiny tensors —,
per-term gradient norms, strict config values, and the CLI options reaching the run's lineage."""

import math

import pytest
import torch

from morphlm.compress.distill_loss import (ATT_LOSSES, DistillConfig, DistillLoss, HeadMatch, attention_centred_mse,
                                           attention_kl, attention_loss, attention_mse, hidden_cosine, hidden_mse,
                                           hidden_normalized_mse, resolve_head_map, term_gradient_norms)
from morphlm.compress.errors import CompressionError
from morphlm.data import train_tokenizer
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt

from clihelp import cli


def rows(*r):
    """(1, 1, T, T) scores from T rows."""
    return torch.tensor(r, dtype=torch.float32).view(1, 1, len(r), len(r))


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def tiny(n_layers=2, **kw):
    torch.manual_seed(kw.pop("seed", 0))
    return TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=n_layers, dropout=0.0, **kw))


# ---------------------------------------------------------------------------------------------- centred MSE
def test_centred_mse_ignores_a_constant_row_offset_but_raw_mse_does_not():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 5, 5)
    offset = torch.randn(2, 3, 5, 1) * 4  # one constant per (batch, head, query) row
    s = t + offset
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for causal in (False, True):
        assert attention_centred_mse(s, t, mask, causal).item() == pytest.approx(0.0, abs=1e-10)
        assert attention_mse(s, t, mask, causal).item() > 1.0
    # a non-constant difference is not ignored: rows [1, 3] vs [0, 0] centre to [-1, 1] vs [0, 0]
    assert attention_centred_mse(rows([1, 3], [2, 2]), torch.zeros(1, 1, 2, 2)).item() == pytest.approx(0.5)


def test_centred_mse_masked_keys_do_not_enter_the_row_mean():
    s = rows([1, 3, 50], [1, 3, 50], [7, 7, 7])
    t = torch.zeros(1, 1, 3, 3)
    # key 2 padded: rows 0 and 1 centre over keys 0, 1 → [-1, 1]; query 2 (padded) is dropped → mean 1
    # (were the padded 50 in the mean, row 0 would centre to [-17, -15])
    assert attention_centred_mse(s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(1.0)
    # causal: row 0 sees key 0 only (centred 0); row 1 sees [2, 6] → [-2, 2]; mean over 3 entries
    c = rows([1, 99], [2, 6])
    assert attention_centred_mse(c, torch.zeros(1, 1, 2, 2), causal=True).item() == pytest.approx(8 / 3)


# ---------------------------------------------------------------------------------------------- KL
def test_attention_kl_hand_computed_with_padding_mask():
    ln3, ln4 = math.log(3.0), math.log(4.0)
    # key/query 2 padded; its big scores must neither enter the softmax nor the mean
    t = rows([0, ln3, 9], [0, 0, 9], [5, 5, 5])
    s = rows([0, 0, -9], [0, ln4, 9], [1, 2, 3])
    want = (kl((1 / 4, 3 / 4), (1 / 2, 1 / 2)) + kl((1 / 2, 1 / 2), (1 / 5, 4 / 5))) / 2
    assert attention_kl(s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(want, rel=1e-6)
    assert attention_loss("kl", s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(want, rel=1e-6)
    # a constant row offset leaves the distributions — and the KL — unchanged
    assert attention_kl(s + torch.tensor([3.0, -2.0, 1.0]).view(1, 1, 3, 1), t,
                        torch.tensor([[1, 1, 0]])).item() == pytest.approx(want, rel=1e-5)


def test_attention_kl_causal_excludes_future_keys():
    # row 0 sees only key 0 (KL 0 whatever the future scores); row 1: p_T = (1/4, 3/4) vs p_S = (1/2, 1/2)
    t = rows([0, -30], [0, math.log(3.0)])
    s = rows([0, 40], [0, 0])
    want = kl((1 / 4, 3 / 4), (1 / 2, 1 / 2)) / 2
    assert attention_kl(s, t, causal=True).item() == pytest.approx(want, rel=1e-6)
    # batch of 2 with the second row padded after token 0: only its query 0 counts (KL 0 there)
    s2, t2 = s.expand(2, 1, 2, 2), t.expand(2, 1, 2, 2)
    got = attention_kl(s2, t2, torch.tensor([[1, 1], [1, 0]]), causal=True).item()
    assert got == pytest.approx(kl((1 / 4, 3 / 4), (1 / 2, 1 / 2)) / 3, rel=1e-6)
    # gradients stay finite with padded rows and -inf-free masking
    s3 = s2.clone().requires_grad_(True)
    attention_kl(s3, t2, torch.tensor([[1, 1], [1, 0]]), causal=True).backward()
    assert torch.isfinite(s3.grad).all()


def test_attention_kl_head_group_is_a_mean_of_probabilities():
    # teacher heads (1/2, 1/2) and (1/4, 3/4) → mean (3/8, 5/8); a mean of SCORES would give another target
    t = torch.stack([rows([0, 0], [0, 0])[0, 0], rows([0, math.log(3.0)], [0, math.log(3.0)])[0, 0]]).unsqueeze(0)
    s = torch.zeros(1, 1, 2, 2)
    want = kl((3 / 8, 5 / 8), (1 / 2, 1 / 2))
    for spec in ("auto", "mean"):
        assert attention_kl(s, t, head_map=spec).item() == pytest.approx(want, rel=1e-6)
    # 3 teacher heads → 2 student heads ('auto' → all heads): the mean of the student's head probabilities too
    s2 = torch.stack([torch.zeros(2, 2), rows([0, math.log(3.0)], [0, math.log(3.0)])[0, 0]]).unsqueeze(0)
    t3 = torch.zeros(1, 3, 2, 2)
    assert attention_kl(s2, t3).item() == pytest.approx(kl((1 / 2, 1 / 2), (3 / 8, 5 / 8)), rel=1e-6)
    # an explicit teacher head: head 1 alone
    assert attention_kl(s, t, head_map=[1]).item() == pytest.approx(kl((1 / 4, 3 / 4), (1 / 2, 1 / 2)), rel=1e-6)


# ---------------------------------------------------------------------------------------------- head maps
def _teacher_heads(n, T=2):
    return torch.stack([torch.full((T, T), float(h)) for h in range(n)]).unsqueeze(0)  # head h scores h


def test_head_maps_twelve_teacher_heads_to_four_student_heads():
    t, s = _teacher_heads(12), torch.zeros(1, 4, 2, 2)
    assert resolve_head_map("auto", 12, 4) == HeadMatch("group", group=3)
    assert resolve_head_map("subset", 12, 4).index == (0, 3, 6, 9)
    assert resolve_head_map("0,4,8,11", 12, 4).index == (0, 4, 8, 11)
    assert resolve_head_map("auto", 4, 4) == HeadMatch("identity")
    # group means 1, 4, 7, 10
    for spec in ("auto", "mean"):
        assert attention_mse(s, t, head_map=spec).item() == pytest.approx((1 + 16 + 49 + 100) / 4)
    assert attention_mse(s, t, head_map="subset").item() == pytest.approx((0 + 9 + 36 + 81) / 4)
    assert attention_mse(s, t, head_map="0,4,8,11").item() == pytest.approx((0 + 16 + 64 + 121) / 4)
    assert attention_mse(s, t, head_map=[11, 11, 11, 11]).item() == pytest.approx(121.0)
    # the centred loss uses the same map: teacher head 1 has a non-constant row here
    t2 = t.clone()
    t2[0, 1, :, 1] += 2.0  # rows [1, 3] → centred [-1, 1]; every other head is constant per row
    assert attention_centred_mse(s, t2, head_map=[1, 0, 2, 3]).item() == pytest.approx(1 / 4)
    assert attention_centred_mse(s, t2, head_map="subset").item() == pytest.approx(0.0)


def test_head_maps_uneven_counts_and_errors():
    s = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2.0)]).unsqueeze(0)  # student head mean 1
    t = torch.stack([torch.full((2, 2), v) for v in (1.0, 2.0, 6.0)]).unsqueeze(0)  # teacher head mean 3
    assert resolve_head_map("auto", 3, 2) == HeadMatch("all")
    assert attention_mse(s, t, head_map="auto").item() == pytest.approx(4.0)  # all-heads mean on both sides
    assert attention_mse(s, t, head_map="subset").item() == pytest.approx((1 + 0) / 2)  # heads 0, 1
    with pytest.raises(CompressionError, match="do not split into 2 equal groups"):
        attention_mse(s, t, head_map="mean")
    with pytest.raises(CompressionError, match="has 3 entries but the student has 2 heads"):
        attention_mse(s, t, head_map="0,1,2")
    with pytest.raises(CompressionError, match=r"names teacher heads \[3\]; the teacher has heads 0..2"):
        resolve_head_map([0, 3], 3, 2)
    with pytest.raises(CompressionError, match="'subset' picks one teacher head"):
        resolve_head_map("subset", 2, 4)
    # DistillLoss resolves the map from the configs before any batch: a wrong list fails at construction
    teacher = tiny(2, seed=1)  # 4 heads
    student_cfg = ModelConfig.from_name("tiny-bert", d_model=32, n_heads=2)
    with pytest.raises(CompressionError, match="has 3 entries but the student has 2 heads"):
        DistillLoss(teacher, student_cfg, DistillConfig(head_map="0,1,2"))
    with pytest.raises(CompressionError, match=r"teacher has heads 0..3"):
        DistillLoss(teacher, student_cfg, DistillConfig(head_map=[0, 4]))


def test_distill_loss_uses_the_configured_attention_variant_and_head_map():
    teacher, student = tiny(2, seed=1), tiny(2, d_model=32, n_heads=2, seed=2)
    batch = {"input_ids": torch.randint(7, 512, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    batch["attention_mask"][1, 5:] = 0
    s_out = student(**batch, output_attentions=True)
    t_out = teacher(**batch, output_attentions=True)
    mask = batch["attention_mask"]
    for att_loss in ATT_LOSSES:
        cfg = DistillConfig(stage="general", att_loss=att_loss, head_map="3,0", emb_weight=0, hid_weight=0)
        _, m = DistillLoss(teacher, student.config, cfg)(student, batch)
        want = sum(attention_loss(att_loss, s_out.attentions[i], t_out.attentions[g][:, [3, 0]], mask)
                   for i, g in enumerate([0, 1]))
        assert m["loss_att"].item() == pytest.approx(want.item(), rel=1e-5), att_loss


# ---------------------------------------------------------------------------------------------- hidden states
def test_normalized_hidden_mse_hand_value_mask_and_scale_invariance():
    t = torch.tensor([[[0.0, 2.0], [2.0, 0.0], [100.0, -100.0]]])  # valid elements 0, 2, 2, 0: variance 1
    s = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_normalized_mse(s, t, mask).item() == pytest.approx(2.0)  # MSE 8/4 = 2, ÷ 1
    t2 = t * 3
    assert hidden_normalized_mse(s, t2, mask).item() == pytest.approx(2.0)  # MSE 18 ÷ variance 9
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 6), torch.randn(2, 4, 6) * 5
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    base = hidden_normalized_mse(a, b, m).item()
    assert hidden_normalized_mse(10 * a, 10 * b, m).item() == pytest.approx(base, rel=1e-5)
    assert hidden_mse(10 * a, 10 * b, m).item() == pytest.approx(100 * hidden_mse(a, b, m).item(), rel=1e-5)
    # the teacher's own mean vector scores 1 (variance / variance)
    mean = b[m.bool()].mean()
    assert hidden_normalized_mse(torch.full_like(b, mean.item()), b, m).item() == pytest.approx(1.0, rel=1e-5)


def test_cosine_hidden_loss_hand_value():
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [3.0, 3.0]]])
    t = torch.tensor([[[1.0, 1.0], [-1.0, 0.0], [1.0, -1.0]]])
    want = ((1 - 1 / math.sqrt(2)) + 2.0) / 2  # token 2 padded
    assert hidden_cosine(s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(want, rel=1e-6)
    assert hidden_cosine(5 * s, 0.1 * t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(want, rel=1e-6)
    assert hidden_cosine(s, t).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2.0 + 1.0) / 3, rel=1e-6)


def test_distill_loss_applies_hid_loss_to_embedding_and_block_terms():
    teacher, student = tiny(4, seed=1), tiny(2, d_model=32, n_heads=2, seed=2)
    batch = {"input_ids": torch.randint(7, 512, (3, 8)), "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    batch["attention_mask"][0, 4:] = 0
    s_out = student(**batch, output_hidden_states=True)
    t_out = teacher(**batch, output_hidden_states=True)
    mask = batch["attention_mask"]
    for kind, fn in (("normalized", hidden_normalized_mse), ("cosine", hidden_cosine)):
        loss_fn = DistillLoss(teacher, student.config, DistillConfig(stage="general", hid_loss=kind))
        _, m = loss_fn(student, batch)
        proj = loss_fn.proj["shared"]
        assert m["loss_emb"].item() == pytest.approx(fn(proj(s_out.hidden_states[0]), t_out.hidden_states[0],
                                                        mask).item(), rel=1e-5)
        want = sum(fn(proj(s_out.hidden_states[i]), t_out.hidden_states[g], mask) for i, g in ((1, 2), (2, 4)))
        assert m["loss_hid"].item() == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- gradient norms
def test_term_gradient_norms_per_unweighted_term_and_no_grad_left():
    teacher, student = tiny(4, seed=1), tiny(2, d_model=32, n_heads=2, seed=2)
    ids = torch.randint(7, 512, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "attention_mask": torch.ones(2, 8, dtype=torch.long), "labels": labels}
    loss_fn = DistillLoss(teacher, student.config, DistillConfig(stage="full", hard_label_weight=1.0,
                                                                 att_weight=5.0, att_loss="kl"))
    norms = term_gradient_norms(loss_fn, student, batch)
    assert set(norms) == {"emb", "att", "hid", "pred", "hard"}
    assert all(math.isfinite(v) and v > 0 for v in norms.values())
    every = [*student.parameters(), *loss_fn.parameters(), *teacher.parameters()]
    assert all(p.grad is None for p in every)
    # the att norm is the gradient of the UNWEIGHTED term (att_weight 5 does not enter)
    terms, _ = loss_fn.terms(student, batch)
    terms["att"].backward()
    manual = math.sqrt(sum(float((p.grad ** 2).sum()) for p in student.parameters() if p.grad is not None))
    assert norms["att"] == pytest.approx(manual, rel=1e-4)
    student.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    # only the terms a stage uses are present
    gen = DistillLoss(teacher, student.config, DistillConfig(stage="general"))
    assert set(term_gradient_norms(gen, student, batch)) == {"emb", "att", "hid"}


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value, message", [
    ("att_loss", "l1", r"att_loss='l1' is unknown; choose one of \('mse', 'centred', 'kl'\)"),
    ("hid_loss", "l2", r"hid_loss='l2' is unknown; choose one of \('mse', 'normalized', 'cosine'\)"),
    ("head_map", "random", r"head_map='random' is unknown; choose one of \('auto', 'mean', 'subset'\)"),
    ("head_map", "0,-1", r"negative teacher heads \[-1\]"),
    ("head_map", [], "is unknown"),
])
def test_config_rejects_unknown_values_naming_the_choices(field, value, message):
    with pytest.raises(CompressionError, match=message):
        DistillConfig(**{field: value}).validate()


def test_config_defaults_are_the_measured_forms_and_lineage_records_the_options():
    cfg = DistillConfig()
    assert (cfg.att_loss, cfg.head_map, cfg.hid_loss) == ("kl", "auto", "normalized")  # chosen by measurement with MiniLM
    d = DistillConfig(att_loss="kl", head_map="0, 4, 8, 11", hid_loss="cosine").to_dict()
    assert (d["att_loss"], d["head_map"], d["hid_loss"]) == ("kl", [0, 4, 8, 11], "cosine")
    assert DistillConfig.from_dict(d).head_map == [0, 4, 8, 11]


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    texts = ["a good movie with great acting", "the film was boring and slow", "lovely music and a bright story",
             "a terrible plot with dull scenes"] * 20
    tok = train_tokenizer(texts, 300)
    root = tmp_path_factory.mktemp("variants")
    torch.manual_seed(11)
    pre = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=2, max_seq_len=32))
    ckpt.save_checkpoint(root / "pre", pre.state_dict(), pre.config, tokenizer_json=tok.to_json_str(),
                         lineage={"verb": "train", "flops": 1.0})
    (root / "corpus.txt").write_text("\n\n".join(texts))
    return root


def test_cli_loss_options_reach_the_lineage(teacher_dir, tmp_path):
    r = teacher_dir
    out = tmp_path / "s"
    cli("distill", "--teacher", r / "pre", "--to", "tiny-bert", "--n-layers", 1, "--d-model", 32, "--n-heads", 2,
        "--corpus", r / "corpus.txt", "--max-steps", 2, "--batch-size", 2, "--seq-len", 16, "--att-loss", "kl",
        "--head-map", "1,3", "--hid-loss", "normalized", "--out", out)
    d = ckpt.read_lineage(out)["distill"]
    assert (d["att_loss"], d["head_map"], d["hid_loss"]) == ("kl", [1, 3], "normalized")
    bad = cli("distill", "--teacher", r / "pre", "--to", "tiny-bert", "--corpus", r / "corpus.txt",
              "--att-loss", "cosine", "--out", tmp_path / "bad", code=None)
    assert bad.exit_code == 2 and "att_loss='cosine' is unknown" in bad.output and "centred" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
    wrong = cli("distill", "--teacher", r / "pre", "--to", "tiny-bert", "--n-heads", 2, "--d-model", 32,
                "--corpus", r / "corpus.txt", "--head-map", "0,1,2", "--out", tmp_path / "wrong", code=None)
    assert wrong.exit_code == 2 and "has 3 entries but the student has 2 heads" in wrong.output
    assert not (tmp_path / "wrong").exists()
