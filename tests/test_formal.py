"""Formal statement sets (morphlm/reason/formal.py): the Lean 3 header parser, the miniF2F and FIMO loaders and
their statistics, and malformed statements named by file and line (skipped with a count, refused under strict)."""

from __future__ import annotations

import json

import pytest

from morphlm.reason import formal
from morphlm.reason.formal import FormalParseError, parse_header, parse_lean_file

from clihelp import cli

LEAN = """import minif2f_import

theorem good_one
  (b h : ℝ)
  (f : ℕ → ℝ)
  (h₀ : 0 < b ∧ 0 < h)
  -- a comment line inside the binders
  (h₁ : b = 30) :
  b * h = 65 :=
begin
  sorry
end

theorem no_end
  (x : ℕ) :
  x = 3

theorem unbalanced
  (x : ℕ
  (h : x = 2) :
  x = 2 :=
sorry

theorem no_colon
  (n = 3) :
  n = 3 :=
sorry

lemma helper (n : ℕ) : n = n := rfl
"""


def test_header_parser_splits_binders_into_variables_and_hypotheses():
    st = parse_header("theorem t (a b : ℝ) (f : ℕ → ℝ) {S : finset ℕ} [fact (1 < 2)] (h₀ : a = f 2 ∧ b ≠ 0) :\n"
                      "  a  +  b = 3")
    assert st.name == "t" and st.conclusion == "a + b = 3"
    assert [(b.name, b.kind) for b in st.binders] == [("a", "var"), ("b", "var"), ("f", "var"), ("S", "var"),
                                                      ("_inst", "hyp"), ("h₀", "hyp")]
    assert st.binders[0].type == "ℝ" and st.hypotheses[-1].type == "a = f 2 ∧ b ≠ 0"
    with pytest.raises(FormalParseError, match=r"<text>:1: t: expected `:` and the conclusion"):
        parse_header("theorem t (a : ℝ)")
    with pytest.raises(FormalParseError, match="unbalanced"):
        parse_header("theorem t (a : ℝ : a = 1")


def test_malformed_statements_are_skipped_with_file_and_line_or_refused_under_strict(tmp_path):
    path = tmp_path / "bad.lean"
    path.write_text(LEAN)
    st, skipped = parse_lean_file(path)
    assert [s.name for s in st] == ["good_one"]  # the helper `lemma` is not a statement of the set
    assert st[0].line == 3 and st[0].conclusion == "b * h = 65"
    assert [b.name for b in st[0].hypotheses] == ["h₀", "h₁"]  # the `--` comment is dropped
    assert len(skipped) == 3
    assert skipped[0].startswith(f"{path}:14: no_end") and "no `:=`" in skipped[0]
    assert skipped[1].startswith(f"{path}:18: unbalanced")
    assert skipped[2].startswith(f"{path}:24: no_colon") and "has no `:`" in skipped[2]
    with pytest.raises(FormalParseError, match=r"bad\.lean:14: no_end"):
        parse_lean_file(path, strict=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_lean_file(tmp_path / "missing.lean")


def test_minif2f_loaders_and_statistics(shared_data):
    test = formal.load_minif2f("test")
    valid = formal.load_minif2f("valid")
    assert len(test) == 244 and test.skipped == []
    # valid.lean's mathd_algebra_247 has a binder `(n = 3)` that is not a Lean binder: skipped, named, counted
    assert len(valid) == 243 and len(valid.skipped) == 1 and "valid.lean:2305: mathd_algebra_247" in valid.skipped[0]
    with pytest.raises(FormalParseError, match="valid.lean:2305"):
        formal.load_minif2f("valid", strict=True)
    s = formal.statistics(test)
    assert s["statements"] == 244 and sum(s["by_source"].values()) == 244
    assert s["by_source"] == {"aime": 15, "algebra": 18, "amc": 45, "imo": 20, "induction": 8, "mathd": 130,
                              "numbertheory": 8}
    assert s["answer_style"] == 150 and sum(s["answer_style_by_source"].values()) == 150
    assert formal.statistics(valid)["answer_style"] == 146
    first = test.statements[0]
    assert first.name == "mathd_algebra_478" and first.source == "mathd" and first.conclusion == "v = 65"
    with pytest.raises(ValueError, match="test` and `valid"):
        formal.load_minif2f("train")


def test_fimo_loader_joins_the_informal_records(shared_data):
    fs = formal.load_fimo()
    assert len(fs) == 149 and len(fs.informal) == 245 and fs.skipped == []
    s = formal.statistics(fs)
    assert s["by_source"] == {"algebra": 89, "number_theory": 60}
    assert s["formalized_with_informal"] == sum(1 for x in fs.statements if x.informal is not None) > 140
    p1 = next(x for x in fs.statements if x.name == "fimo_2006_algebra_p1")
    assert p1.informal["problem_name"] == "fimo_2006_algebra_p1" and p1.informal["informal_proof"]


def test_fimo_bad_json_is_skipped_and_named(tmp_path):
    (tmp_path / "lean").mkdir()
    (tmp_path / "informal").mkdir()
    (tmp_path / "lean" / "fimo.lean").write_text("theorem fimo_2006_algebra_p9\n  (x : ℝ) :\n  x = x :=\nsorry\n")
    (tmp_path / "informal" / "fimo_2006_algebra_p9.json").write_text(json.dumps(
        {"problem_name": "fimo_2006_algebra_p9", "informal_statement": "s", "informal_proof": "p"}))
    (tmp_path / "informal" / "broken.json").write_text('{"problem_name": ')
    (tmp_path / "informal" / "keys.json").write_text('{"name": 1}')
    fs = formal.load_fimo(tmp_path)
    assert len(fs) == 1 and fs.statements[0].informal["informal_proof"] == "p"
    assert len(fs.skipped) == 2 and any("broken.json:1: invalid JSON" in s for s in fs.skipped)
    assert any("keys.json:1: expected an object" in s for s in fs.skipped)
    with pytest.raises(FormalParseError, match="broken.json"):
        formal.load_fimo(tmp_path, strict=True)
    with pytest.raises(FileNotFoundError, match="lean/fimo.lean"):
        formal.load_fimo(tmp_path / "nowhere")


def test_formal_stats_cli(tmp_path):
    path = tmp_path / "bad.lean"
    path.write_text(LEAN)
    res = cli("reason", "formal-stats", str(path), "--json")
    out = json.loads(res.output)[str(path)]
    assert out["statements"] == 1 and out["skipped"] == 3 and out["answer_style"] == 1
    res = cli("reason", "formal-stats", str(path), "--strict", code=2)
    assert "bad.lean:14: no_end" in res.output
    res = cli("reason", "formal-stats", "nonsense-set", code=2)
    assert "unknown statement set" in res.output
