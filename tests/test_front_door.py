"""The Python front door: `import morphlm` exports the public API, `morphlm.train` is a package, quantize_
dispatches on the config's type, partial grow targets are read against the source, training defaults live
in TrainArgs (CLI, recipe and Python decay the LR identically), and the README's Python example runs."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import morphlm
from morphlm.compress import CompressionError
from morphlm.compress import quantize as qmod
from morphlm.compress.ternary import is_ternarized
from morphlm.model import ModelConfig, TransformerLM
from morphlm.train import checkpoint as ckpt

from clihelp import cli

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))


def tiny(**kw):
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_name("tiny", **kw)).eval()


# ---------------------------------------------------------------------------- exports
def test_front_door_exports_the_verbs_not_modules():
    from morphlm import (DistillConfig, Int8Config, ModelConfig as MC, TernaryConfig, TrainArgs, distill,  # noqa: F401
                         evolutionary_search, extract, fit, grow, layermap_search_run, load_checkpoint,
                         open_checkpoint, quantize_, run_layermap_search, save_checkpoint, train_supernet)

    for fn in (grow, distill, extract, fit, quantize_, open_checkpoint, load_checkpoint, save_checkpoint,
               run_layermap_search, layermap_search_run, train_supernet, evolutionary_search):
        assert callable(fn) and not isinstance(fn, type(morphlm)), fn
    assert grow.__module__ == "morphlm.grow.api"
    assert set(morphlm.__all__) <= set(dir(morphlm))
    # the growth package is still importable by module path
    from morphlm.grow import run_schedule  # noqa: F401


def test_train_is_a_package():
    from morphlm.train import TrainArgs, evaluate, fit, open_checkpoint, parent_record, save_checkpoint  # noqa: F401

    assert Path(sys.modules["morphlm.train"].__file__).name == "__init__.py"


def test_import_is_light_and_order_free():
    code = ("import sys, morphlm.train.checkpoint, morphlm; "
            "heavy = [m for m in ('matplotlib', 'transformers', 'typer') if m in sys.modules]; "
            "assert not heavy, heavy; from morphlm import grow; assert callable(grow)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_train_imports_nothing_from_compress():
    for path in (ROOT / "morphlm" / "train").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                assert "compress" not in name and not name.startswith(("..grow", "..bench", "..interop")), \
                    f"{path.name} imports {name} (train/ sits below compress/ and grow/)"


# ---------------------------------------------------------------------------- quantize_
def test_quantize_ternary_in_place():
    model = tiny(n_layers=1)
    out = morphlm.quantize_(model, morphlm.TernaryConfig(weights="twn"))
    assert out is model and is_ternarized(model)


def test_quantize_int8_in_place_matches_int8_dynamic():
    model = tiny(n_layers=1)
    with torch.no_grad():
        ref = model(IDS).logits
        old = qmod.int8_dynamic(model)(IDS).logits
        out = morphlm.quantize_(model, morphlm.Int8Config())
        got = model(IDS).logits
    qkv = model.blocks[0].attn.qkv
    assert out is model and (type(qkv.weight).__name__ == "Int8Tensor" if qmod.int8_backend() == "torchao"
                             else qkv.__module__.startswith("torch.ao"))
    assert torch.equal(got, old) and (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_quantize_unknown_config_names_the_registered_types():
    with pytest.raises(CompressionError, match=r"no handler for a config of type dict.*Int8Config, TernaryConfig"):
        morphlm.quantize_(tiny(), {"method": "ternary"})


def test_quantize_registry_dispatches_on_declared_type(monkeypatch):
    class HalfConfig:
        pass

    seen = []
    monkeypatch.setitem(qmod.QUANTIZE_HANDLERS, HalfConfig, lambda m, c: seen.append(c) or m.half())
    model = morphlm.quantize_(tiny(), HalfConfig())
    assert len(seen) == 1 and next(model.parameters()).dtype == torch.float16


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    out = tmp_path_factory.mktemp("door") / "src"
    cli("train", "--preset", "tiny", "--n-layers", 1, "--corpus", "stdlib", "--max-bytes", 200000, "--max-steps", 3,
        "--out", out, "--seq-len", 32, "--batch-size", 4)
    return out


def test_quantize_verb_goes_through_quantize_(src, tmp_path, monkeypatch):
    calls = []
    for cfg_type, handler in list(qmod.QUANTIZE_HANDLERS.items()):
        monkeypatch.setitem(qmod.QUANTIZE_HANDLERS, cfg_type,
                            lambda m, c, _h=handler: calls.append(type(c).__name__) or _h(m, c))
    cli("quantize", src, "--method", "int8", "--out", tmp_path / "i8")
    cli("quantize", src, "--method", "ternary", "--weights", "lat", "--out", tmp_path / "t")
    assert calls == ["Int8Config", "TernaryConfig"]
    lineage = json.loads((tmp_path / "t" / "lineage.json").read_text())
    assert lineage["ternary"]["weights"] == "lat" and lineage["parents"] == [ckpt.parent_record(src)]


# ---------------------------------------------------------------------------- partial grow targets
def test_partial_grow_target_is_read_against_the_source():
    from morphlm.grow.api import grow, resolve_target

    src_model = tiny()  # tiny: gelu_tanh; ModelConfig's default activation is gelu
    assert src_model.config.activation == "gelu_tanh" != ModelConfig().activation
    # read against ModelConfig's defaults this failed: "differ in activation ('gelu_tanh' vs 'gelu')"
    grown = grow(src_model, {"n_layers": 4}, method="stack")
    want = {**src_model.config.to_dict(), "n_layers": 4, "name": "custom"}
    assert grown.config.to_dict() == want
    # a dict naming a preset starts from that preset, as a target .json file does; without a source, defaults
    assert grow(src_model, {"preset": "tiny", "n_layers": 3}).config.n_layers == 3
    assert resolve_target({"n_layers": 4}).activation == ModelConfig().activation


def test_grow_checkpoint_partial_target_and_lineage(src, tmp_path):
    from morphlm.grow import grow_checkpoint

    info = grow_checkpoint(src, {"n_layers": 2}, "stack", tmp_path / "g")
    assert ckpt.read_config(tmp_path / "g")[0].n_layers == 2
    lineage = ckpt.read_lineage(tmp_path / "g")
    assert lineage["parents"] == [{"path": str(src.resolve()), "sha256": ckpt.dir_fingerprint(src),
                                   "flops": ckpt.total_flops(src), "fingerprint": ckpt.model_fingerprint(src)}]
    assert lineage["parents"] == [ckpt.parent_record(src)]
    assert info["parent_flops"] == ckpt.total_flops(src) > 0


# ---------------------------------------------------------------------------- training defaults
def _lrs(run: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "lr" in json.loads(line)]


def test_same_run_from_cli_recipe_and_python_decays_the_lr_identically(tmp_path):
    from morphlm.train.run import build_spec, train_run

    settings = {"corpus": "stdlib", "max_bytes": 200000, "seq_len": 32, "batch_size": 4, "n_layers": 1,
                "max_steps": 40, "eval_at_end": False}
    cli("train", "--preset", "tiny", "--corpus", "stdlib", "--max-bytes", 200000, "--seq-len", 32, "--batch-size", 4,
        "--n-layers", 1, "--max-steps", 40, "--eval-at-end", "false", "--out", tmp_path / "cli")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: tiny\n  n_layers: 1\ndata:\n  corpus: stdlib\n  max_bytes: 200000\n"
                      "  seq_len: 32\n  batch_size: 4\ntrain:\n  max_steps: 40\n  eval_at_end: false\n")
    cli("train", "--config", recipe, "--out", tmp_path / "recipe")
    train_run(build_spec("tiny", overrides={**settings, "out_dir": str(tmp_path / "py"), "progress": False}))
    cli_lr, recipe_lr, py_lr = (_lrs(tmp_path / name) for name in ("cli", "recipe", "py"))
    assert len(py_lr) == 40 and cli_lr == recipe_lr == py_lr
    args = morphlm.TrainArgs(max_steps=40)
    assert py_lr[-1] == pytest.approx(morphlm.train.lr_at(39, args))
    assert py_lr[-1] < 0.2 * args.lr  # decayed over the 40 steps, not over a longer hidden horizon


# ---------------------------------------------------------------------------- open_checkpoint / parent_record
def test_open_checkpoint_returns_model_tokenizer_and_record(src):
    model, tok, record = ckpt.open_checkpoint(src, need_tokenizer="the test needs it")
    assert isinstance(model, TransformerLM) and tok.vocab_size <= model.config.vocab_size
    assert record.path == src.resolve() and record.fingerprint == ckpt.dir_fingerprint(src)
    assert record.flops == ckpt.total_flops(src) > 0 and record.config == model.config
    assert record.data_spec["corpus"] == "stdlib" and record.lineage["verb"] == "train"
    assert record.tokenizer_json == (src / "tokenizer.json").read_text()
    assert record.parent("teacher") == ckpt.parent_record(src, "teacher") == {
        "path": str(src.resolve()), "sha256": ckpt.dir_fingerprint(src), "flops": ckpt.total_flops(src),
        "role": "teacher", "fingerprint": ckpt.model_fingerprint(src)}
    assert ckpt.parent_record(src, flops=1.5)["flops"] == 1.5


def test_open_checkpoint_errors(src, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="teacher checkpoint directory .* does not exist"):
        ckpt.open_checkpoint(tmp_path / "nope", role="teacher")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressionError, match="is not a checkpoint directory"):
        ckpt.open_checkpoint(tmp_path / "empty", error=CompressionError)
    model = tiny(n_layers=1)
    ckpt.save_checkpoint(tmp_path / "notok", model.state_dict(), model.config)
    assert ckpt.open_checkpoint(tmp_path / "notok")[1] is None
    with pytest.raises(ckpt.CheckpointError, match=r"has no tokenizer.json; sampling needs it\. Use the directory"):
        ckpt.open_checkpoint(tmp_path / "notok", need_tokenizer="sampling needs it")
    res = cli("eval", tmp_path / "notok", code=2)
    assert "has no tokenizer.json; evaluation needs the tokenizer" in res.output


# ---------------------------------------------------------------------------- README
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "grow(" in code and "fit(" in code and "distill(" in code and "quantize_(" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md#python-api", "exec"), {"__name__": "__readme__"})
