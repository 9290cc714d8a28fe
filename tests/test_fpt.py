"""Prompt tuning and FPT: the prompt path through the model's inputs_embeds, frozen-model training through fit(), partial models,
prompt recycling, the FLOPs ledger, the prompt-tune CLI, the bench's JSON and every bad input's message."""

import json
import random

import pytest
import torch

from morphlm.data import Example, Task, train_tokenizer
from morphlm.grow import prompt_tuning
from morphlm.grow.fpt import activation_scores, partial_model, plan_stages, prompt_tune
from morphlm.grow.prompt_tuning import PromptModel, PromptTuneConfig, make_loss, prompted_forward
from morphlm.grow import GrowthError
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train.checkpoint import total_flops

from clihelp import cli
PRESETS = ["tiny", "tiny-bert", "tiny-llama"]




def model(preset, seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.from_name(preset, **kw)).eval()


def toy_task(n_train=96, n_val=24, seed=0):
    rng = random.Random(seed)
    words = (["bad", "awful", "dull"], ["good", "great", "fine"])

    def ex():
        y = rng.randint(0, 1)
        return Example(f"the film was {rng.choice(words[y])} and long", None, y)

    return Task([ex() for _ in range(n_train)], [ex() for _ in range(n_val)], ["0", "1"], 2, False)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"the film was {w} and long" for w in ("bad", "good", "great", "awful", "dull", "fine")] * 20,
                           300)


def batch_for(cfg, B=3, T=9, seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(7, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad:
        mask[0, -3:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    return x, mask, types


# ---------------------------------------------------------------------------- the model's prompt path
@pytest.mark.parametrize("preset", PRESETS)
def test_no_prompt_is_bit_identical_to_the_plain_composition(preset):
    """inputs_embeds=None, position_ids=None give exactly the embeddings -> blocks -> head composition."""
    m = model(preset)
    cfg = m.config
    x, mask, types = batch_for(cfg)
    tt = types if cfg.n_segments else None
    out = m(x, attention_mask=mask, token_type_ids=tt, inputs_embeds=None, position_ids=None, output_hidden_states=True)
    with torch.no_grad():
        h = m.tok_emb(x)
        if m.pos_emb is not None:
            h = h + m.pos_emb(torch.arange(x.shape[1]))
        if m.seg_emb is not None:
            h = h + m.seg_emb(tt)
        if m.emb_norm is not None:
            h = m.emb_norm(h)
        rope = (m.rope_cos, m.rope_sin) if m.rope_cos is not None else None
        am = m._attention_mask(mask, x.shape[1])
        for block in m.blocks:
            h, _ = block(h, rope, am)
        if m.final_norm is not None:
            h = m.final_norm(h)
        ref = m.head(h)
    assert torch.equal(out.logits, ref)
    assert torch.equal(out.hidden_states[-1], m(x, attention_mask=mask, token_type_ids=tt,
                                                output_hidden_states=True).hidden_states[-1])


@pytest.mark.parametrize("preset", PRESETS)
def test_prompt_equals_inserting_those_embeddings_as_tokens(preset):
    """Prompt vectors that equal real token embeddings give the logits of a sequence with those tokens inserted
    after the first one (positions, RoPE, padding mask and segment 0 all line up); prompt slots are dropped."""
    m = model(preset)
    cfg = m.config
    x, mask, types = batch_for(cfg)
    tt = types if cfg.n_segments else None
    ptoks = torch.tensor([11, 12, 13, 14])
    P = len(ptoks)
    out = prompted_forward(m, x, m.tok_emb.weight[ptoks][None].detach(), mask, tt)
    B = x.shape[0]
    x2 = torch.cat([x[:, :1], ptoks.expand(B, P), x[:, 1:]], 1)
    mask2 = torch.cat([mask[:, :1], torch.ones(B, P, dtype=torch.long), mask[:, 1:]], 1)
    tt2 = None if tt is None else torch.cat([tt[:, :1], torch.zeros(B, P, dtype=torch.long), tt[:, 1:]], 1)
    ref = m(x2, attention_mask=mask2, token_type_ids=tt2).logits
    ref = torch.cat([ref[:, :1], ref[:, 1 + P:]], 1)
    assert out.logits.shape == (B, x.shape[1], cfg.vocab_size)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    # a batch-shaped prompt gives the same
    out_b = prompted_forward(m, x, m.tok_emb.weight[ptoks].expand(B, P, -1).detach(), mask, tt)
    torch.testing.assert_close(out_b.logits, out.logits, atol=1e-6, rtol=1e-6)
    # and labels still align with the input positions
    labels = torch.randint(0, cfg.vocab_size, x.shape)
    out_l = prompted_forward(m, x, m.tok_emb.weight[ptoks][None].detach(), labels=labels)
    shifted = torch.nn.functional.cross_entropy(out_l.logits.reshape(-1, cfg.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(out_l.loss, shifted, atol=1e-5, rtol=1e-5)


def test_prompt_shape_and_length_errors():
    m = model("tiny")  # max_seq_len 128
    x = torch.randint(7, 512, (2, 120))
    with pytest.raises(ValueError, match="plus 10 prompt vectors exceeds max_seq_len=128"):
        prompted_forward(m, x, torch.zeros(1, 10, 64))
    with pytest.raises(ValueError, match="prompt must have shape"):
        prompted_forward(m, x[:, :10], torch.zeros(1, 3, 32))


# ---------------------------------------------------------------------------- training only the prompt
def test_only_the_prompt_gets_gradients_and_updates(tok):
    lm = model("tiny-bert", vocab_size=300)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    task = toy_task()
    init = prompt_tuning.init_prompt(lm, 4, seed=0)
    cfg = PromptTuneConfig(prompt_len=4, steps=6, lr=0.05, batch_size=8, max_len=16, eval_every=3,
                           label_words=["bad", "good"])
    res = prompt_tune(lm, tok, task, cfg, progress=False)
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items()), "frozen weights changed"
    assert not torch.equal(res.prompt, init), "the prompt was not updated"
    assert res.prompt.shape == (4, 64) and [h["step"] for h in res.history] == [3, 6]
    # gradients reach the prompt only
    pm = PromptModel(lm, torch.nn.Parameter(init.clone()))
    data = prompt_tuning.PromptBatches(prompt_tuning.ClassificationBatches(task.train, task.val, tok, 4, 15), "mlm", tok.mask_id)
    b = data.train_batch(0)
    assert (b["input_ids"][torch.arange(4), b["score_pos"]] == tok.mask_id).all()
    loss, _ = make_loss(res.label_ids)(pm, b)
    loss.backward()
    assert pm.prompt.grad is not None and pm.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())
    assert [n for n, p in pm.named_parameters() if p.requires_grad] == ["prompt"]


# ---------------------------------------------------------------------------- partial models
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_partial_model_shapes_and_weights(preset):
    lm = model(preset, n_layers=4)
    cfg = lm.config
    x, mask, _ = batch_for(cfg)
    scores = activation_scores(lm, [{"input_ids": x, "attention_mask": mask}])
    assert len(scores) == 4 and scores[0].shape == (cfg.d_ff,)
    keep = cfg.d_ff // 4
    sub, info = partial_model(lm, 2, keep, scores)
    assert sub.config.n_layers == 2 and sub.config.d_ff == keep and info["layer_map"] == [1, 3]
    width = 2 * keep if cfg.activation == "swiglu" else keep
    for k, src in enumerate(info["layer_map"]):
        sel = info["ffn_keep"][src]
        assert sel == sorted(torch.topk(scores[src], keep).indices.tolist())
        fc1, fc2 = sub.blocks[k].mlp.fc1.weight, sub.blocks[k].mlp.fc2.weight
        assert fc1.shape == (width, cfg.d_model) and fc2.shape == (cfg.d_model, keep)
        full1 = lm.blocks[src].mlp.fc1.weight
        rows = sel + [cfg.d_ff + i for i in sel] if cfg.activation == "swiglu" else sel
        assert torch.equal(fc1, full1[rows]) and torch.equal(fc2, lm.blocks[src].mlp.fc2.weight[:, sel])
        assert torch.equal(sub.blocks[k].attn.qkv.weight, lm.blocks[src].attn.qkv.weight)
    assert not any(p.requires_grad for p in sub.parameters())
    # keeping everything reproduces the full model exactly
    same, _ = partial_model(lm, 4, cfg.d_ff, scores)
    assert torch.equal(same(x, attention_mask=mask).logits, lm(x, attention_mask=mask).logits)
    with pytest.raises(GrowthError, match="activation scores"):
        partial_model(lm, 4, keep)
    with pytest.raises(GrowthError, match="keeps 1..4 layers"):
        partial_model(lm, 5)


def test_plan_stages():
    cfg = ModelConfig.from_name("tiny", n_layers=4)
    st = plan_stages(cfg, 100, progressive=True, partial="compound")
    assert [(s.n_layers, s.d_ff, s.steps) for s in st] == [(1, 64, 20), (2, 128, 20), (3, 192, 20), (4, 256, 40)]
    assert [(s.n_layers, s.d_ff) for s in plan_stages(cfg, 100, True, "layers")][:3] == [(1, 256), (2, 256), (3, 256)]
    assert [(s.n_layers, s.d_ff) for s in plan_stages(cfg, 100, True, "ffn")][0] == (4, 64)
    assert len(plan_stages(cfg, 100)) == 1
    with pytest.raises(GrowthError, match="no steps for the full model"):
        plan_stages(cfg, 10, True, stage_steps=4)
    with pytest.raises(GrowthError, match="increasing numbers"):
        plan_stages(cfg, 100, True, fractions=(0.5, 0.25))


def hand_step_flops(cfg, n_layers, d_ff, B, T):
    """2 x forward of the partial model, tiny (gelu, tied LM head), counted by hand."""
    d, V = cfg.d_model, cfg.vocab_size
    per_layer = 4 * d * d + 2 * d * d_ff
    fwd_per_token = 2 * (n_layers * per_layer + d * V) + 4 * n_layers * d * T
    return 2 * fwd_per_token * B * T


def test_fpt_recycles_the_prompt_and_counts_flops_per_stage(tok, monkeypatch):
    lm = model("tiny", n_layers=4, vocab_size=300)
    task = toy_task()
    seen = []
    real_fit = prompt_tuning.fit

    def spy(m, loss_fn, data, args, callbacks=()):
        start = m.prompt.detach().clone()
        shapes = [tuple(data.train_batch(s)["input_ids"].shape) for s in range(args.max_steps)]
        out = real_fit(m, loss_fn, data, args, callbacks)
        seen.append((start, m.prompt.detach().clone(), m.lm.config, shapes))
        return out

    monkeypatch.setattr(prompt_tuning, "fit", spy)
    P = 4
    cfg = PromptTuneConfig(prompt_len=P, steps=8, lr=0.05, batch_size=4, max_len=16, eval_every=4, progressive=True,
                           stage_steps=2, fractions=(0.25, 0.5, 0.75), label_words=["bad", "good"])
    res = prompt_tune(lm, tok, task, cfg, progress=False)
    assert [c.n_layers for _, _, c, _ in seen] == [1, 2, 3, 4] and [c.d_ff for _, _, c, _ in seen] == [64, 128, 192, 256]
    assert torch.equal(seen[0][0], prompt_tuning.init_prompt(lm, P, 0))
    for k in range(1, 4):
        assert torch.equal(seen[k][0], seen[k - 1][1]), f"stage {k} did not start from stage {k - 1}'s prompt"
        assert not torch.equal(seen[k][0], seen[0][0])
    assert torch.equal(res.prompt, seen[-1][1])
    total = 0.0
    for (_, _, c, shapes), st in zip(seen, res.stages):
        stage = sum(hand_step_flops(c, c.n_layers, c.d_ff, B, T + P) for B, T in shapes)
        assert st["flops"] == pytest.approx(stage, rel=1e-12)
        total += stage
    assert res.flops == pytest.approx(total, rel=1e-12)
    # a partial stage costs less than a full one on the same batches
    assert res.stages[0]["flops"] < res.stages[3]["flops"] / 2
    assert [h["step"] for h in res.history] == [2, 4, 6, 8] and res.history[-1]["flops"] == pytest.approx(total)


def test_reading_errors(tok):
    task = toy_task()
    with pytest.raises(GrowthError, match="use --reading causal"):
        prompt_tune(model("tiny", vocab_size=300), tok, task, PromptTuneConfig(reading="mlm", max_len=16, prompt_len=4))
    with pytest.raises(GrowthError, match="use --reading mlm"):
        prompt_tune(model("tiny-bert", vocab_size=300), tok, task, PromptTuneConfig(reading="causal", max_len=16))
    with pytest.raises(GrowthError, match="classification head"):
        prompt_tune(model("tiny-bert", vocab_size=300, head="cls"), tok, task, PromptTuneConfig(max_len=16))
    with pytest.raises(GrowthError, match="share first tokens"):
        prompt_tune(model("tiny", vocab_size=300), tok, task,
                    PromptTuneConfig(max_len=16, prompt_len=4, label_words=["good", "good"]))


# ---------------------------------------------------------------------------- CLI and bench
@pytest.fixture(scope="module")
def src(tmp_path_factory):
    out = tmp_path_factory.mktemp("fpt") / "src"
    cli("train", "--preset", "tiny", "--corpus", "stdlib", "--max-bytes", 100000, "--max-steps", 2, "--out", out,
        "--seq-len", 32, "--batch-size", 4, "--vocab-size", 300, "--n-layers", 4)
    return out


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    t = toy_task(48, 12)
    for name, exs in (("train.tsv", t.train), ("dev.tsv", t.val)):
        (d / name).write_text("label\tsentence\n" + "".join(f"{e.label}\t{e.text}\n" for e in exs))
    return d / "train.tsv", d / "dev.tsv"


def test_cli_prompt_tune_end_to_end(src, task_files, tmp_path):
    out = tmp_path / "prompt"
    res = cli("prompt-tune", src, "--task-train", task_files[0], "--task-val", task_files[1], "--prompt-len", 4,
              "--progressive", "--steps", 6, "--stage-steps", 1, "--batch-size", 4, "--max-len", 16, "--eval-every", 3,
              "--verbalizer", "bad,good", "--out", out)
    assert "FPT prompt tuning, 4 stage(s)" in res.output
    prompt, doc = prompt_tuning.load_prompt(out)
    assert prompt.shape == (4, 64) and doc["reading"] == "causal" and doc["config"]["progressive"]
    assert [s["n_layers"] for s in doc["stages"]] == [1, 2, 3, 4]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["verb"] == "prompt-tune" and lineage["parents"][0]["path"] == str(src.resolve())
    assert lineage["flops"] == pytest.approx(doc["flops"]) and doc["flops"] > 0
    assert total_flops(out) == pytest.approx(doc["flops"] + total_flops(src))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 6]
    assert not list(out.glob(".*.tmp"))


def test_cli_errors(src, task_files, tmp_path):
    args = ["--task-train", task_files[0], "--task-val", task_files[1], "--out", tmp_path / "p", "--steps", 2]
    res = cli("prompt-tune", src, *args, "--prompt-len", 120, code=2)
    assert "exceeds the model's max_seq_len=128" in res.output and "--prompt-len" in res.output
    res = cli("prompt-tune", src, "--task-train", tmp_path / "nope.tsv", "--task-val", task_files[1],
              "--out", tmp_path / "p", code=2)
    assert "nope.tsv does not exist" in res.output
    res = cli("prompt-tune", src, *args, "--reading", "mlm", code=2)
    assert "causal LM (head=lm)" in res.output and "--reading causal" in res.output
    res = cli("prompt-tune", tmp_path, *args, code=2)
    assert "not a checkpoint directory" in res.output


def test_bench_fpt_tiny_writes_valid_json(task_files, tmp_path):
    out = tmp_path / "fpt.json"
    cli("bench", "fpt", "--size", "tiny", "--corpus", "stdlib", "--task-train", task_files[0], "--task-val",
        task_files[1], "--out", out)
    res = json.loads(out.read_text())
    assert res["benchmark"] == "fpt" and res["machine"]["cores"] >= 1 and "torch" in res and "commit" in res
    s = res["summary"]
    assert s["seeds"] == 1 and 0.0 <= s["plain_final_accuracy_mean"] <= 1.0
    assert 0.5 <= s["majority_class_accuracy"] <= 1.0
    margin = s["significance_margin"]
    assert margin > 0
    assert s["target_above_majority"] == (s["plain_final_accuracy_mean"] > s["majority_class_accuracy"] + margin)
    if not s["target_above_majority"]:
        assert s["fpt_wins"] is False and "chance" in s["note"]
    rec = res["per_seed"][0]
    assert rec["target_accuracy"] == rec["plain"]["final_accuracy"]
    assert rec["plain"]["flops_to_target"] <= rec["plain"]["total_flops"]
    assert (rec["flops_saving"] is None) == (not rec["fpt"]["reached"])
    assert [st["n_layers"] for st in rec["fpt"]["stages"]] == [1, 2, 3, 4]
    assert (tmp_path / "fpt.png").stat().st_size > 0
    assert res["curves"][0]["plain"][-1]["step"] == res["setup"]["size"]["steps"]
