"""The surgery layer below grow/ and compress/: one LayerMap convention (0-based from-layer per to-layer) parsed
by one parser on every path, errors in the caller's words, LightMBERT's init as extraction, and a layering with
no distill ↔ lightmbert cycle."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morphlm.compress import CompressionError
from morphlm.compress.distill_loss import DistillConfig, DistillLoss, attention_mse, teacher_layer_map
from morphlm.compress.extract import choose_units, extract, resolve_layers
from morphlm.compress.lightmbert import init_from_teacher
from morphlm.grow import GrowthError, build_plan, grow_model
from morphlm.grow.plans import resolve_layer_map
from morphlm.model import ModelConfig, TransformerLM
from morphlm.surgery import LayerMap, SurgeryError, parse_layer_map

ROOT = Path(__file__).resolve().parents[1]


def model(preset="tiny-bert", seed=0, **over):
    """A model whose weights look trained (norm gains/biases away from 1/0)."""
    torch.manual_seed(seed)
    m = TransformerLM(ModelConfig.from_name(preset, **over))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return m.eval()


# ---------------------------------------------------------------------------- one convention
def test_grow_extract_and_distill_parse_one_user_string_to_one_layer_map():
    cfg = ModelConfig.from_name("tiny-bert", n_layers=3)
    want = LayerMap((2, 0, 0), n_from=3)
    grown = build_plan(cfg, cfg, depth="2,0,0")[1].layer_map
    extracted = choose_units(cfg, cfg, "leading", layers="2,0,0").layers
    distilled = DistillLoss(model(n_layers=3), cfg, DistillConfig(layer_map="2,0,0")).layer_map
    assert resolve_layer_map("2,0,0", 3, 3) == resolve_layers("2,0,0", 3, 3) == teacher_layer_map("2,0,0", 3, 3) == want
    assert isinstance(distilled, LayerMap) and distilled == want
    assert DistillConfig(layer_map=want).to_dict()["layer_map"] == [2, 0, 0]  # JSON-ready in lineage
    assert grown == extracted == [2, 0, 0]
    # the same list form and the named map shared by extraction and distillation
    assert resolve_layers([2, 0, 0], 3, 3) == teacher_layer_map((2, 0, 0), 3, 3) == resolve_layer_map([2, 0, 0], 3, 3)
    assert resolve_layers("uniform", 12, 4) == teacher_layer_map("uniform", 12, 4) == [2, 5, 8, 11]


def test_the_same_string_pairs_the_same_layers_in_grow_extract_and_distill():
    """'1,0' means: new layer 0 ← old layer 1, new layer 1 ← old layer 0 — in every verb."""
    src = model(n_layers=2, seed=1)
    s = src.state_dict()
    grown = grow_model(src, src.config, method="fpi", depth="1,0").model.state_dict()
    extracted = extract(src, src.config, method="leading", layers="1,0").model.state_dict()
    for out in (grown, extracted):
        for new, old in ((0, 1), (1, 0)):
            assert torch.equal(out[f"blocks.{new}.attn.qkv.weight"], s[f"blocks.{old}.attn.qkv.weight"])
    # distillation: student block 0 is matched to teacher block 1 and block 1 to block 0
    student = model(n_layers=2, seed=2)
    batch = {"input_ids": torch.randint(7, 512, (2, 8))}
    loss_fn = DistillLoss(src, student.config, DistillConfig(stage="general", layer_map="1,0", emb_weight=0,
                                                             hid_weight=0, att_loss="mse"))
    _, metrics = loss_fn(student, batch)
    s_att = student(**batch, output_attentions=True).attentions
    t_att = src(**batch, output_attentions=True).attentions
    want = attention_mse(s_att[0], t_att[1]) + attention_mse(s_att[1], t_att[0])
    assert metrics["loss_att"].item() == pytest.approx(want.item(), rel=1e-6)
    # '-' leaves a student block unsupervised
    _, metrics = DistillLoss(src, student.config, DistillConfig(stage="general", layer_map="-,0", emb_weight=0,
                                                                hid_weight=0, att_loss="mse"))(student, batch)
    assert metrics["loss_att"].item() == pytest.approx(attention_mse(s_att[1], t_att[0]).item(), rel=1e-6)


def test_parser_forms_and_its_errors_speak_the_callers_words():
    lm = parse_layer_map("0, 2,-", 3, 3, allow_gaps=True)
    assert lm == LayerMap((0, 2, None), 3) and lm.to_string() == "0,2,-" and lm.to_list() == [0, 2, None]
    assert lm.has_gaps and lm.n_to == 3 and parse_layer_map(lm, 3, 3, allow_gaps=True) == lm
    assert parse_layer_map(None, 2, 4, default="stack") == [0, 1, 0, 1]
    assert parse_layer_map("interpolate", 2, 4) == [0, 0, 1, 1]
    assert LayerMap((0, 1), 2) != LayerMap((0, 1), 3)  # a map is over a model of a given depth
    with pytest.raises(SurgeryError, match="leaves target layers without a source layer"):
        parse_layer_map("0,-", 2, 2)
    with pytest.raises(SurgeryError, match="non-integer"):
        parse_layer_map([0, 1.5], 2, 2)
    # extraction: teacher/student and CompressionError (a SurgeryError), never growth's source/target
    with pytest.raises(CompressionError) as err:
        resolve_layers([0, 9], 6, 2)
    assert "the teacher has layers 0..5" in str(err.value)
    assert not re.search(r"growth|source|target", str(err.value))
    with pytest.raises(CompressionError, match="uniform, bottom, top") as err:
        resolve_layers("stack", 6, 2)
    assert not re.search(r"growth|source|target", str(err.value))
    with pytest.raises(CompressionError) as err:
        extract(model(n_layers=3), ModelConfig.from_name("tiny-bert", n_layers=2), layers="0,7")
    assert "teacher" in str(err.value) and not re.search(r"growth|source|target", str(err.value))
    # distillation likewise; growth keeps its own words
    with pytest.raises(CompressionError) as err:
        teacher_layer_map("0,5", 2, 2)
    assert "teacher" in str(err.value) and not re.search(r"growth|source|target", str(err.value))
    with pytest.raises(GrowthError, match="names source layers"):
        resolve_layer_map("0,5", 2, 2)
    assert issubclass(GrowthError, SurgeryError) and issubclass(CompressionError, SurgeryError)
    assert issubclass(SurgeryError, ValueError)


# ---------------------------------------------------------------------------- LightMBERT init = extraction
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _init_before(teacher, student_cfg, lm_1based, seed):
    """LightMBERT's init_from_teacher as it was before it went through extraction (the reference)."""
    torch.manual_seed(seed)
    student = TransformerLM(student_cfg)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    new_state = {}
    for key, value in s_state.items():
        m = _BLOCK.match(key)
        src = f"blocks.{lm_1based[int(m.group(1))] - 1}.{m.group(2)}" if m else key
        tv = t_state.get(src)
        if tv is None:
            continue
        if tv.shape == value.shape:
            new_state[key] = tv.detach().clone()
        elif key == "pos_emb.weight" and tv.shape[1] == value.shape[1] and tv.shape[0] >= value.shape[0]:
            new_state[key] = tv[: value.shape[0]].detach().clone()
    student.load_state_dict(new_state, strict=False)
    return student


@pytest.mark.parametrize("t_over, s_over, new_map, old_map", [
    (dict(n_layers=4), dict(n_layers=2), "uniform", [2, 4]),
    (dict(n_layers=4), dict(n_layers=2), "top", [3, 4]),
    (dict(n_layers=4), dict(n_layers=3), "3,0,0", [4, 1, 1]),
    (dict(n_layers=4), dict(n_layers=2, head="cls", n_classes=3), "bottom", [1, 2]),  # a new classifier head
    (dict(n_layers=3, head="cls", n_classes=3), dict(n_layers=2, head="cls", n_classes=2, max_seq_len=32),
     "uniform", [1, 3]),  # another class count (fresh classifier), shorter positions, copied pooler
    (dict(n_layers=2, tie_embeddings=False, head="mlm"), dict(n_layers=2, max_seq_len=16), "1,0", [2, 1]),
])
def test_init_from_teacher_is_bit_identical_to_the_copy_it_replaced(t_over, s_over, new_map, old_map):
    teacher = model(seed=3, **t_over)
    s_cfg = teacher.config.replace(**s_over)
    new = init_from_teacher(teacher, s_cfg, new_map, seed=5)
    after_new = torch.rand(3)
    old = _init_before(teacher, s_cfg, old_map, seed=5)
    after_old = torch.rand(3)
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(after_new, after_old)  # the global RNG is left where the old code left it


def test_init_from_teacher_refuses_gaps_and_deeper_students():
    teacher = model(n_layers=2)
    with pytest.raises(CompressionError, match="without a teacher block"):
        init_from_teacher(teacher, teacher.config, "-,1")
    with pytest.raises(CompressionError, match="no deeper than the teacher"):
        init_from_teacher(teacher, teacher.config.replace(n_layers=3), "0,1,1")


# ---------------------------------------------------------------------------- layering
def _imports(path: Path, module: str) -> set[str]:
    """Every morphlm module ``path`` imports (module level and inside functions), relative ones resolved."""
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("morphlm"))
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if name.startswith("morphlm"):
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)
    return out


def _modules(packages) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for p in sorted((ROOT / "morphlm" / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            mods[".".join(rel.parts[:-1] if p.name == "__init__.py" else rel.parts)] = p
    return mods


def _graph(packages):
    mods = _modules(packages)
    return {m: {d for d in _imports(p, m) if d in mods and d != m} for m, p in mods.items()}


def _cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_surgery_and_compress_have_no_import_cycles_and_import_only_downward():
    graph = _graph(["surgery", "compress"])
    for m in graph:  # a submodule importing its own package's re-exports is not the cycle this is about
        graph[m] -= {pkg for pkg in ("morphlm.compress", "morphlm.compress.nas") if m.startswith(pkg + ".")}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    # surgery sits below grow/ and compress/; compress does not reach into grow
    for m, p in _modules(["surgery"]).items():
        bad = {d for d in _imports(p, m) if d.startswith(("morphlm.grow", "morphlm.compress", "morphlm.bench",
                                                         "morphlm.train", "morphlm.commands"))}
        assert not bad, f"{m} imports {bad}"
    for m, p in _modules(["compress"]).items():
        assert not {d for d in _imports(p, m) if d.startswith("morphlm.grow")}, m


def test_each_split_module_imports_alone_in_a_fresh_interpreter():
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    for mod in ("morphlm.compress.lightmbert", "morphlm.compress.distill", "morphlm.compress.distill_loss",
                "morphlm.compress.nas"):
        res = subprocess.run([sys.executable, "-c", code, mod], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr
    # (which layer may import which is the import-linter contract's job: importing any module runs the
    # front door morphlm/__init__, which loads every family on purpose so every registry is full)
