"""One flag vocabulary across verbs: every command's options walked from typer's app, plus the behaviours the
vocabulary promises (did-you-mean, type errors, derived fields, --version, the default run folder, aliases)."""

import json
import logging
import re
from pathlib import Path

import pytest
import typer

from clihelp import cli
from morphlm.cli import app
from morphlm.model.config import ModelConfig

# synonyms the vocabulary replaced (each may live on only as a hidden, deprecated alias)
RETIRED = {"--steps", "--max-len", "--student", "--gd-steps", "--ft-steps", "--gd-lr", "--ft-lr", "--schedule",
           "--schedule-opt", "--seq", "--batch", "--warmup", "--max-batches"}
# verbs that print results: each takes --json
PRINTS_RESULTS = {"train", "eval", "generate", "convert", "grow", "distill", "extract", "quantize", "prompt-tune",
                  "search layermap"}
# verbs without settings of their own (only arguments): no --config
NO_SETTINGS = {"convert", "data list"}


def flat(text):
    """Output with rich's box drawing removed and whitespace joined (long errors wrap inside the box)."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def _commands():
    """(path, click command) for every leaf command of the app, recursively through the sub-apps."""
    root = typer.main.get_command(app)
    out = []

    def walk(group, prefix):
        for name, cmd in sorted(group.commands.items()):
            path = f"{prefix} {name}".strip()
            if hasattr(cmd, "commands"):
                walk(cmd, path)
            else:
                out.append((path, cmd))

    walk(root, "")
    return out


COMMANDS = _commands()


def _visible_flags(cmd):
    return {f for p in cmd.params if not getattr(p, "hidden", False)
            for f in (*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])) if f.startswith("--")}


def test_the_walk_finds_every_verb():
    names = {path for path, _ in COMMANDS}
    assert {"train", "eval", "grow", "distill", "quantize", "prompt-tune", "search layermap", "search arch",
            "bench growth", "bench throughput", "data prepare"} <= names


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_vocabulary(path, cmd):
    flags = _visible_flags(cmd)
    assert not flags & RETIRED, f"{path} still shows retired flag(s) {sorted(flags & RETIRED)}"
    for p in cmd.params:
        if "--device" in getattr(p, "opts", []):  # train's generated options are None until set: TrainArgs' default
            default = p.default if p.default is not None else re.search(r"\(default: (\w+)\)", p.help).group(1)
            assert default == "auto", f"{path} --device defaults to {default!r}"
    if path in PRINTS_RESULTS:
        assert "--json" in flags, f"{path} prints results but has no --json"
    if path not in NO_SETTINGS:
        assert "--config" in flags, f"{path} has settings but no --config"
    # the rendered help shows none of the retired spellings as options
    text = cli(*path.split(), "--help").output
    shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    assert not shown & RETIRED, (path, shown & RETIRED)


def test_train_help_shows_every_dataclass_field_typed():
    from morphlm.train.optim import TrainArgs
    from morphlm.train.run import DataSpec

    (cmd,) = [c for p, c in COMMANDS if p == "train"]
    flags = _visible_flags(cmd)
    rename = {"out_dir": "--out", "schedule": "--lr-schedule"}
    for cls in (ModelConfig, DataSpec, TrainArgs):
        for f in cls.__dataclass_fields__.values():
            if f.init:
                assert rename.get(f.name, "--" + f.name.replace("_", "-")) in flags, f.name
    assert {"--seed", "--warmup-steps", "--eval-every", "--tensorboard", "--head", "--task-train", "--lr-schedule",
            "--growth-schedule", "--set", "--json"} <= flags
    help_text = cli("train", "--help").output
    assert "--warmup-steps" in help_text and "--lr-schedule" in help_text


def test_did_you_mean_on_a_typo():
    res = cli("train", "--max-step", 5, code=2)
    assert "did you mean --max-steps?" in flat(res.output)
    res = cli("train", "--set", "max_step=5", code=2)
    assert "did you mean --max-steps?" in flat(res.output)
    # a verb that passes student settings through names the closest of its own options too
    res = cli("distill", "--teacher", "t", "--to", "teacher", "--out", "o", "--max-step", 5, code=2)
    assert "did you mean --max-steps?" in flat(res.output)
    res = cli("distill", "--teacher", "t", "--to", "teacher", "--out", "o", "--n-layer", 2, code=2)
    assert "did you mean --n-layers?" in flat(res.output)


@pytest.mark.parametrize("args", [("--warmup-steps", "1.5"), ("--set", "warmup_steps=1.5"), ("--eval-every", "2.5")])
def test_bad_values_are_type_errors(args):
    out = flat(cli("train", *args, code=2).output)
    assert re.search(r"integer|number|boolean|float", out), out


def test_version():
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert cli("--version").output.strip() == f"morphlm {version}"


def test_data_help_lists_only_real_subcommands():
    text = cli("data", "--help").output
    assert "inspect" not in text and "list" in text and "prepare" in text


def test_grow_help_lists_the_registry():
    from morphlm.grow import METHODS

    text = cli("grow", "--help").output
    for name in METHODS:
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), name
    assert "--rank" in text and "--max-steps" in text


def test_deprecated_spellings_still_work_with_a_notice(tmp_path):
    from morphlm.commands.options import rewrite_aliases

    assert rewrite_aliases(["--steps", "3", "--steps=4", "--", "--steps"], {"--steps": "--max-steps"}) == \
        ["--max-steps", "3", "--max-steps=4", "--", "--steps"]
    res = cli("quantize", tmp_path / "missing", "--steps", 3, "--out", tmp_path / "q", code=2)
    assert "--steps is deprecated; use --max-steps" in flat(res.output)
    assert "No such option" not in res.output


def test_verb_config_file(tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("max_stepz: 3\n")
    res = cli("quantize", tmp_path / "missing", "--config", cfg, code=2)
    assert "did you mean --max-steps?" in flat(res.output)
    cfg.write_text(f"out: {tmp_path / 'q'}\nmax-steps: 0\n")  # the file supplies the required --out
    res = cli("quantize", tmp_path / "missing", "--config", cfg, code=2)
    assert "Missing option" not in res.output and "missing" in res.output


def test_derived_fields_follow_overrides():
    from morphlm.compress.distill import _student_config
    from morphlm.train.run import build_spec

    cfg = build_spec("tiny", None, {"d_model": 128, "n_heads": 8}).model
    assert (cfg.n_kv_heads, cfg.d_ff, cfg.head_dim) == (8, 512, 16)  # not GQA 4 and 2x d_ff
    assert ModelConfig.from_name("tiny").derive(d_model=128, n_heads=8).to_dict() == cfg.to_dict()
    # explicit values stay: the user's, and a preset's own (tiny-llama is GQA by design)
    assert build_spec("tiny", None, {"d_model": 128, "n_heads": 8, "d_ff": 100}).model.d_ff == 100
    assert build_spec("tiny-llama", None, {"d_model": 128, "n_heads": 8}).model.n_kv_heads == 2
    assert build_spec("tiny", None, {"norm_placement": "post"}).model.final_norm is False
    # the same resolution for distill's student and a preset-based config file
    student = ModelConfig.from_dict(_student_config("tiny", ModelConfig.from_name("tiny"),
                                                    {"d_model": 128, "n_heads": 8}))
    assert (student.n_kv_heads, student.d_ff) == (8, 512)


def test_preset_config_file_derives(tmp_path):
    path = tmp_path / "target.json"
    path.write_text(json.dumps({"preset": "tiny", "n_layers": 4, "d_model": 128, "n_heads": 8}))
    cfg = ModelConfig.from_file(path)
    assert (cfg.n_kv_heads, cfg.d_ff) == (8, 512)


def test_train_without_out_keeps_the_run(tmp_path, monkeypatch, caplog):
    """No --out: the run goes to runs/<preset>-<time>, said on stderr; the resolved model (derived fields, params,
    FLOPs/token) is logged before the first step; --set schedule=linear is the LR schedule."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="morphlm")
    res = cli("train", "--preset", "tiny", "--d-model", 128, "--n-heads", 8, "--corpus", "stdlib", "--max-bytes",
              100_000, "--seq-len", 32, "--batch-size", 4, "--max-steps", 1, "--no-progress", "--set",
              "schedule=linear", "--json")
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny-")
    assert f"no --out given: writing this run to runs/{runs[0].name}" in flat(res.output)
    assert json.loads(res.stdout.strip().splitlines()[-1])["out_dir"] == f"runs/{runs[0].name}"
    config = json.loads((runs[0] / "config.json").read_text())
    assert (config["n_kv_heads"], config["d_ff"]) == (8, 512)
    trainer = json.loads((runs[0] / "state" / "trainer.json").read_text())
    assert trainer["args"]["schedule"] == "linear"
    line = next(r.getMessage() for r in caplog.records if "FLOPs/token" in r.getMessage())
    assert "n_kv_heads 8" in line and "d_ff 512" in line and "parameters" in line


def test_resume_without_out_is_refused():
    assert "--resume auto continues the run in --out" in flat(cli("train", "--resume", "auto", code=2).output)


def test_nullable_settings_take_none(monkeypatch):
    """--max-bytes none (no cap) reaches build_spec as an explicit none, not as 'not given'."""
    import morphlm.train.run as run

    seen = {}

    def fake_build_spec(preset, recipe, overrides):
        seen.update(overrides)
        raise SystemExit(0)

    monkeypatch.setattr(run, "build_spec", fake_build_spec)
    cli("train", "--max-bytes", "none", "--set", "n_kv_heads=null", "--schedule-steps", 5)
    assert seen["schedule_steps"] == 5
    spec = run.DataSpec(**{"max_bytes": run.parse_value(seen["max_bytes"], 1, "max_bytes")})
    assert spec.max_bytes is None and run.parse_value(seen["n_kv_heads"], 1, "n_kv_heads") is None
    assert "not an integer" in flat(cli("train", "--max-bytes", "x", code=2).output)
