"""TinyBERT distillation: every loss against hand-computed values, the reduction/temperature convention,
layer maps, the identity check, projections trained by fit and restored exactly on resume, the FLOPs
ruler, augmentation, LightMBERT initialisation, and `morphlm distill` end to end with its errors."""

import json
import math

import pytest
import torch

from morphlm.compress.augment import AugmentConfig, Augmenter, augment_examples
from morphlm.compress.distill import distill, load_projections
from morphlm.compress.distill_loss import (DistillConfig, DistillLoss, attention_mse, distill_flops_per_token,
                                           hidden_mse, soft_cross_entropy, teacher_layer_map)
from morphlm.compress.errors import CompressionError
from morphlm.compress.lightmbert import init_from_teacher, lightmbert_student
from morphlm.data import ClassificationBatches, Example, train_tokenizer
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.flops import forward_flops_per_token, training_flops_per_token
from morphlm.train.optim import TrainArgs

from toydata import ToyData

from clihelp import cli

WORDS = ("good great fine happy bright lovely movie film story music actor scene plot bad awful boring slow "
         "dull sad poor weak terrible ending acting")
TEXTS = [
    "a good movie with great acting and a happy ending",
    "the film was boring and slow with awful acting",
    "lovely music and a bright story",
    "a terrible plot with dull scenes and poor acting",
    "the actor was great and the story was lovely",
    "sad and weak film with a bad ending",
] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS + [WORDS] * 20, 320)


def tiny(n_layers=2, **kw):
    torch.manual_seed(kw.pop("seed", 0))
    return TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=n_layers, **kw))


# ---------------------------------------------------------------------------------------------- loss terms
def test_attention_mse_hand_computed_with_masks():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    t = torch.zeros(1, 1, 2, 2)
    assert attention_mse(s, t).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    # key/query 1 padded: only entry (0, 0) is valid
    assert attention_mse(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    # causal: (0,0), (1,0), (1,1)
    assert attention_mse(s, t, causal=True).item() == pytest.approx((1 + 9 + 16) / 3)
    # teacher with 2x the heads: each student head vs the mean of 2 teacher heads
    t2 = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)]).view(1, 2, 2, 2)  # mean 2
    assert attention_mse(s, t2).item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    # non-divisible head counts (2 vs 3): both sides averaged over heads
    s2 = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2.0)]).view(1, 2, 2, 2)  # mean 1
    t3 = torch.stack([torch.full((2, 2), v) for v in (1.0, 2.0, 6.0)]).view(1, 3, 2, 2)  # mean 3
    assert attention_mse(s2, t3).item() == pytest.approx(4.0)


def test_hidden_mse_over_valid_tokens_only():
    s = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])
    assert hidden_mse(s, t).item() == pytest.approx((1 + 1 + 25 + 25) / 4)
    assert hidden_mse(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


def test_soft_cross_entropy_value_and_temperature_convention():
    s = torch.zeros(1, 2)
    t = torch.tensor([[0.0, math.log(3.0)]])  # p_T = (1/4, 3/4)
    # uniform student: CE = log 2 whatever p_T; t² scaling: 4·log 2 at t = 2
    assert soft_cross_entropy(s, t, 1.0).item() == pytest.approx(math.log(2))
    assert soft_cross_entropy(s, t, 2.0).item() == pytest.approx(4 * math.log(2))
    s1 = torch.tensor([[math.log(1.0), math.log(4.0)]])  # p_S = (1/5, 4/5)
    expected = -(0.25 * math.log(0.2) + 0.75 * math.log(0.8))
    assert soft_cross_entropy(s1, t).item() == pytest.approx(expected, rel=1e-6)
    # token logits: rows are valid positions only
    s3 = torch.stack([s1[0], torch.tensor([5.0, -5.0])]).view(1, 2, 2)
    t3 = torch.stack([t[0], torch.tensor([0.0, 0.0])]).view(1, 2, 2)
    assert soft_cross_entropy(s3, t3, 1.0, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-6)
    # t² keeps the gradient scale: at large t the gradient approaches the difference of the centred logits / C,
    # independent of t (without t² it would shrink like 1/t)
    z = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    zt = torch.tensor([[0.1, 0.2, -0.4]])
    grads = []
    for temp in (10.0, 20.0):
        g, = torch.autograd.grad(soft_cross_entropy(z, zt, temp), z)
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], atol=5e-3)
    centred = (z.detach() - z.detach().mean()) - (zt - zt.mean())
    assert torch.allclose(grads[1], centred / 3, atol=5e-3)


def test_distill_loss_is_the_weighted_sum_and_stage_defaults():
    teacher, student = tiny(4, seed=1), tiny(2, d_model=32, n_heads=2, seed=2)
    batch = {"input_ids": torch.randint(7, 512, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
    batch["attention_mask"][0, 6:] = 0
    cfg = DistillConfig(stage="general", emb_weight=0.5, att_weight=2.0, hid_weight=1.0)
    loss_fn = DistillLoss(teacher, student.config, cfg)
    loss, m = loss_fn(student, batch)
    assert set(m) == {"loss_emb", "loss_att", "loss_hid"}
    m = {k: v.item() for k, v in m.items()}
    assert loss.item() == pytest.approx(0.5 * m["loss_emb"] + 2.0 * m["loss_att"] + m["loss_hid"], rel=1e-6)
    assert DistillConfig(stage="prediction").weights() == {"emb": 0, "att": 0, "hid": 0, "pred": 1, "hard": 0}
    assert DistillConfig(stage="logit").weights()["hard"] == 1.0
    assert DistillConfig(stage="full").weights() == {"emb": 1, "att": 1, "hid": 1, "pred": 1, "hard": 0}
    # hand-check the hidden term for the uniform map [1, 3] (hidden_states 1 ↔ 2, 2 ↔ 4) through the shared projection
    s_out = student(**batch, output_hidden_states=True)
    t_out = teacher(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    proj = loss_fn.proj["shared"]
    want = sum(((proj(s_out.hidden_states[m]) - t_out.hidden_states[g])[mask] ** 2).mean()
               for m, g in ((1, 2), (2, 4)))
    assert m["loss_hid"] == pytest.approx(want.item(), rel=1e-5)


def test_layer_maps_named_explicit_and_errors():
    # one convention: 0-based teacher blocks per student block (None / "-" = unsupervised)
    assert teacher_layer_map("uniform", 12, 4) == [2, 5, 8, 11]  # TinyBERT's g(m) = 3m, 0-based
    assert teacher_layer_map("uniform", 6, 3) == [1, 3, 5]
    assert teacher_layer_map("top", 6, 3) == [3, 4, 5]
    assert teacher_layer_map("bottom", 6, 3) == [0, 1, 2]
    assert teacher_layer_map("1,3,5", 6, 3) == [1, 3, 5]
    assert teacher_layer_map("-,2,2", 6, 3, monotone=True) == [None, 2, 2]
    assert teacher_layer_map([None, 2, 2], 6, 3, monotone=True) == [None, 2, 2]
    with pytest.raises(CompressionError, match="names teacher layers \\[6\\]; the teacher has layers 0..5"):
        teacher_layer_map("1,3,6", 6, 3)
    with pytest.raises(CompressionError, match="has 2 entries"):
        teacher_layer_map([1, 2], 6, 3)
    with pytest.raises(CompressionError, match="not monotone"):
        teacher_layer_map([3, 1, 5], 6, 3, monotone=True)
    assert teacher_layer_map([3, 1, 5], 6, 3) == [3, 1, 5]  # free maps are allowed by default
    with pytest.raises(CompressionError, match="uniform, top, bottom"):
        teacher_layer_map("middle", 6, 3)
    with pytest.raises(CompressionError, match="not available here"):
        teacher_layer_map("stack", 6, 3)  # a growth map: distillation speaks of teacher and student blocks
    with pytest.raises(CompressionError, match="no deeper"):
        teacher_layer_map("top", 2, 4)
    with pytest.raises(CompressionError, match="stage"):
        DistillConfig(stage="everything").validate()


def test_teacher_equal_student_gives_zero_intermediate_losses():
    model = tiny(2, seed=3)
    batch = {"input_ids": torch.randint(7, 512, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    batch["attention_mask"][1, 8:] = 0
    for projection in ("shared", "per_layer", "none"):
        for forms in ({"att_loss": "mse", "hid_loss": "mse"}, {}):  # TinyBERT's forms: exactly 0; the defaults
            cfg = DistillConfig(stage="full", layer_map=[0, 1], projection=projection, **forms)
            loss, m = DistillLoss(model, model.config, cfg)(model, batch)
            assert m["loss_emb"].item() == 0 and m["loss_hid"].item() == 0
            # KL of equal distributions: 0 up to float32 rounding of Σ p·(log p − log p)
            assert m["loss_att"].item() == pytest.approx(0.0, abs=1e-7 if forms == {} else 0.0)
    # the prediction term of identical models is the teacher's entropy: the minimum over students
    _, m = DistillLoss(model, model.config, DistillConfig(stage="prediction"))(model, batch)
    out = model(**batch)
    p = out.logits.softmax(-1)[batch["attention_mask"].bool()]
    assert m["loss_pred"].item() == pytest.approx((-(p * p.log()).sum(-1)).mean().item(), rel=1e-5)
    # a shifted map is no longer zero
    _, m = DistillLoss(model, model.config, DistillConfig(layer_map=[1, 1]))(model, batch)
    assert m["loss_hid"].item() > 0


def test_vocab_and_head_mismatch_errors():
    with pytest.raises(CompressionError, match="vocab_size"):
        DistillLoss(tiny(2), ModelConfig.from_name("tiny-bert", vocab_size=300), DistillConfig())
    cls_cfg = ModelConfig.from_name("tiny-bert", head="cls", n_classes=3)
    with pytest.raises(CompressionError, match="same head"):
        DistillLoss(tiny(2), cls_cfg, DistillConfig(stage="prediction"))
    with pytest.raises(CompressionError, match="equal widths"):
        DistillLoss(tiny(2), ModelConfig.from_name("tiny-bert", d_model=32, n_heads=2), DistillConfig(projection="none"))


# ---------------------------------------------------------------------------------------------- training
def test_projection_is_learned_saved_and_resumed_exactly(tmp_path):
    teacher = tiny(4, seed=1)
    data = ToyData(vocab=512, seq_len=12, batch_size=4)

    def run(out, steps):
        torch.manual_seed(0)
        student = TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=2, d_model=32, n_heads=2))
        args = TrainArgs(out_dir=str(out), max_steps=steps, schedule_steps=6, warmup_steps=2, progress=False,
                         resume="auto", lr=1e-3)
        res = distill(teacher, student, data, args, DistillConfig(stage="general"))
        return student, res

    straight, res = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed, res_b = run(tmp_path / "b", 6)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    pa, pb = load_projections(tmp_path / "a"), load_projections(tmp_path / "b")
    assert set(pa) == {"proj.shared.weight", "proj.shared.bias"}
    for k in pa:
        assert torch.equal(pa[k], pb[k])
    # the projection was trained (it starts from nn.Linear's init with seed-dependent values; bias starts at 0)
    assert pa["proj.shared.bias"].abs().sum() > 0
    # FLOPs: student training + teacher forward + 3 projected layers (emb + 2 blocks), per token
    per_tok = (training_flops_per_token(straight.config, 12) + forward_flops_per_token(teacher.config, 12)
               + 6 * 32 * 64 * 3)
    assert res.flops == pytest.approx(6 * 4 * 12 * per_tok)
    assert per_tok == pytest.approx(distill_flops_per_token(straight.config, teacher.config, 12, 3))
    lineage = ckpt.read_lineage(tmp_path / "a")
    assert lineage["verb"] == "distill" and lineage["distill"]["resolved_layer_map"] == [1, 3]
    assert "proj.shared.weight" not in ckpt.load_state_dict(tmp_path / "a")[0]  # the model file is the student


def test_task_distillation_learns_from_teacher(tok):
    """Prediction-layer distillation moves a random student toward the teacher: KL(p_T || p_S) shrinks."""
    tcfg = ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, head="cls", n_classes=2, n_layers=2)
    torch.manual_seed(5)
    teacher = TransformerLM(tcfg)
    with torch.no_grad():
        teacher.classifier.weight.mul_(40.0)  # a confident, input-dependent teacher
    exs = [Example(t, None, i % 2) for i, t in enumerate(TEXTS[:40])]
    data = ClassificationBatches(exs, exs[:16], tok, 8, 24)
    torch.manual_seed(6)
    student = TransformerLM(tcfg.replace(n_layers=1))

    def kl():
        total = 0.0
        with torch.no_grad():
            for b in data.val_batches():
                inp = {k: v for k, v in b.items() if k != "labels"}
                pt = teacher.eval()(**inp).logits.log_softmax(-1)
                ps = student.eval()(**inp).logits.log_softmax(-1)
                total += (pt.exp() * (pt - ps)).sum(-1).sum().item()
        return total

    before = kl()
    distill(teacher, student, data, TrainArgs(max_steps=30, lr=3e-3, warmup_steps=2, progress=False),
            DistillConfig(stage="prediction", temperature=1.0))
    assert kl() < 0.5 * before


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_deterministic_and_uses_real_whole_words(tok):
    torch.manual_seed(0)
    mlm = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size))
    exs = [Example("a good movie with great acting", None, 1), Example("the film was boring", "slow dull plot", 0)]
    cfg = AugmentConfig(n_aug=6, top_k=5, seed=3)
    a = augment_examples(exs, tok, mlm, cfg, progress=False)
    b = augment_examples(exs, tok, mlm, cfg, progress=False)
    assert a == b
    assert a[0] == exs[0] and len(a) > len(exs)
    c = augment_examples(exs, tok, mlm, AugmentConfig(n_aug=6, top_k=5, seed=4), progress=False)
    assert c != a
    aug = Augmenter(tok, mlm, cfg)
    whole = set(aug.word_of.values())
    for e in a:
        src = next(x for x in exs if len(x.text.split()) == len(e.text.split()) and x.label == e.label)
        for new, old in zip(e.text.split() + (e.text_pair or "").split(), src.text.split() + (src.text_pair or "").split()):
            if new != old:
                assert new in whole  # a real vocabulary token that is a complete word
                assert tok.encode(" " + new) == [tok.token_to_id("Ġ" + new)] or len(tok.encode(new)) == 1
                assert old not in ("a", "the", "with", "was")  # stop words are never replaced
        assert e.label == src.label
    # masked-LM candidates come from the model's own predictions; a classifier falls back to embeddings
    words, cands = aug.candidates("a good movie")
    assert aug.mlm and cands[0] == [] and all(len(c) <= 5 for c in cands)
    logits_top = set(cands[1])
    assert logits_top and logits_top <= whole
    clf = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, head="cls"))
    emb_aug = Augmenter(tok, clf, cfg)
    assert not emb_aug.mlm and set(emb_aug.candidates("a good movie")[1][1]) <= whole


def test_augmentation_p_zero_and_bad_config(tok):
    mlm = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size))
    exs = [Example("a good movie", None, 1)]
    assert augment_examples(exs, tok, mlm, AugmentConfig(n_aug=5, p_replace=0.0), progress=False) == exs
    with pytest.raises(CompressionError, match="p_replace"):
        AugmentConfig(p_replace=1.5).validate()
    with pytest.raises(CompressionError, match="vocab_size"):
        Augmenter(tok, TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=280)))


# ---------------------------------------------------------------------------------------------- init / LightMBERT
def test_lightmbert_student_copies_bottom_layers_and_freezes_embeddings():
    teacher = tiny(4, seed=7)
    student = lightmbert_student(teacher, 2)
    ts, ss = teacher.state_dict(), student.state_dict()
    assert torch.equal(ss["tok_emb.weight"], ts["tok_emb.weight"])
    assert torch.equal(ss["blocks.1.attn.qkv.weight"], ts["blocks.1.attn.qkv.weight"])
    assert not student.tok_emb.weight.requires_grad and not student.pos_emb.weight.requires_grad
    assert student.blocks[0].attn.qkv.weight.requires_grad
    emb0 = student.tok_emb.weight.detach().clone()
    from morphlm.compress.lightmbert import lightmbert_config

    cfg = lightmbert_config(teacher.config, student.config)
    assert cfg.projection == "none" and cfg.weights()["emb"] == 0 and cfg.freeze_embeddings
    distill(teacher, student, ToyData(vocab=512, seq_len=8, batch_size=2),
            TrainArgs(max_steps=3, progress=False, warmup_steps=0), cfg)
    assert torch.equal(student.tok_emb.weight, emb0)
    assert not torch.equal(student.state_dict()["blocks.0.attn.qkv.weight"], ts["blocks.0.attn.qkv.weight"])
    # teacher-layer init copies the mapped blocks; width mismatches are refused with a hint
    s2 = init_from_teacher(teacher, teacher.config.replace(n_layers=2), "uniform")
    assert torch.equal(s2.state_dict()["blocks.0.mlp.fc1.weight"], ts["blocks.1.mlp.fc1.weight"])
    with pytest.raises(CompressionError, match="extract"):
        init_from_teacher(teacher, teacher.config.replace(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2), "uniform")


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def teacher_dirs(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(11)
    pre = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=2, max_seq_len=64))
    ckpt.save_checkpoint(root / "pre", pre.state_dict(), pre.config, tokenizer_json=tok.to_json_str(),
                         lineage={"verb": "train", "flops": 123.0})
    ft = TransformerLM(pre.config.replace(head="cls", n_classes=2))
    ckpt.save_checkpoint(root / "ft", ft.state_dict(), ft.config, tokenizer_json=tok.to_json_str(),
                         lineage={"verb": "train", "flops": 1000.0})
    rows = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(TEXTS[:24])]
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    (root / "corpus.txt").write_text("\n\n".join(TEXTS))
    return root


def test_cli_task_distillation_end_to_end(teacher_dirs, tmp_path):
    r = teacher_dirs
    out = tmp_path / "student"
    res = cli("distill", "--teacher", r / "ft", "--student", "tiny-bert", "--n-layers", 1, "--d-model", 32,
              "--n-heads", 2, "--stage", "task", "--task-train", r / "train.tsv", "--task-val", r / "dev.tsv",
              "--augment", 2, "--max-steps", 3, "--pred-steps", 2, "--batch-size", 4, "--seq-len", 32,
              "--out", out)
    assert "intermediate: 3 steps" in res.stdout and "prediction: 2 steps" in res.stdout
    model = ckpt.load_model(out)
    assert model.config.head == "cls" and model.config.n_layers == 1 and model.config.d_model == 32
    lineage = ckpt.read_lineage(out)
    assert lineage["verb"] == "distill" and lineage["teacher"] == str((r / "ft").resolve())
    assert lineage["distill"]["stage"] == "prediction" and lineage["parents"][0]["role"] == "stage-a"
    stage_a = ckpt.read_lineage(out / "stage_a")
    assert stage_a["parents"][0]["role"] == "teacher" and stage_a["parents"][0]["flops"] == 1000.0
    assert ckpt.total_flops(out) > 1000.0 + ckpt.read_lineage(out)["flops"]
    assert (out / "tokenizer.json").read_text() == (r / "ft" / "tokenizer.json").read_text()
    assert load_projections(out / "stage_a")  # stage a trained a projection (32 -> 64)
    metrics = json.loads(cli("eval", out, "--json").stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # the student's size is its own files, not stage_a/ and optimizer state (issue 12)
    assert metrics["bytes_on_disk"] == ckpt.shipped_bytes(out) < metrics["dir_bytes"] - ckpt.total_bytes(out / "stage_a")
    # re-running with --resume auto finds both stages complete and keeps the result
    before = ckpt.load_state_dict(out)[0]
    cli("distill", "--teacher", r / "ft", "--student", "tiny-bert", "--n-layers", 1, "--d-model", 32,
        "--n-heads", 2, "--stage", "task", "--task-train", r / "train.tsv", "--task-val", r / "dev.tsv",
        "--augment", 2, "--max-steps", 3, "--pred-steps", 2, "--batch-size", 4, "--seq-len", 32,
        "--out", out, "--resume", "auto")
    after = ckpt.load_state_dict(out)[0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_general_distillation_lightmbert(teacher_dirs, tmp_path):
    r = teacher_dirs
    out = tmp_path / "light"
    cli("distill", "--teacher", r / "pre", "--student", "teacher", "--n-layers", 1, "--init", "lightmbert",
        "--stage", "general", "--corpus", r / "corpus.txt", "--max-steps", 2, "--batch-size", 2, "--seq-len", 16,
        "--out", out)
    s, t = ckpt.load_state_dict(out)[0], ckpt.load_state_dict(r / "pre")[0]
    assert torch.equal(s["tok_emb.weight"], t["tok_emb.weight"])  # frozen
    assert ckpt.read_lineage(out)["distill"]["freeze_embeddings"] is True
    # the general student then goes through task distillation (TinyBERT's GD -> TD pipeline): its body is kept
    td = tmp_path / "td"
    cli("distill", "--teacher", r / "ft", "--student", out, "--stage", "prediction", "--task-train", r / "train.tsv",
        "--task-val", r / "dev.tsv", "--max-steps", 1, "--batch-size", 2, "--seq-len", 16, "--lr", 1e-9, "--out", td)
    t2 = ckpt.load_state_dict(td)[0]
    assert ckpt.load_model(td).config.head == "cls"
    assert torch.allclose(t2["blocks.0.mlp.fc1.weight"], s["blocks.0.mlp.fc1.weight"], atol=1e-6)
    roles = [p["role"] for p in ckpt.read_lineage(td)["parents"]]
    assert roles == ["teacher", "student-init"]


@pytest.mark.parametrize("extra, message", [
    (("--layer-map", "0,5"), "names teacher layers"),
    (("--layer-map", "1,0", "--stage", "general"), None),
    (("--student", "tiny-bert", "--vocab-size", 400), "vocab_size"),
    (("--stage", "magic"), "unknown --stage"),
    (("--task-train", "missing.tsv", "--task-val", "missing.tsv", "--corpus", None, "--stage", "intermediate"),
     "does not exist"),
    (("--teacher", "no/such/dir"), "does not exist"),
    (("--init", "teacher-layers", "--d-model", 32, "--n-heads", 2), "extract"),
])
def test_cli_errors_are_one_clear_line(teacher_dirs, tmp_path, extra, message):
    r = teacher_dirs
    base = {"--teacher": r / "pre", "--student": "tiny-bert", "--corpus": r / "corpus.txt", "--out": tmp_path / "x",
            "--max-steps": 1, "--batch-size": 2, "--seq-len": 16, "--n-layers": 2}
    extra = list(extra)
    while extra:
        key, value = extra.pop(0), extra.pop(0)
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    args = [a for kv in base.items() for a in kv]
    res = cli("distill", *args, code=None)
    if message is None:  # free (non-monotone) maps are allowed
        assert res.exit_code == 0, res.output
        return
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_cli_hugging_face_teacher_through_interop(teacher_dirs, tmp_path):
    """A teacher in Hugging Face format (BertForMaskedLM directory) is imported through morphlm.interop."""
    from morphlm.interop.hf import export_hf_model

    r = teacher_dirs
    pre = ckpt.load_model(r / "pre")
    hf = export_hf_model(pre, tmp_path / "hf", tokenizer_json=(r / "pre" / "tokenizer.json").read_text())
    assert json.loads((hf / "config.json").read_text())["model_type"] == "bert"
    out = tmp_path / "s"
    cli("distill", "--teacher", hf, "--student", "teacher", "--n-layers", 1, "--init", "teacher-layers",
        "--layer-map", "1", "--corpus", r / "corpus.txt", "--max-steps", 1, "--batch-size", 2, "--seq-len", 16,
        "--out", out)
    lineage = ckpt.read_lineage(out)
    assert lineage["parents"][0]["format"] == "huggingface" and lineage["teacher"] == str(hf.resolve())
    # the same teacher loaded natively gives the same loss on a batch as the imported one
    from morphlm.compress.distill import load_teacher

    t_hf = load_teacher(hf)[0]
    batch = {"input_ids": torch.randint(7, 300, (2, 12))}
    student = ckpt.load_model(out)
    a = DistillLoss(t_hf, student.config, DistillConfig())(student, batch)[0]
    b = DistillLoss(pre, student.config, DistillConfig())(student, batch)[0]
    assert torch.allclose(a, b, atol=1e-5)
