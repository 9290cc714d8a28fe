import json
import os

import pytest
import torch

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt


def _save(tmp_path, **kw):
    cfg = ModelConfig.from_name("tiny")
    model = TransformerLM(cfg)
    ckpt.save_checkpoint(tmp_path / "run", model.state_dict(), cfg, tokenizer_json='{"x": 1}',
                         lineage={"verb": "test", "flops": 5.0}, **kw)
    return tmp_path / "run", model


def test_roundtrip_and_layout(tmp_path):
    run, model = _save(tmp_path, optimizer_tensors={"a": torch.ones(3)}, trainer_state={"step": 3, "tokens": 96, "flops": 7.0})
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json", "lineage.json", "state"}
    assert not (run / ".staging").exists()
    loaded = ckpt.load_model(run)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    state, optim = ckpt.load_trainer_state(run)
    assert state["step"] == 3 and torch.equal(optim["a"], torch.ones(3))
    assert json.loads((run / "config.json").read_text())["format_version"] == 1
    assert ckpt.total_flops(run) == 7.0


def test_truncated_weights_are_detected(tmp_path):
    run, _ = _save(tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="integrity hash"):
        ckpt.load_model(run)


def test_altered_weights_are_detected(tmp_path):
    run, _ = _save(tmp_path)
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="truncated or altered"):
        ckpt.load_model(run)


def test_newer_format_version_is_refused(tmp_path):
    run, _ = _save(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["format_version"] = 7
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="upgrade morphlm"):
        ckpt.load_model(run)


def test_missing_dir_and_not_a_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="not a morphlm checkpoint"):
        ckpt.load_model(tmp_path / "empty")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    run, model = _save(tmp_path)
    before = (run / "model.safetensors").read_bytes()
    # a save killed before its COMMIT marker: staging holds garbage, no marker
    stage = run / ".staging"
    stage.mkdir()
    (stage / "model.safetensors").write_bytes(b"half-written")
    assert ckpt.load_model(run) is not None
    # a reader ignores the uncommitted staging folder and leaves it alone (it may be a live writer's)
    assert (run / "model.safetensors").read_bytes() == before and stage.exists()
    ckpt.recover(run)  # the next writer discards it
    assert (run / "model.safetensors").read_bytes() == before and not stage.exists()


def test_committed_save_is_rolled_forward(tmp_path, monkeypatch):
    run, _ = _save(tmp_path)
    cfg = ModelConfig.from_name("tiny")
    other = TransformerLM(cfg)
    # stage a complete save, then "crash" in the middle of the moves that follow its COMMIT marker
    real_replace = os.replace
    calls = []

    def crash_on_second_move(src, dst):
        if ".staging" not in str(dst):  # a move out of staging (not a temp file's rename inside it)
            calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second_move)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(run, other.state_dict(), cfg)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert (run / ".staging" / "COMMIT").exists()
    # a reader sees the committed save (half moved, half still staged) without moving anything
    listing = sorted(p.name for p in (run / ".staging").iterdir())
    loaded = ckpt.load_model(run)
    assert torch.equal(loaded.tok_emb.weight, other.tok_emb.weight)
    assert sorted(p.name for p in (run / ".staging").iterdir()) == listing
    ckpt.recover(run)  # the writer finishes the moves
    assert not (run / ".staging").exists()
    assert torch.equal(ckpt.load_model(run).tok_emb.weight, other.tok_emb.weight)


def test_weights_not_matching_config(tmp_path):
    run, _ = _save(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["d_ff"] = 128
    del cfg["config_sha256"]  # as a directory saved before config.json carried its own hash
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        ckpt.load_model(run)


def test_atomic_write_leaves_no_temp(tmp_path):
    ckpt.write_atomic(tmp_path / "a.json", "{}")
    assert os.listdir(tmp_path) == ["a.json"]


def test_model_config_reads_a_checkpoint_directory(tmp_path):
    """ModelConfig.from_checkpoint / from_file(dir) skip the checkpoint-only keys of config.json."""
    import json

    from morphlm.model import ModelConfig

    cfg = ModelConfig.from_name("tiny")
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 2, "weights_sha256": "ab", **cfg.to_dict()}))
    assert ModelConfig.from_checkpoint(tmp_path) == cfg
    assert ModelConfig.from_file(tmp_path) == cfg
