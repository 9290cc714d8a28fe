"""Every verb owns its output folder; bad input is one named error; no silent wrong results (issue 11, Why 3, 7
and 8). Each case failed on main (an overwritten folder, a traceback, or a result that was quietly wrong)."""

import json
import logging
import os
from pathlib import Path

import pytest

from clihelp import cli
from morphlm.train import checkpoint as ckpt

TRAIN = ["train", "--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "200000", "--batch-size", "2",
         "--seq-len", "32", "--max-steps", "1", "--eval-every", "0"]
SMALL = ["--max-bytes", "200000", "--max-steps", "1", "--batch-size", "2", "--seq-len", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained tiny GPT (A), a model grown from it (G), its int8 quantization (I8), its Hugging Face export
    (HF), a prompt tuned on it (PT) and a folder of unrelated files (notes)."""
    root = tmp_path_factory.mktemp("verbs")
    cli(*TRAIN, "--out", root / "A")
    cli("grow", root / "A", "--to", "tiny", "--out", root / "G")
    cli("quantize", root / "A", "--method", "int8", "--out", root / "I8")
    cli("convert", root / "A", root / "HF")
    task = root / "t.tsv"
    task.write_text("text\tlabel\nnice film\t1\nbad film\t0\ngood\t1\nawful\t0\n")
    cli("prompt-tune", root / "A", "--task-train", task, "--task-val", task, "--out", root / "PT", "--steps", 1,
        "--batch-size", 2, "--prompt-len", 2, "--eval-every", 1)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me")
    (root / "file").write_text("not a folder")
    return root


def _fingerprint_tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- Why 3: owned output folders
@pytest.mark.parametrize("target,message", [
    ("G", "written by `morphlm grow`"),
    ("I8", "int8_dynamic' quantized"),
    ("HF", "a Hugging Face model"),
    ("PT", "the output of `morphlm prompt-tune`"),
    ("notes", "1 other entry (todo.txt)"),
    ("file", "is not a directory"),
])
def test_train_refuses_a_folder_it_does_not_own(runs, target, message):
    before = _fingerprint_tree(runs / target) if (runs / target).is_dir() else (runs / target).read_bytes()
    res = cli(*TRAIN, "--out", runs / target, "--resume", "auto", code=2)
    assert res.output.startswith("error: ") and message in res.output and "another --out" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    after = _fingerprint_tree(runs / target) if (runs / target).is_dir() else (runs / target).read_bytes()
    assert after == before  # nothing written


@pytest.mark.parametrize("out,message", [("/", "filesystem root"), ("~", "home directory")])
def test_root_and_home_are_refused(out, message):
    # through the helper every verb calls (the CLI would, on the old code, really write into / or ~)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.claim_output_dir(os.path.expanduser(out), "train")


@pytest.mark.parametrize("out,init,message", [
    ("A", "A", "must differ from the --init directory"),
    (".", "A", "contains the --init directory"),
    ("A/sub", "A", "lies inside the --init checkpoint"),
])
def test_train_refuses_its_input(runs, out, init, message):
    before = _fingerprint_tree(runs / "A")
    res = cli(*TRAIN, "--out", runs / out, "--init", runs / init, code=2)
    assert message in res.output, res.output
    assert _fingerprint_tree(runs / "A") == before


@pytest.mark.parametrize("verb", ["grow", "extract", "distill", "prompt-tune", "search-arch"])
def test_every_verb_refuses_a_folder_of_other_files(runs, verb):
    out = runs / "notes"
    argv = {
        "grow": ["grow", runs / "A", "--to", "tiny", "--out", out],
        "extract": ["extract", runs / "A", "--n-layers", 1, "--out", out],
        "distill": ["distill", "--teacher", runs / "A", "--student", "tiny", "--corpus", "stdlib", *SMALL,
                    "--out", out],
        "prompt-tune": ["prompt-tune", runs / "A", "--task-train", runs / "t.tsv", "--task-val", runs / "t.tsv",
                        "--out", out, "--steps", 1],
        "search-arch": ["search", "arch", runs / "A", "--out", out, "--max-latency-ms", 100],
    }[verb]
    res = cli(*argv, code=2)
    assert "1 other entry (todo.txt)" in res.output and "another --out" in res.output, res.output
    assert sorted(p.name for p in out.iterdir()) == ["todo.txt"]


def test_a_stale_lock_or_staging_folder_does_not_count(runs, tmp_path):
    out = tmp_path / "o"
    (out / ckpt.STAGING).mkdir(parents=True)
    (out / ckpt.LOCK_FILE).write_text("12345\n")
    assert ckpt.claim_output_dir(out, "grow") == out
    with pytest.raises(ckpt.CheckpointError, match="already holds a train run; pass --resume auto"):
        ckpt.claim_output_dir(runs / "A", "train")
    assert ckpt.claim_output_dir(runs / "A", "train", resume=True) == runs / "A"
    with pytest.raises(ckpt.CheckpointError, match="written by `morphlm train`"):  # another verb's run
        ckpt.claim_output_dir(runs / "A", "distill", resume=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder_is_a_named_error(runs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = cli("grow", runs / "A", "--to", "tiny", "--out", ro / "x", code=2)
        assert "not writable" in res.output and "Traceback" not in res.output
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------- Why 7: errors, not tracebacks
@pytest.mark.parametrize("argv,message", [
    (["generate", "A", "--n", 0], "--n 0"),
    (["generate", "A", "--top-k", 0], "--top-k 0"),
    (["generate", "A", "--temperature", -1], "--temperature -1"),
    (["grow", "I8", "--to", "tiny", "--out", "new"], "is a quantized model"),
    (["extract", "I8", "--n-layers", 1, "--out", "new"], "is a quantized model"),
    (["eval", "PT"], "written by `morphlm prompt-tune`"),
    (["eval", "HF"], "convert it first with `morphlm convert"),
    (["grow", "HF", "--to", "tiny", "--out", "new"], "a Hugging Face model"),
    (["generate", "PT"], "pass the model directory it was tuned on"),
])
def test_bad_input_is_one_named_line(runs, argv, message):
    argv = [runs / a if a in ("A", "I8", "PT", "HF", "new") else a for a in argv]
    res = cli(*argv, code=2)
    assert res.output.startswith("error: ") and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (runs / "new").exists()


@pytest.mark.parametrize("rows,message", [
    ("a\t1\nb\t \n", "line 3 has a blank label"),
    ("a\t1\nb\t1000000\n", "label 1000000 means 1000001 classes"),
    ("".join(f"t{i}\tl{i}\n" for i in range(10_001)), "10001 distinct values"),
])
def test_task_file_labels_are_checked_and_messages_capped(tmp_path, rows, message):
    from morphlm.data import TaskError, load_task

    f = tmp_path / "t.tsv"
    f.write_text("text\tlabel\n" + rows)
    with pytest.raises(TaskError, match=message) as info:
        load_task(f, f)
    assert str(f) in str(info.value) and len(str(info.value)) < 600


def test_metrics_reader_is_the_store_reader(runs, tmp_path):
    from morphlm.train.metrics import read_metrics

    run = tmp_path / "m"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n')
    with pytest.raises(ckpt.CheckpointError, match="line 2"):
        read_metrics(run)


def test_error_lines_are_capped(capsys):
    import typer

    from morphlm.cli import friendly

    @friendly
    def boom():
        raise ValueError("many\nlines " * 100_000)

    with pytest.raises(typer.Exit) as info:
        boom()
    err = capsys.readouterr().err
    assert info.value.exit_code == 2 and err.startswith("error: many lines")
    assert len(err) < 2100 and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- Why 8: no silent wrong results
def test_random_bytes_corpus_warns_naming_the_file(tmp_path, caplog):
    from morphlm.data.corpora import read_text_file

    f = tmp_path / "noise.txt"
    f.write_bytes(os.urandom(50_000))
    text = tmp_path / "prose.txt"
    text.write_text("A plain sentence, with punctuation.\n\tAnd a tab.\n" * 500, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger="morphlm.data.corpora"):
        read_text_file(text)
        assert not caplog.records
        read_text_file(f)
    assert any(str(f) in r.getMessage() and "binary data" in r.getMessage() for r in caplog.records)


def test_distill_student_with_another_tokenizer_is_refused(runs, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"line {i}: zebra quokka {i * 7} axolotl\n\n" for i in range(3000)))
    cli("train", "--preset", "tiny", "--corpus", other, *SMALL, "--out", tmp_path / "O")
    res = cli("distill", "--teacher", runs / "A", "--student", tmp_path / "O", "--corpus", "stdlib", *SMALL,
              "--out", tmp_path / "D", code=2)
    assert "another tokenizer" in res.output, res.output
    assert not (tmp_path / "D").exists()


def test_distilled_student_follows_a_bert_teachers_objective(tmp_path):
    cli("train", "--preset", "tiny-bert", "--corpus", "stdlib", *SMALL, "--out", tmp_path / "B")
    res = cli("distill", "--teacher", tmp_path / "B", "--student", "tiny", "--corpus", "stdlib", *SMALL,
              "--out", tmp_path / "D")
    cfg, _ = ckpt.read_config(tmp_path / "D")
    assert cfg.head == "mlm" and cfg.causal is False, res.output
    assert json.loads((tmp_path / "D" / "lineage.json").read_text())["verb"] == "distill"


def test_multi_stage_and_demo_folders_resume_as_their_own(tmp_path):
    import torch

    from morphlm.demo import _is_demo_folder
    from morphlm.model import ModelConfig, TransformerLM

    cfg = ModelConfig.from_name("tiny")
    torch.manual_seed(0)
    state = TransformerLM(cfg).state_dict()
    # distill --stage task killed after stage a: OUT holds only OUT/stage_a (a distill run) and a metrics log
    out = tmp_path / "d"
    ckpt.save_checkpoint(out / "stage_a", state, cfg, lineage={"verb": "distill"}, trainer_state={"step": 1})
    (out / "metrics.jsonl").write_text("")
    assert ckpt.claim_output_dir(out, "distill", resume=True) == out
    with pytest.raises(ckpt.CheckpointError, match="pass --resume auto"):
        ckpt.claim_output_dir(out, "distill")
    with pytest.raises(ckpt.CheckpointError, match="stage_a"):
        ckpt.claim_output_dir(out, "train", resume=True)
    # a demo folder: only the demo's runs, init records, table and plot
    demo = tmp_path / "demo"
    (demo / "source").mkdir(parents=True)
    (demo / "grown-fpi.init.json").write_text("{}")
    assert ckpt.claim_output_dir(demo, "demo", resume=True, own=_is_demo_folder) == demo
    (demo / "thesis.tex").write_text("mine")
    with pytest.raises(ckpt.CheckpointError, match="thesis.tex"):
        ckpt.claim_output_dir(demo, "demo", resume=True, own=_is_demo_folder)
