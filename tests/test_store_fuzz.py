"""Property-based fuzzing of the checkpoint store (issue 11): whatever config.json, state/trainer.json,
metrics.jsonl, lineage.json or a staged COMMIT hold, every reader either loads correctly or raises a
CheckpointError naming the file — never another exception — and nothing outside the folder is written."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hypothesis import HealthCheck, given, settings  # the dev extra installs it (pyproject.toml)
from hypothesis import strategies as st

from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 64, 512, 2**31])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["gelu", "rope", "lm", "mlm", "cls", "no", "1", "../x", "/etc/passwd"]))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One saved checkpoint (with resume state and lineage) that each example copies and alters."""
    root = tmp_path_factory.mktemp("fuzz-template")
    cfg = ModelConfig.from_name("tiny", n_layers=1, vocab_size=128, d_model=32, n_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    parent = root / "parent"
    ckpt.save_checkpoint(parent, model.state_dict(), cfg, lineage={"verb": "train", "flops": 3.0})
    run = root / "run"
    ckpt.save_checkpoint(run, model.state_dict(), cfg, tokenizer_json='{"model": {}}',
                         optimizer_tensors={"state::tok_emb.weight::step": torch.zeros(())},
                         trainer_state={"step": 2, "tokens": 64, "flops": 9.0, "param_groups": [{"params": []}]},
                         lineage={"verb": "grow", "flops": 1.0, "parents": [{"path": str(parent), "flops": 3.0}]})
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    return run


class Sandbox:
    """A fresh copy of the template inside a box with a sentinel file beside it."""

    def __init__(self, template: Path, box: Path) -> None:
        shutil.rmtree(box, ignore_errors=True)
        box.mkdir(parents=True)
        self.box = box
        self.run = box / "run"
        shutil.copytree(template, self.run)
        (box / "sentinel.txt").write_text("outside the checkpoint")
        self.before = self._outside()

    def _outside(self):
        return {str(p.relative_to(self.box)): p.read_bytes() if p.is_file() else None
                for p in sorted(self.box.rglob("*")) if self.run not in p.parents and p != self.run}

    def untouched(self) -> bool:
        return self._outside() == self.before


def _read_everything(run: Path) -> None:
    """Every reader of the store, each allowed to succeed or to raise CheckpointError only."""
    readers = [ckpt.read_config, ckpt.load_model, ckpt.load_trainer_state, ckpt.read_metrics, ckpt.read_lineage,
               ckpt.total_flops, ckpt.model_fingerprint, ckpt.load_tokenizer_json, ckpt.has_trainer_state,
               lambda d: ckpt.trim_metrics(d / ckpt.METRICS_FILE, 1)]
    for reader in readers:
        try:
            out = reader(run)
        except ckpt.CheckpointError as exc:
            assert str(exc) and len(str(exc)) < 2000
            continue
        if reader is ckpt.read_config:  # a correct load is a valid, typed config
            cfg, raw = out
            assert isinstance(cfg, ModelConfig) and ModelConfig.from_dict(cfg.to_dict()) == cfg


def _as_bytes(doc, raw):
    return raw if doc is None else json.dumps(doc).encode()


CONFIG_KEYS = ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "causal",
               "activation", "position", "head", "norm_eps", "dropout", "format_version", "quantization",
               "final_norm", "n_segments", "weights_sha256", "fingerprint", "config_sha256", "typo_field"]


@settings(SETTINGS, max_examples=150)
@given(replace=st.sampled_from([False, False, False, True]), changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values | st.just(KeyError),
                                                      min_size=1, max_size=3),
       value=json_values, raw=st.binary(max_size=40), rehash=st.booleans())
def test_fuzz_config_json(template, tmp_path, replace, changes, value, raw, rehash):
    box = Sandbox(template, tmp_path / "box")
    path = box.run / "config.json"
    doc = json.loads(path.read_text())
    if replace:
        data = _as_bytes(value, raw) if isinstance(value, (dict, list)) else raw
    else:
        for key, v in changes.items():
            doc.pop(key, None) if v is KeyError else doc.__setitem__(key, v)
        if rehash:  # a crafted file whose own hash was recomputed: only the strict checks stand
            doc["config_sha256"] = ckpt.config_sha256(doc)
        data = json.dumps(doc).encode()
    path.write_bytes(data)
    _read_everything(box.run)
    assert box.untouched()


@SETTINGS
@given(mode=st.sampled_from(["replace", "set", "drop"]), key=st.sampled_from(
    ["step", "tokens", "flops", "schedule_steps", "param_groups", "weights_sha256", "optimizer_sha256", "data_spec",
     "aux_param_groups", "world_size"]), value=json_values, raw=st.binary(max_size=40))
def test_fuzz_trainer_json(template, tmp_path, mode, key, value, raw):
    box = Sandbox(template, tmp_path / "box")
    path = box.run / "state" / "trainer.json"
    doc = json.loads(path.read_text())
    if mode == "replace":
        data = _as_bytes(value, raw) if isinstance(value, (dict, list)) else raw
    else:
        doc.pop(key, None) if mode == "drop" else doc.__setitem__(key, value)
        data = json.dumps(doc).encode()
    path.write_bytes(data)
    _read_everything(box.run)
    assert box.untouched()


@SETTINGS
@given(lines=st.lists(json_values.map(json.dumps) | st.text(max_size=20) | st.just('{"step": 3, "lo'),
                      max_size=6), raw=st.binary(max_size=30), use_raw=st.booleans())
def test_fuzz_metrics_jsonl(template, tmp_path, lines, raw, use_raw):
    box = Sandbox(template, tmp_path / "box")
    path = box.run / "metrics.jsonl"
    path.write_bytes(raw if use_raw else "\n".join(lines).encode("utf-8", "surrogatepass"))
    _read_everything(box.run)
    try:
        records = ckpt.read_metrics(box.run)
    except ckpt.CheckpointError:
        pass
    else:
        assert all(isinstance(r, dict) for r in records)
    assert box.untouched()


@SETTINGS
@given(doc=json_values, parents=st.lists(st.fixed_dictionaries(
    {"path": st.sampled_from(["../parent", "..", ".", "", "/", "self", "parent-abs"]) | json_values,
     "flops": json_values}, optional={"sha256": json_values}), max_size=3), structured=st.booleans())
def test_fuzz_lineage_json(template, tmp_path, doc, parents, structured):
    box = Sandbox(template, tmp_path / "box")
    real_parent = Path(json.loads((template / "lineage.json").read_text())["parents"][0]["path"])
    fixed = []
    for p in parents:
        p = dict(p)
        if p["path"] == "self":
            p["path"] = str(box.run)  # a cycle
        elif p["path"] == "parent-abs":
            p["path"] = str(real_parent)
        fixed.append(p)
    lineage = {"verb": "x", "flops": 1.0, "parents": fixed} if structured else doc
    (box.run / "lineage.json").write_text(json.dumps(lineage))
    _read_everything(box.run)
    if structured and any(p["path"] == str(box.run) for p in fixed):
        with pytest.raises(ckpt.CheckpointError):
            ckpt.total_flops(box.run)
    assert box.untouched()


names = (st.sampled_from(["model.safetensors", "config.json", "state/trainer.json", "../sentinel.txt",
                          "/tmp/morphlm-fuzz-abs", "state/../../sentinel.txt", "link/x", "state/a/b", ".lock",
                          "COMMIT", "", ".", "..", "sub\\x", "tokenizer.json"]) | st.text(max_size=12) | json_values)


@SETTINGS
@given(files=st.lists(names, max_size=4), body=json_values, use_body=st.booleans(), link_stage=st.booleans())
def test_fuzz_commit_marker(template, tmp_path, files, body, use_body, link_stage):
    """A staged save with any COMMIT content: readers load the committed state or name the problem, the
    writer rolls forward or refuses, and nothing outside the folder is written."""
    box = Sandbox(template, tmp_path / "box")
    run = box.run
    (run / "link").symlink_to(box.box)
    stage = run / ".staging"
    if link_stage:
        (box.box / "elsewhere").mkdir()
        box.before = box._outside()
        stage.symlink_to(box.box / "elsewhere")
    else:
        stage.mkdir()
        shutil.copy(run / "config.json", stage / "config.json")
        (stage / "sentinel.txt").write_text("overwritten")
        (stage / "x").write_text("escaped")
    (stage / "COMMIT").write_text(json.dumps(body if use_body else {"files": files}))
    box.before = box._outside()
    _read_everything(run)
    assert box.untouched()
    try:
        ckpt.recover(run)
    except ckpt.CheckpointError:
        pass
    else:
        assert not stage.exists()
        _read_everything(run)
    assert box.untouched()
    assert not Path("/tmp/morphlm-fuzz-abs").exists()
