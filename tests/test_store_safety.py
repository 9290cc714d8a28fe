"""The checkpoint store against crafted files, second writers, readers and typos (issue 11, store parts).

Each test names the defect of the issue's "Why" list it guards against; each fails on the store before
the fix (readers that replayed an unconfined COMMIT, no writer lock, config.json trusted unchecked,
tracebacks from malformed files, a file hash used as a fingerprint)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _save(root, name="run", **kw):
    cfg = ModelConfig.from_name("tiny")
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    run = root / name
    ckpt.save_checkpoint(run, model.state_dict(), cfg, tokenizer_json='{"x": 1}',
                         lineage=kw.pop("lineage", {"verb": "test", "flops": 5.0}), **kw)
    return run, model


def _trainer():
    return {"step": 3, "tokens": 96, "flops": 7.0}


def _edit_config(run, **changes):
    """Change config.json entries as a crafted-but-consistent file would (its config_sha256 recomputed)."""
    cfg = json.loads((run / "config.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    cfg["config_sha256"] = ckpt.config_sha256(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


def _tree(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------- Why 1: confined recovery
@pytest.mark.parametrize("entry", ["../important.txt", "/tmp/morphlm-evil-abs", "state/../../important.txt",
                                   "x/evil", "a/b/c", ".lock", "COMMIT", 7, ""])
def test_crafted_commit_touches_nothing_outside(tmp_path, entry):
    run, _ = _save(tmp_path)
    (tmp_path / "important.txt").write_text("keep me")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "x").symlink_to(outside)
    stage = run / ".staging"
    stage.mkdir()
    for rel in ("important.txt", "evil", "morphlm-evil-abs"):
        (stage / rel).write_text("overwritten")
    (stage / "COMMIT").write_text(json.dumps({"files": [entry]}))
    before = _tree(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="COMMIT"):
        ckpt.load_model(run)  # a reader
    with pytest.raises(ckpt.CheckpointError, match="nothing was moved"):
        ckpt.recover(run)  # the writer
    assert _tree(tmp_path) == before
    assert (tmp_path / "important.txt").read_text() == "keep me" and not list(outside.iterdir())
    assert not Path("/tmp/morphlm-evil-abs").exists()


def test_staging_folder_that_is_a_link_is_refused(tmp_path):
    run, _ = _save(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "COMMIT").write_text(json.dumps({"files": ["model.safetensors"]}))
    (outside / "model.safetensors").write_bytes(b"foreign")
    (run / ".staging").symlink_to(outside)
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        ckpt.recover(run)
    assert (outside / "model.safetensors").read_bytes() == b"foreign"
    assert (run / "model.safetensors").read_bytes() != b"foreign"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "lineage.json",
                                  "state/trainer.json"])
def test_checkpoint_files_that_are_links_are_refused(tmp_path, name):
    run, _ = _save(tmp_path, optimizer_tensors={"a": torch.ones(2)}, trainer_state=_trainer())
    target = tmp_path / "real"
    (run / name).rename(target)
    (run / name).symlink_to(target)
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        if name == "tokenizer.json":
            ckpt.load_tokenizer_json(run)
        elif name == "lineage.json":
            ckpt.read_lineage(run)
        elif name == "state/trainer.json":
            ckpt.load_trainer_state(run)
        else:
            ckpt.load_model(run)


def test_linked_metrics_log_is_never_appended_to(tmp_path):
    """Resuming into a directory whose metrics.jsonl links elsewhere is refused; the target is untouched."""
    from morphlm.train.loop import TrainArgs, fit
    from toydata import ToyData

    out = tmp_path / "r"
    torch.manual_seed(0)
    args = dict(max_steps=2, schedule_steps=4, lr=1e-3, progress=False, resume="auto")
    fit(TransformerLM(ModelConfig.from_name("tiny")), None, ToyData(), TrainArgs(out_dir=str(out), **args))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    args["max_steps"] = 3
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        fit(TransformerLM(ModelConfig.from_name("tiny")), None, ToyData(), TrainArgs(out_dir=str(out), **args))
    assert victim.read_text() == "precious\n"
    dangling = tmp_path / "new-file-outside"
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(dangling)
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        ckpt.open_append(out / "metrics.jsonl")
    assert not dangling.exists()


# ---------------------------------------------------------------------------- Why 4: readers, writer lock
def test_readers_never_move_or_delete(tmp_path):
    """A live writer's staging folder (no COMMIT yet) and a committed-but-unmoved save survive every reader."""
    run, model = _save(tmp_path, optimizer_tensors={"a": torch.ones(2)}, trainer_state=_trainer())
    stage = run / ".staging"
    stage.mkdir()
    (stage / "model.safetensors").write_bytes(b"a live writer is writing this")
    before = _tree(run)
    assert ckpt.has_checkpoint(run) and ckpt.has_trainer_state(run)
    ckpt.read_config(run)
    loaded = ckpt.load_model(run)
    ckpt.load_trainer_state(run)
    ckpt.load_tokenizer_json(run)
    ckpt.read_lineage(run)
    ckpt.total_flops(run)
    ckpt.model_fingerprint(run)
    assert _tree(run) == before
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from morphlm.train import checkpoint as ckpt
with ckpt.writer_lock({run!r}):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold_lock(run):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(ROOT), run=str(run))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_naming_the_pid(tmp_path):
    run, model = _save(tmp_path)
    holder = _hold_lock(run)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ckpt.CheckpointLocked, match=f"process {holder.pid}") as err:
            ckpt.save_checkpoint(run, model.state_dict(), model.config)
        assert err.value.pid == holder.pid and time.perf_counter() - t0 < 2.0
        (run / ".staging").mkdir()  # an interrupted save only the holder may finish or discard
        with pytest.raises(ckpt.CheckpointLocked, match=str(holder.pid)):
            ckpt.recover(run)
        assert (run / ".staging").exists()
        assert ckpt.load_model(run) is not None  # readers need no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's lock: the next writer proceeds (and leaves no lock file)
    ckpt.save_checkpoint(run, model.state_dict(), model.config)
    assert not (run / ".staging").exists() and not (run / ".lock").exists()


def test_writer_lock_is_reentrant_and_released(tmp_path):
    run = tmp_path / "r"
    with ckpt.writer_lock(run):
        with ckpt.writer_lock(run):
            assert ckpt.holds_writer_lock(run) and (run / ".lock").read_text() == f"{os.getpid()}\n"
        assert ckpt.holds_writer_lock(run)
    assert not ckpt.holds_writer_lock(run)
    assert not run.exists()  # nothing was written: the folder the lock created is gone again
    with ckpt.writer_lock(run):
        (run / "kept").write_text("x")
    assert os.listdir(run) == ["kept"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckpt.CheckpointError, match="not a directory"):
        ckpt.writer_lock(tmp_path / "file").acquire()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_named_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ckpt.CheckpointError, match="writable"):
            ckpt.writer_lock(ro).acquire()
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------- Why 5: validated before allocated
def test_config_is_covered_by_the_integrity_record(tmp_path):
    run, _ = _save(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["dropout"] = 0.5  # a silent edit, hash not updated
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="config_sha256"):
        ckpt.load_model(run)


@pytest.mark.parametrize("field,value,match", [
    ("causal", "no", "causal='no' must be true or false"),
    ("tie_embeddings", 1, "tie_embeddings=1 must be true or false"),
    ("vocab_size", 2e9, "vocab_size=2000000000.0 must be an integer"),
    ("d_model", "64", "d_model='64' must be an integer"),
    ("norm_eps", None, "norm_eps=None must be a finite number"),
    ("format_version", "1", "format_version='1' must be an integer"),
    ("d_modle", 64, "did you mean 'd_model'"),
    ("quantization", "int8", "quantization='int8' must be an object"),
])
def test_config_types_are_strict(tmp_path, field, value, match):
    run, _ = _save(tmp_path)
    _edit_config(run, **{field: value})
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_model(run)


@pytest.mark.parametrize("field,value,match", [
    ("vocab_size", 2_000_000_000, "GiB"),
    ("n_layers", 3000, "n_layers=3000"),
    ("max_seq_len", 10**9, "GiB"),
    ("n_segments", 10**9, "GiB"),
    ("d_ff", 512, "shape"),
])
def test_sizes_are_checked_against_the_header_before_allocation(tmp_path, field, value, match):
    import resource

    run, _ = _save(tmp_path)
    _edit_config(run, **{field: value})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_model(run)
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024  # KiB: no big allocation


def test_header_is_parsed_without_loading_tensors(tmp_path):
    run, model = _save(tmp_path)
    data = (run / "model.safetensors").read_bytes()
    header, start = ckpt.parse_safetensors_header(data[:4096 * 4], len(data), "w")
    assert set(header) == set(model.state_dict()) and start > 8
    assert header["tok_emb.weight"]["shape"] == [512, 64]
    for bad in (b"\x00" * 4, (10**12).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]"):
        with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors file"):
            ckpt.parse_safetensors_header(bad, 10**6, "w")


# ---------------------------------------------------------------------------- Why 7: errors, not tracebacks
def test_malformed_metrics_line_is_a_named_error(tmp_path):
    run, _ = _save(tmp_path)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n{"step": 3\n')
    with pytest.raises(ckpt.CheckpointError, match=r"metrics.jsonl line 2 is \[1, 2\]"):
        ckpt.trim_metrics(run / "metrics.jsonl", 5)
    (run / "metrics.jsonl").write_text('{"step": "one"}\n')
    with pytest.raises(ckpt.CheckpointError, match="line 1: step='one'"):
        ckpt.read_metrics(run)
    # the line a kill cut off is dropped, steps past the checkpoint too
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    ckpt.trim_metrics(run / "metrics.jsonl", 2)
    assert [r["step"] for r in ckpt.read_metrics(run)] == [1, 2]


def test_malformed_trainer_state_is_a_named_error(tmp_path):
    run, _ = _save(tmp_path, optimizer_tensors={"a": torch.ones(2)}, trainer_state=_trainer())
    path = run / "state" / "trainer.json"
    good = json.loads(path.read_text())
    for change, match in [({"step": KeyError}, "no 'step' entry"), ({"step": "3"}, "step='3' must be"),
                          ({"flops": -1}, "flops=-1 must be"), ({"param_groups": [1]}, "param_groups=\\[1\\]")]:
        doc = dict(good)
        for k, v in change.items():
            doc.pop(k) if v is KeyError else doc.__setitem__(k, v)
        path.write_text(json.dumps(doc))
        with pytest.raises(ckpt.CheckpointError, match=match):
            ckpt.load_trainer_state(run)
    path.write_text("[]")
    with pytest.raises(ckpt.CheckpointError, match="trainer.json must hold a JSON object"):
        ckpt.load_trainer_state(run)


@pytest.mark.parametrize("name,reader", [("tokenizer.json", ckpt.load_tokenizer_json),
                                         ("metrics.jsonl", ckpt.read_metrics),
                                         ("lineage.json", ckpt.read_lineage),
                                         ("config.json", ckpt.read_config)])
def test_non_utf8_files_are_named(tmp_path, name, reader):
    run, _ = _save(tmp_path)
    (run / name).write_bytes(b'{"a": "\xff\xfe"}\n')
    with pytest.raises(ckpt.CheckpointError, match=f"{name} is not UTF-8"):
        reader(run)


@pytest.mark.parametrize("doc,match", [([1, 2], "a JSON object"), ({"parents": "x"}, "parents='x'"),
                                       ({"parents": [3]}, r"parents\[0\]=3"),
                                       ({"flops": "lots"}, "flops='lots'"),
                                       ({"parents": [{"path": 5}]}, r"parents\[0\].path=5")])
def test_lineage_garbage_is_a_named_error(tmp_path, doc, match):
    run, _ = _save(tmp_path)
    (run / "lineage.json").write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.total_flops(run)


def test_lineage_cycle_is_refused_at_write_and_detected_at_read(tmp_path):
    a, model = _save(tmp_path, "a")
    b, _ = _save(tmp_path, "b", lineage={"verb": "grow", "flops": 1.0, "parents": [{"path": str(a)}]})
    # a write that would close the loop a -> b -> a is refused
    with pytest.raises(ckpt.CheckpointError, match="its own ancestor"):
        ckpt.save_checkpoint(a, model.state_dict(), model.config,
                             lineage={"verb": "train", "parents": [{"path": str(b)}]})
    with pytest.raises(ckpt.CheckpointError, match="its own ancestor"):
        ckpt.save_checkpoint(a, model.state_dict(), model.config, lineage={"parents": [{"path": str(a)}]})
    # a cycle made by hand is a clear error, not a RecursionError
    (a / "lineage.json").write_text(json.dumps({"verb": "x", "flops": 2.0, "parents": [{"path": str(b)}]}))
    with pytest.raises(ckpt.CheckpointError, match="cycle"):
        ckpt.total_flops(b)
    assert ckpt.total_flops(b, include_parents=False) == 1.0


def test_error_messages_are_capped(tmp_path):
    run, _ = _save(tmp_path)
    _edit_config(run, activation="x" * 1_000_000)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model(run)
    assert "activation" in str(err.value) and len(str(err.value)) < 1000
    (run / "lineage.json").write_text(json.dumps({"parents": ["y" * 1_000_000]}))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.read_lineage(run)
    assert len(str(err.value)) < 1000


def test_atomic_json_writer(tmp_path):
    from morphlm.bench.common import write_json
    from morphlm.io import write_json as io_write_json

    p = io_write_json(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    assert p.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n' and os.listdir(tmp_path) == ["a.json"]
    with pytest.raises(ValueError):
        io_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists() and os.listdir(tmp_path) == ["a.json"]
    write_json(tmp_path / "bench.json", {"z": float("inf"), "a": 1})  # benchmark results: NaN/inf -> null
    assert json.loads((tmp_path / "bench.json").read_text()) == {"z": None, "a": 1}


# ---------------------------------------------------------------------------- Why 9: a canonical fingerprint
_FP = """
import sys
sys.path.insert(0, {root!r})
import torch
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt
torch.manual_seed(0)
m = TransformerLM(ModelConfig.from_name("tiny"))
ckpt.save_checkpoint({out!r}, m.state_dict(), m.config)
print(ckpt.model_fingerprint({out!r}), ckpt.dir_fingerprint({out!r}))
"""


def test_fingerprint_is_the_same_across_processes(tmp_path):
    fps = set()
    for i in range(4):
        env = {**os.environ, "PYTHONHASHSEED": str(i)}
        res = subprocess.run([sys.executable, "-c", _FP.format(root=str(ROOT), out=str(tmp_path / f"p{i}"))],
                             capture_output=True, text=True, env=env, check=True)
        fps.add(res.stdout.split()[0])
        assert ckpt.model_fingerprint(tmp_path / f"p{i}") == res.stdout.split()[0]
    assert len(fps) == 1


def test_fingerprint_ignores_layout_and_metadata_but_not_values(tmp_path):
    from safetensors.torch import save

    cfg = {"d_model": 4}
    a = {"w": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int64)}
    one = save(a, metadata={"format": "pt", "x": "1"})
    two = save(dict(reversed(list(a.items()))), metadata={"x": "1", "format": "pt", "other": "y"})
    assert ckpt.weights_fingerprint(one, cfg) == ckpt.weights_fingerprint(two, cfg)
    changed = save({**a, "w": torch.arange(4.0) + 1})
    assert ckpt.weights_fingerprint(changed, cfg) != ckpt.weights_fingerprint(one, cfg)
    assert ckpt.weights_fingerprint(one, {"d_model": 8}) != ckpt.weights_fingerprint(one, cfg)
    # dtype and shape are part of the identity even when the bytes agree
    assert ckpt.weights_fingerprint(save({"w": torch.zeros(4)}), cfg) != \
        ckpt.weights_fingerprint(save({"w": torch.zeros(2, 2)}), cfg)


def test_lineage_records_parent_fingerprints(tmp_path):
    a, _ = _save(tmp_path, "a")
    b, _ = _save(tmp_path, "b", lineage={"verb": "grow", "parents": [{"path": str(a), "flops": 0.0}]})
    parent = ckpt.read_lineage(b)["parents"][0]
    assert parent["fingerprint"] == ckpt.model_fingerprint(a) == json.loads((a / "config.json").read_text())[
        "fingerprint"]
    # a directory saved before the fingerprint was recorded gets it computed from its weights and config
    _edit_config(a, fingerprint=KeyError)
    assert ckpt.model_fingerprint(a) == parent["fingerprint"]


# ---------------------------------------------------------------------------- the training run holds the lock
def test_train_out_that_is_a_file_or_locked_is_a_named_error(tmp_path):
    from clihelp import cli

    args = ["train", "--preset", "tiny", "--corpus", "stdlib", "--max-bytes", "200000", "--max-steps", "1"]
    (tmp_path / "file").write_text("not a folder")
    res = cli(*args, "--out", tmp_path / "file", code=2)
    assert "is not a directory" in res.output and (tmp_path / "file").read_text() == "not a folder"
    holder = _hold_lock(tmp_path / "busy")
    try:
        res = cli(*args, "--out", tmp_path / "busy", code=2)
        assert f"process {holder.pid}" in res.output
        assert not (tmp_path / "busy" / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
