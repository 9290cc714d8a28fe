"""The hidden-state projections W_e/W_h live with the student's distillation state (TinyBERT keeps W_h with the
student): saved by general distillation, the very tensors task distillation starts from (CLI and Python API),
handed from stage a to stage b, refused with a clear error when the widths differ, and never part of an exported
student (model.safetensors, convert --to hf, quantize)."""

import pytest
import torch
from safetensors.torch import load_file

import morphlm.train.loop as loop
from morphlm.compress.distill import (PROJECTIONS_FILE, distill, load_projections, projection_state,
                                      read_projections)
from morphlm.compress.distill_loss import DistillConfig, DistillLoss
from morphlm.compress.errors import CompressionError
from morphlm.data import train_tokenizer
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
from morphlm.train.optim import TrainArgs

from toydata import ToyData

from clihelp import cli

TEXTS = ["a good movie with great acting and a happy ending", "the film was boring and slow with awful acting",
         "lovely music and a bright story", "a terrible plot with dull scenes and poor acting"] * 30


@pytest.fixture
def starts(monkeypatch):
    """Every fit() call's initial aux (projection) state, in call order."""
    seen, real = [], loop.fit

    def spy(model, loss_fn, data, args, callbacks=(), **kw):
        aux = kw.get("aux_modules")
        seen.append({k: v.detach().clone() for k, v in aux.state_dict().items()} if aux is not None else {})
        return real(model, loss_fn, data, args, callbacks, **kw)

    monkeypatch.setattr(loop, "fit", spy)
    return seen


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("handoff")
    tok = train_tokenizer(TEXTS, 300)
    torch.manual_seed(3)
    pre = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=2, max_seq_len=32))
    ckpt.save_checkpoint(root / "pre", pre.state_dict(), pre.config, tokenizer_json=tok.to_json_str())
    ft = TransformerLM(pre.config.replace(head="cls", n_classes=2))
    ckpt.save_checkpoint(root / "ft", ft.state_dict(), ft.config, tokenizer_json=tok.to_json_str())
    rows = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(TEXTS[:16])]
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "dev.tsv").write_text("\n".join(rows[:5]) + "\n")
    (root / "corpus.txt").write_text("\n\n".join(TEXTS))
    small = ("--batch-size", 2, "--seq-len", 16)
    cli("distill", "--teacher", root / "pre", "--to", "tiny-bert", "--n-layers", 1, "--d-model", 32, "--n-heads", 2,
        "--stage", "general", "--corpus", root / "corpus.txt", "--max-steps", 3, "--lr", 1e-2, *small,
        "--out", root / "gd")
    return root


def task(r, out, *extra):
    return cli("distill", "--teacher", r / "ft", "--to", r / "gd", "--stage", "task", "--task-train", r / "train.tsv",
               "--task-val", r / "dev.tsv", "--max-steps", 2, "--pred-steps", 2, "--batch-size", 2, "--seq-len", 16,
               "--out", out, *extra)


def test_cli_gd_projections_are_where_task_distillation_starts(dirs, tmp_path, starts):
    gd = load_projections(dirs / "gd")
    assert (dirs / "gd" / PROJECTIONS_FILE).is_file() and set(gd) == {"proj.shared.weight", "proj.shared.bias"}
    assert gd["proj.shared.bias"].abs().sum() > 0  # trained by GD (nn.Linear's bias starts at 0 only for eye init)
    task(dirs, tmp_path / "td")
    assert len(starts) == 2 and set(starts[0]) == set(gd)
    for k in gd:  # stage a (intermediate) starts from GD's W_h, the same tensor
        assert torch.equal(starts[0][k], gd[k]), k
    assert starts[1] == {}  # stage b has no projection of its own ...
    a, meta_b = load_projections(tmp_path / "td" / "stage_a"), read_projections(tmp_path / "td")[1]
    b = load_projections(tmp_path / "td")  # ... and carries stage a's into the final checkpoint unchanged
    assert meta_b["origin"] == "carried" and meta_b["stage"] == "prediction"
    assert ckpt.read_lineage(tmp_path / "td" / "stage_a")["projections_from"] == str((dirs / "gd").resolve())
    assert ckpt.read_lineage(tmp_path / "td")["projections_from"] == str((tmp_path / "td" / "stage_a").resolve())
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], gd[k]) for k in a)
    # the old location is still read for runs saved before the file existed
    (tmp_path / "td" / "stage_a" / PROJECTIONS_FILE).unlink()
    old = load_projections(tmp_path / "td" / "stage_a")
    assert all(torch.equal(a[k], old[k]) for k in a)


def test_cli_fresh_projections_opts_out(dirs, tmp_path, starts):
    gd = load_projections(dirs / "gd")
    task(dirs, tmp_path / "td", "--fresh-projections", "--stage", "intermediate")
    assert len(starts) == 1 and not torch.equal(starts[0]["proj.shared.weight"], gd["proj.shared.weight"])
    assert ckpt.read_lineage(tmp_path / "td")["projections_from"] == "fresh"


def test_projection_file_is_bound_to_its_weights(dirs, tmp_path):
    import shutil

    gd, td = tmp_path / "gd", tmp_path / "td"
    shutil.copytree(dirs / "gd", gd)
    good, meta = read_projections(gd)
    stale = {k: torch.zeros_like(v) for k, v in good.items()}
    ckpt.write_tensors(gd / PROJECTIONS_FILE, stale, {**meta, "weights_sha256": "0" * 64})
    back = load_projections(gd)  # a stale file: the projections committed with the weights (optimizer state)
    assert all(torch.equal(back[k], good[k]) for k in good)
    task(dirs, td, "--stage", "prediction")  # carried only: no optimizer copy to fall back on
    carried, meta = read_projections(td)
    ckpt.write_tensors(td / PROJECTIONS_FILE, carried, {**meta, "weights_sha256": "0" * 64})
    with pytest.raises(CompressionError, match="other weights.*--fresh-projections"):
        load_projections(td)


def test_python_api_handoff_and_width_errors(tmp_path, starts):
    torch.manual_seed(1)
    teacher = TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=2))
    data = ToyData(vocab=512, seq_len=12, batch_size=2)

    def student(d=32):
        torch.manual_seed(0)
        return TransformerLM(ModelConfig.from_name("tiny-bert", n_layers=1, d_model=d, n_heads=2))

    args = TrainArgs(out_dir=str(tmp_path / "gd"), max_steps=2, warmup_steps=1, lr=1e-2, progress=False)
    s = student()
    distill(teacher, s, data, args, DistillConfig(stage="general"))
    gd = load_projections(tmp_path / "gd")
    loss = DistillLoss(teacher, s.config, DistillConfig(stage="intermediate"))
    distill(teacher, s, data, TrainArgs(max_steps=2, warmup_steps=1, lr=1e-2, progress=False), projections=gd,
            loss_fn=loss)
    assert all(torch.equal(starts[1][k], gd[k]) for k in gd)
    trained = projection_state(loss)  # the caller holding the loss reads the trained projections
    assert set(trained) == set(gd) and not torch.equal(trained["proj.shared.weight"], gd["proj.shared.weight"])
    n = len(starts)
    with pytest.raises(CompressionError, match=r"student 32 -> teacher 64.*needs student 48 -> teacher 64"
                                               r".*--fresh-projections"):
        distill(teacher, student(48), data, TrainArgs(max_steps=1, progress=False), DistillConfig(stage="general"),
                projections=gd)
    with pytest.raises(CompressionError, match="projection='per_layer'"):
        distill(teacher, student(), data, TrainArgs(max_steps=1, progress=False),
                DistillConfig(stage="general", projection="per_layer"), projections=gd)
    assert len(starts) == n  # refused before training


def test_exported_student_holds_no_projections(dirs, tmp_path):
    out = tmp_path / "td"
    task(dirs, out)
    w = load_projections(out)["proj.shared.weight"]

    def holds_projection(state):
        return any(k.startswith("proj.") or ".proj.shared" in k or (v.shape == w.shape and torch.equal(v, w))
                   for k, v in state.items())

    state, cfg = ckpt.load_state_dict(out)[0], ckpt.read_config(out)[0]
    assert set(state) == set(TransformerLM(cfg).state_dict()) and not holds_projection(state)
    assert ckpt.shipped_bytes(out) == sum((out / f).stat().st_size for f in ckpt.SHIPPED_FILES)
    cli("convert", out, tmp_path / "hf")
    assert not list((tmp_path / "hf").rglob("*projection*"))
    assert not holds_projection(load_file(str(tmp_path / "hf" / "model.safetensors")))
    cli("quantize", out, "--method", "int8", "--out", tmp_path / "q")
    assert not list((tmp_path / "q").rglob("*projection*"))
    assert not holds_projection(load_file(str(tmp_path / "q" / "model.safetensors")))


def test_cli_general_windows_are_framed_for_a_bert_teacher_only(dirs, tmp_path, monkeypatch):
    from morphlm.data import LMBatches

    seen, real = [], loop.fit

    def spy(model, loss_fn, data, args, callbacks=(), **kw):
        seen.append(data)
        return real(model, loss_fn, data, args, callbacks, **kw)

    monkeypatch.setattr(loop, "fit", spy)
    tok = ckpt.open_tokenizer(dirs / "pre")
    cli("distill", "--teacher", dirs / "pre", "--to", "tiny-bert", "--n-layers", 1, "--stage", "general",
        "--corpus", dirs / "corpus.txt", "--max-steps", 1, "--batch-size", 2, "--seq-len", 16, "--out", tmp_path / "g")
    b = seen[0].train_batch(0)
    assert b["input_ids"].shape == (2, 16) and b["attention_mask"].shape == (2, 16)
    assert bool((b["input_ids"][:, 0] == tok.cls_id).all()) and bool((b["input_ids"][:, -1] == tok.sep_id).all())
    assert bool((b["labels"][:, [0, -1]] == -100).all()) and bool((b["labels"][:, 1:-1] != -100).any())
    assert torch.equal(seen[0].train_batch(0)["input_ids"], b["input_ids"])  # still a pure function of the step
    # a causal LM teacher keeps its raw next-token windows
    torch.manual_seed(0)
    lm = TransformerLM(ModelConfig.from_name("tiny-bert", vocab_size=tok.vocab_size, n_layers=1, max_seq_len=32,
                                             causal=True, head="lm"))
    ckpt.save_checkpoint(tmp_path / "lm", lm.state_dict(), lm.config, tokenizer_json=tok.to_json_str())
    cli("distill", "--teacher", tmp_path / "lm", "--to", "teacher", "--stage", "general", "--corpus",
        dirs / "corpus.txt", "--max-steps", 1, "--batch-size", 2, "--seq-len", 16, "--out", tmp_path / "l")
    assert isinstance(seen[1], LMBatches) and seen[1].train_batch(0)["input_ids"].shape == (2, 16)
