"""G-MAP: a domain model reading a frozen general model's hidden states (model/gmap.py, train/gmap.py)."""

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clihelp import cli
from morphlm.model import ModelConfig, TransformerLM
from morphlm.model.config import ConfigError
from morphlm.model.gmap import GMAPModel, memory_sources
from morphlm.train import checkpoint as ckpt
from morphlm.train.gmap import GMAP_ROLE

FUSIONS = ("single", "multiple", "gated", "chunk_gated")
BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)


def gmap_cfg(fusion="chunk_gated", layers="0,1", weight=1.0, base=BASE, memory_layers=2):
    return base.replace(gmap_layers=layers, gmap_fusion=fusion, gmap_memory_layers=memory_layers,
                        gmap_weight_init=weight)


def domain_from(general, cfg):
    """A G-MAP model whose domain weights are the general model's (DAPT's start) and fusion weights fresh."""
    model = GMAPModel(cfg, general)
    state = model.state_dict()
    state.update(general.state_dict())
    model.load_state_dict(state)
    return model


@pytest.fixture()
def general():
    torch.manual_seed(0)
    return TransformerLM(BASE)


# ---------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("fusion", FUSIONS)
def test_zero_fusion_weight_equals_the_plain_domain_model(general, fusion):
    model = domain_from(general, gmap_cfg(fusion, weight=0.0))
    plain = TransformerLM(BASE)
    plain.load_state_dict(general.state_dict())
    x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    assert torch.equal(model(x).logits, plain(x).logits)
    # with the memory switched on (λ = 1, the paper's replacement) the memory changes the output
    on = domain_from(general, gmap_cfg(fusion, weight=1.0))
    assert not torch.allclose(on(x).logits, plain(x).logits, atol=1e-4)
    # and λ still learns from zero: the fusion weight gets a gradient
    model(x, labels=y).loss.backward()
    assert all(f.fusion_weight.grad is not None and f.fusion_weight.grad != 0 for f in model.gmap.fusions.values())


def test_no_gradient_reaches_the_frozen_model(general):
    model = domain_from(general, gmap_cfg("gated"))
    before = {k: v.clone() for k, v in general.state_dict().items()}
    assert not any(p is q for p in model.parameters() for q in general.parameters())
    assert not any(k.startswith("general") for k in model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
        opt.zero_grad()
        model(x, labels=y).loss.backward()
        opt.step()
    assert not general.training  # no dropout in the memory, even while the domain model trains
    assert all(p.grad is None and not p.requires_grad for p in general.parameters())
    assert all(torch.equal(before[k], v) for k, v in general.state_dict().items())
    assert all(p.grad is not None for p in model.gmap.parameters())
    assert not any(s.requires_grad for s in model.memory(torch.randint(0, 64, (1, 5))))


def test_a_deep_copy_reads_its_own_fusion_modules(general):
    model = domain_from(general, gmap_cfg("chunk_gated"))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for fusion in twin.gmap.fusions.values():
            fusion.fusion_weight.zero_()
    plain = TransformerLM(BASE)
    plain.load_state_dict(general.state_dict())
    x = torch.randint(0, 64, (2, 12))
    assert torch.equal(twin(x).logits, plain(x).logits)  # the copy's λ = 0, not the original's λ = 1
    assert not torch.allclose(model(x).logits, plain(x).logits, atol=1e-4)


def test_memory_sources_follow_the_fusion_strategy():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=12, n_heads=4, max_seq_len=16)
    chunks = memory_sources(gmap_cfg("chunk_gated", "5,11", base=cfg, memory_layers=12))
    assert chunks == [tuple(range(0, 6)), tuple(range(6, 12))]  # the paper's chunks for layers 5 and 11
    assert memory_sources(gmap_cfg("single", "5,11", base=cfg, memory_layers=12)) == [(11,), (11,)]
    assert memory_sources(gmap_cfg("gated", "5", base=cfg, memory_layers=4)) == [(0, 1, 2, 3)]
    assert memory_sources(gmap_cfg("multiple", "5", base=cfg, memory_layers=4)) == [(0, 1, 2, 3)]


def test_augmented_layer_computes_the_gated_memory_attention(general):
    """Layer 1's context becomes c + λ(softmax(c K_mᵀ/√d_h + causal) V_m − c), K_m/V_m = LN(M) W_K/W_V, with
    M_t = Σ_j softmax_j(w_gᵀ m_{t,j}) m_{t,j} over general layers 0 and 1, written out by hand."""
    model = domain_from(general, gmap_cfg("gated", layers="1", weight=0.7))
    fusion = model.gmap.fusions["1"]
    with torch.no_grad():
        fusion.gate.normal_()
    x = torch.randint(0, 64, (2, 9))
    states = model.memory(x)
    seen = {}
    block = model.blocks[1]
    handle = block.attn.proj.register_forward_hook(lambda mod, args, out: seen.update(ctx=args[0]))
    pre = block.attn.proj.register_forward_pre_hook(lambda mod, args: seen.update(raw=args[0].clone()), prepend=True)
    model(x)
    handle.remove(), pre.remove()
    m = torch.stack(states, 2)  # (B, T, 2, D)
    g = (m @ fusion.gate.detach()).softmax(-1)
    M = block.norm1((m * g[..., None]).sum(2))
    W, b = block.attn.qkv.weight, block.attn.qkv.bias
    k = F.linear(M, W[32:64], b[32:64]).view(2, 9, 4, 8).transpose(1, 2)
    v = F.linear(M, W[64:], b[64:]).view(2, 9, 4, 8).transpose(1, 2)
    c = seen["raw"]
    q = c.view(2, 9, 4, 8).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    mem = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(seen["ctx"], c + 0.7 * (mem - c), atol=1e-5, rtol=1e-5)


def test_bad_configs_and_frozen_models_are_refused(general):
    with pytest.raises(ConfigError, match="gmap_layers='0,5'"):
        gmap_cfg(layers="0,5")  # out of range for a 2-layer domain model
    with pytest.raises(ConfigError, match="gmap_fusion"):
        gmap_cfg(fusion="concat")
    deep = BASE.replace(n_layers=4)
    with pytest.raises(ConfigError, match="needs at least 4 general layers"):
        gmap_cfg(layers="1,3", base=deep, memory_layers=2)
    with pytest.raises(ConfigError, match="gmap_layers is empty"):
        BASE.replace(gmap_fusion="gated")
    with pytest.raises(ConfigError, match="d_model"):
        GMAPModel(gmap_cfg(), TransformerLM(BASE.replace(d_model=48)))
    with pytest.raises(ConfigError, match="tokenizer"):
        GMAPModel(gmap_cfg(), TransformerLM(BASE.replace(vocab_size=80)))
    with pytest.raises(ConfigError, match="3 layers"):
        GMAPModel(gmap_cfg(), TransformerLM(BASE.replace(n_layers=3)))
    with pytest.raises(ConfigError, match="bidirectional"):  # its memory would leak later tokens into an LM
        GMAPModel(gmap_cfg(), TransformerLM(BASE.replace(causal=False, head="mlm")))
    with pytest.raises(RuntimeError, match="frozen general model's memory"):
        TransformerLM(gmap_cfg())(torch.randint(0, 64, (1, 4)))  # the domain model alone has no memory
    assert "gmap_layers" not in BASE.to_dict()  # a plain model's config.json is unchanged


# ---------------------------------------------------------------------------------------------- runs
DATA = ["--corpus", "stdlib", "--max-bytes", "100000", "--seq-len", "16", "--batch-size", "4"]
TINY = ["--preset", "tiny", "--d-model", "32", "--max-seq-len", "32", *DATA]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmap")
    cli("train", *TINY, "--max-steps", 2, "--out", root / "general")
    cli("train", "--init", root / "general", "--gmap-memory", root / "general", "--gmap-layers", "0,1",
        *DATA, "--max-steps", 2, "--out", root / "dapt")
    return root


def test_checkpoint_records_the_frozen_parent_and_not_its_weights(runs):
    general, dapt = runs / "general", runs / "dapt"
    lineage = json.loads((dapt / "lineage.json").read_text())
    (parent,) = lineage["parents"]
    assert parent["role"] == GMAP_ROLE and parent["init"] is True
    assert parent["path"] == str(general.resolve()) and parent["sha256"] == ckpt.dir_fingerprint(general)
    names = set(load_file(dapt / "model.safetensors"))
    assert names == set(TransformerLM(ckpt.read_config(dapt)[0]).state_dict())  # the domain model only
    assert {n for n in names if n.startswith("gmap.")} and not any("general" in n for n in names)
    model = ckpt.load_model(dapt)
    assert isinstance(model, GMAPModel) and torch.equal(
        model.general.tok_emb.weight, ckpt.load_model(general).tok_emb.weight)
    assert model(torch.randint(0, 64, (1, 8))).logits.shape == (1, 8, 512)
    assert json.loads(cli("eval", dapt, "--json").output)["val_loss"] > 0  # the verbs open it the same way
    # the compute behind it: the general run once (it is both init and memory) plus the G-MAP run
    assert ckpt.total_flops(dapt) == pytest.approx(lineage["flops"] + ckpt.total_flops(general))


def test_resume_of_a_gmap_run_is_bit_exact(runs, tmp_path):
    args = ["train", "--init", runs / "general", "--gmap-memory", runs / "general", "--gmap-layers", "1",
            "--gmap-fusion", "multiple", *DATA, "--dropout", "0.1", "--schedule-steps", 4]
    cli(*args, "--max-steps", 4, "--out", tmp_path / "a")
    cli(*args, "--max-steps", 2, "--out", tmp_path / "b")
    # the resumed run finds its frozen model in its own lineage: no --gmap-memory needed
    cli("train", "--init", runs / "general", "--gmap-layers", "1", "--gmap-fusion", "multiple", *DATA,
        "--dropout", "0.1", "--schedule-steps", 4, "--max-steps", 4, "--out", tmp_path / "b", "--resume", "auto")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x).get("loss") for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x).get("loss") for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_task_fine_tuning_keeps_the_frozen_memory(runs, tmp_path):
    train, val = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    rows = ["sentence\tlabel"] + [f"{w} film\t{i % 2}" for i, w in enumerate(["good", "bad", "fine", "dull"] * 3)]
    train.write_text("\n".join(rows) + "\n")
    val.write_text("\n".join(rows[:5]) + "\n")
    out = tmp_path / "task"
    cli("train", "--init", runs / "dapt", "--head", "cls", "--n-classes", 2, "--task-train", train,
        "--task-val", val, "--seq-len", 16, "--batch-size", 4, "--max-steps", 2, "--out", out)
    model = ckpt.load_model(out)
    assert isinstance(model, GMAPModel) and model.config.head == "cls"
    parents = json.loads((out / "lineage.json").read_text())["parents"]
    assert [p.get("role") for p in parents] == [None, GMAP_ROLE]
    assert parents[1]["path"] == str((runs / "general").resolve())


def test_missing_or_altered_frozen_parent_is_refused(runs, tmp_path):
    memory = tmp_path / "memory"
    shutil.copytree(runs / "general", memory)
    run = tmp_path / "run"
    cli("train", "--init", memory, "--gmap-memory", memory, "--gmap-layers", "1", "--gmap-fusion", "single", *DATA,
        "--max-steps", 1, "--schedule-steps", 2, "--out", run)
    ckpt.load_model(run)
    # another model at the recorded path: its weights hash differs from the lineage's
    shutil.rmtree(memory)
    cli("train", *TINY, "--max-steps", 1, "--seed", 5, "--out", memory)
    with pytest.raises(ckpt.CheckpointError, match="was altered"):
        ckpt.load_model(run)
    res = cli("train", "--init", runs / "general", "--gmap-layers", "1", "--gmap-fusion", "single", *DATA,
              "--max-steps", 2, "--out", run, "--resume", "auto", code=2)
    assert "was altered" in res.output
    shutil.rmtree(memory)
    with pytest.raises(ckpt.CheckpointError, match="is missing"):
        ckpt.load_model(run)
    assert "is missing" in cli("eval", run, code=2).output


def test_bad_input_is_refused_with_nothing_written(runs, tmp_path):
    general = runs / "general"
    wide = tmp_path / "wide"
    cli("train", *TINY, "--d-model", 48, "--max-steps", 1, "--out", wide)
    other_tok = tmp_path / "other_tok"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    cli("train", "--preset", "tiny", "--d-model", 32, "--max-seq-len", 32, "--corpus", corpus, "--seq-len", 16,
        "--batch-size", 4, "--max-steps", 1, "--out", other_tok)
    out = tmp_path / "out"
    cases = [
        (["--init", general, "--gmap-memory", wide, "--gmap-layers", "1"], "d_model=48"),
        (["--init", general, "--gmap-memory", other_tok, "--gmap-layers", "1"], "different tokenizers"),
        (["--init", general, "--gmap-memory", general, "--gmap-layers", "0,2"], "gmap_layers='0,2'"),
        (["--preset", "tiny", "--d-model", 32, "--max-seq-len", 32, "--n-layers", 4, "--gmap-memory", general,
          "--gmap-layers", "1,3"], "needs at least 4 general layers"),
        (["--init", general, "--gmap-layers", "1"], "--gmap-memory"),
        (["--init", general, "--gmap-memory", general], "--gmap-layers"),
        (["--init", general, "--gmap-memory", tmp_path / "nowhere", "--gmap-layers", "1"], "does not exist"),
    ]
    for args, needle in cases:
        res = cli("train", *args, *DATA, "--max-steps", 1, "--out", out, code=2)
        assert needle in res.output, (args, res.output)
        assert not out.exists(), args
