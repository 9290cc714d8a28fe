"""Hard-Mode transform and answer discovery (morphlm/reason/hardmode.py, leanexpr.py, discover.py): the Lean 3
parser's precedences and Lean's arithmetic, the placeholder-only rewrite (DAP's spurious-proof pitfall), the SymPy
discoverer's three methods and its abstentions, grading (recovered / wrong / gold_false), substitute-and-check, and
the LM single-shot and loop against scripted fake chat models."""

from __future__ import annotations

import json

import pytest
import sympy as sp

from morphlm.reason.discover import (build_problem, check_answer, discover_sympy, discovery_loop, parse_last_number,
                                     single_shot, to_lean)
from morphlm.reason.formal import parse_header
from morphlm.reason.hardmode import SpuriousRewriteError, check_rewrite, split_equation, to_hard_mode
from morphlm.reason.leaneval import Env, Evaluator
from morphlm.reason.leanexpr import LeanSyntaxError, Unsafe, parse

from clihelp import cli

M478 = """theorem mathd_algebra_478
  (b h v : ℝ)
  (h₀ : 0 < b ∧ 0 < h ∧ 0 < v)
  (h₁ : v = 1 / 3 * (b * h))
  (h₂ : b = 30)
  (h₃ : h = 13 / 2) :
  v = 65"""


def problem(text):
    return build_problem(parse_header(text))


def value(text, t=None, **types):
    return Evaluator(Env(types=types)).value(parse(text), t)


# ---------------------------------------------------------------------------------------- parser and semantics
def test_lean3_precedences():
    # prefix minus binds tighter than ^ in Lean 3 (prefix -:100): -x^2 is (-x)^2
    assert parse("-x^2") == ("bin", "^", ("neg", ("var", "x")), ("num", "2"))
    # big operators parse their body at 67: `+` ends it, `%` / `*` do not
    assert parse("∑ k in finset.range 3, k + 1")[0] == "bin"
    assert parse("∑ k in finset.range 3, k % 2")[0] == "big"
    # application binds tighter than every infix; ^ is right-associative
    assert parse("f x + 1") == ("bin", "+", ("app", ("var", "f"), [("var", "x")]), ("num", "1"))
    assert parse("2^3^2") == ("bin", "^", ("num", "2"), ("bin", "^", ("num", "3"), ("num", "2")))
    assert parse("(nat.digits 10 n).sum")[0] == "field" and parse("x.denom") == ("field", ("var", "x"), "denom")
    assert parse("(x : ℝ)") == ("asc", ("var", "x"), "ℝ")
    with pytest.raises(LeanSyntaxError, match="unsupported character"):
        parse("a ⊂ b")


def test_lean_arithmetic_semantics():
    assert value("7 - 10") == 0  # ℕ subtraction truncates
    assert value("(7 - 10 : ℤ)") == -3
    assert value("7 / 2") == 3 and value("(7 / 2 : ℝ)") == sp.Rational(7, 2)  # ℕ division floors
    assert value("(5 / 0 : ℝ)") == 0 and value("(0 : ℝ)⁻¹") == 0  # Lean's total division
    assert value("(-7 : ℤ) % 3") == 2  # ℤ % is non-negative
    assert value("real.sqrt (-4)") == 0 and value("real.sqrt 9") == 3
    assert value("(5^999999) % 7") == 6  # modular power without the huge number
    assert value("(∑ x in finset.range 10, ((x + 1)^2)) % 10") == 5
    assert value("finset.card (finset.filter (λ x, 20∣x) (finset.Icc 15 85))") == 4
    assert value("(nat.digits 10 123).sum") == 6 and value("10!") == 3628800
    ev = Evaluator(Env(types={"x": "int"}, values={"x": sp.Integer(3)}))
    assert ev.value(parse("-x^2")) == 9  # (-x)^2
    with pytest.raises(Unsafe, match="truncated subtraction"):
        Evaluator(Env(types={"n": "nat"}, values={"n": sp.Symbol("n")})).value(parse("2 - n"))
    # the expected type wins over the leaves' (Lean 3 elaborates with it and coerces ↑x)
    ev = Evaluator(Env(types={"x": "nat"}, values={"x": sp.Integer(7)}))
    assert ev.value(parse("(x / 2 : ℝ)")) == sp.Rational(7, 2) and ev.value(parse("x / 2")) == 3


# ---------------------------------------------------------------------------------------- Hard Mode
def test_hard_mode_transform_masks_the_constant_and_keeps_a_placeholder():
    hard = to_hard_mode(parse_header(M478))
    assert hard.gold == "65" and hard.answer_type == "ℝ" and hard.placeholder == "mathd_algebra_478_solution"
    assert hard.text.startswith("abbrev mathd_algebra_478_solution : ℝ := sorry\n\ntheorem mathd_algebra_478\n")
    assert "  v = mathd_algebra_478_solution :=\nsorry\n" in hard.text and "65" not in hard.text
    assert "(h₃ : h = 13 / 2)" in hard.text
    easy = hard.fill("65")
    assert "abbrev mathd_algebra_478_solution : ℝ := 65\n" in easy and easy.count("sorry") == 1
    # answer types: ascription, ℕ default for numerals, a function's codomain
    assert to_hard_mode(parse_header("theorem t :\n (29^13 - 5^13) % 7 = 3")).answer_type == "ℕ"
    assert to_hard_mode(parse_header("theorem t (n : ℕ) :\n ↑n - 1 = (658:ℤ)")).answer_type == "ℤ"
    assert to_hard_mode(parse_header("theorem t (f : ℝ → ℝ) :\n f 1 = 9")).answer_type == "ℝ"
    # not answer-style: conjunctions, inequalities, quantifiers, symbolic right-hand sides
    for concl in ("s = 1 ∧ t = 4", "x ≤ 3", "∀ n, f n = n", "a = b", "x = real.sqrt 5", "¬ x = 2"):
        assert to_hard_mode(parse_header(f"theorem t (x s t a b : ℝ) :\n {concl}")) is None, concl
    assert split_equation("(a, b) = (1, 2)") is not None and split_equation("x ≠ 2") is None


def test_rewrite_may_touch_only_the_placeholder():
    hard = to_hard_mode(parse_header(M478))
    assert check_rewrite(hard, hard.fill("65")) == "65"
    assert check_rewrite(hard, hard.fill("130 / 2")) == "130 / 2"
    # DAP's spurious proofs: every edit outside the placeholder's body is refused
    spurious = {
        "edited hypothesis": hard.fill("65").replace("(h₂ : b = 30)", "(h₂ : b = 0)"),
        "edited goal": hard.fill("65").replace("v = mathd_algebra_478_solution", "v = v"),
        "added hypothesis": hard.fill("65").replace("(h₃ : h = 13 / 2)", "(h₃ : h = 13 / 2)\n  (hf : false)"),
        "proof filled": hard.fill("65").replace(":=\nsorry", ":=\nby simp [*]"),
        "answer type": hard.fill("65").replace(": ℝ :=", ": ℕ :="),
    }
    for what, text in spurious.items():
        with pytest.raises(SpuriousRewriteError, match="changed more than the answer placeholder"):
            check_rewrite(hard, text)
    for body, why in (("sorry", "contains 'sorry'"), ("", "empty"), ("(1 + 2", "unbalanced"),
                      ("1\n  (h : false)", "several lines"), ("mathd_algebra_478_solution", "contains")):
        text = hard.text.replace(" := sorry\n\ntheorem", f" := {body}\n\ntheorem", 1)
        with pytest.raises(SpuriousRewriteError, match=why):
            check_rewrite(hard, text)
    with pytest.raises(SpuriousRewriteError, match="contains 'sorry'"):
        hard.fill("sorry")


# ---------------------------------------------------------------------------------------- the SymPy discoverer
def test_discoverer_methods_on_hand_made_statements():
    d = discover_sympy(problem(M478))
    assert (d.status, d.method, d.answer) == ("recovered", "solve", 65)
    d = discover_sympy(problem("theorem t (f : ℝ → ℝ) (h₀ : ∀ x, f x = 5 * x + 4) :\n f (f 1) = 49"))
    assert (d.status, d.method, d.answer) == ("recovered", "compute", 49)
    d = discover_sympy(problem("theorem t (n : ℕ) (h₀ : n ≤ 9) (h₁ : 18∣374 * 10 + n) :\n n = 4"))
    assert (d.status, d.method, d.answer) == ("recovered", "enumerate", 4)
    # ℕ subtraction truncates: n = 5, so 2 - n = 0 in Lean (a field would say -3)
    d = discover_sympy(problem("theorem t (n : ℕ) (h₀ : n ≤ 10) (h₁ : n + 3 = 8) :\n 2 - n = 0"))
    assert (d.status, d.method, d.answer) == ("recovered", "enumerate", 0)
    # Lean's 1 / 0 = 0: the only solution of `1 / x = 0` is x = 0, a field has none
    d = discover_sympy(problem("theorem t (x : ℝ) (h₀ : 1 / x = 0) :\n x + 5 = 5"))
    assert (d.status, d.answer) == ("recovered", 5)
    # a hypothesis ruling out the denominator's zero leaves the field's solution
    d = discover_sympy(problem("theorem t (x : ℝ) (h₀ : x ≠ -1) (h₁ : (x - 9) / (x + 1) = 2) :\n x = -11"))
    assert (d.status, d.answer) == ("recovered", -11)
    # types filter solutions: x ∈ ℕ with x^2 = 4 is 2 only
    assert discover_sympy(problem("theorem t (x : ℕ) (h : x^2 = 4) :\n x + 1 = 3")).answer == 3


def test_lean_branches_of_sqrt_rpow_and_division():
    # Lean's sqrt x = 0 for every x <= 0: `real.sqrt x = 0` does not force x = 0 (a field-minded solver would say 1)
    assert discover_sympy(problem("theorem t (x : ℝ) (h : real.sqrt x = 0) :\n x + 1 = 1")).status == "abstain"
    d = discover_sympy(problem("theorem t (y : ℝ) (h₀ : 0 ≤ 19 + 3 * y) (h₁ : real.sqrt (19 + 3 * y) = 7) :\n y = 10"))
    assert (d.status, d.answer) == ("recovered", 10)
    # Lean's rpow of a negative base is |r|^(1/3) cos(π/3): r = -64 also satisfies r^(1/3) = 2
    assert discover_sympy(problem("theorem t (r : ℝ) (h : r^((1:ℝ)/3) = 2) :\n r = 8")).status == "abstain"
    assert discover_sympy(problem("theorem t (r : nnreal) (h : r^((1:ℝ)/3) = 2) :\n r = 8")).answer == 8
    # the y = 0 branch is solved again under Lean's 1 / 0 = 0 (x = 4, z = 25/12) and found inconsistent
    d = discover_sympy(problem("theorem t (x y z : ℝ) (h₀ : 0 < x ∧ 0 < y ∧ 0 < z) (h₁ : x + 1/y = 4) "
                               "(h₂ : y + 1/z = 1) (h₃ : z + 1/x = 7/3) :\n x*y*z = 1"))
    assert (d.status, d.answer) == ("recovered", 1)
    # no equation at all: the LHS is constant wherever x ≠ 0, and x = 0 is excluded by a hypothesis
    d = discover_sympy(problem("theorem t (x : ℝ) (h₀ : x ≠ 0) :\n 12 / (x * x) * (x^4 / (14 * x)) * (35 / (3 * x)) = 10"))
    assert (d.status, d.answer) == ("recovered", 10)
    assert discover_sympy(problem("theorem t (x : ℝ) :\n x / x = 1")).status == "abstain"  # x = 0 gives 0


def test_enumeration_bounds_from_equations():
    from morphlm.reason.discover import _bounds

    p = problem("theorem t (m n k : ℕ) (x : ℤ) (h₀ : m * n = 12) (h₁ : n + 2 * k = 9) (h₂ : nat.lcm k 4 = 20) "
                "(h₃ : 3 * x = 6) :\n m + n = 7")
    b = _bounds(p)
    assert b["m"] == [0, 12] and b["n"] == [0, 9] and b["k"] == [0, 9] and b["x"] == [None, None]
    # a product with a zero factor or a non-ℕ equation bounds nothing
    assert _bounds(problem("theorem t (m n : ℕ) (h₀ : 0 * m * n = 0) :\n m = 1"))["m"] == [0, None]
    assert _bounds(problem("theorem t (a : ℤ) (h₀ : a * 2 = 8) :\n a = 4"))["a"] == [None, None]
    d = discover_sympy(problem("theorem t (n : ℕ) (h₀ : 0 < n) (h₁ : nat.gcd n 40 = 10) (h₂ : nat.lcm n 40 = 280) :"
                               "\n n = 70"))
    assert (d.status, d.method, d.answer) == ("recovered", "enumerate", 70)


def test_discoverer_abstains_rather_than_guess():
    # two real solutions with different values
    d = discover_sympy(problem("theorem t (x : ℝ) (h : x^2 = 4) :\n x + 1 = 3"))
    assert d.status == "abstain" and d.answer is None and "several values" in d.reason
    # underdetermined
    assert discover_sympy(problem("theorem t (x y : ℝ) (h : x + y = 4) :\n x = 3")).status == "abstain"
    # transcendental equation: not solved (a solver could miss roots)
    assert discover_sympy(problem("theorem t (x : ℝ) (h : real.cos x = 1 / 2) :\n x = 3")).status == "abstain"
    # an integer unknown no hypothesis bounds, behind ℕ's % (the equation n + 3 = 8 would bound it: n <= 8)
    assert discover_sympy(problem("theorem t (n : ℕ) (h₁ : n % 5 = 3) :\n (2 * n) % 5 = 1")).status == "abstain"
    assert discover_sympy(problem("theorem t (n : ℕ) (h₁ : n + 3 = 8) :\n 2 - n = 0")).answer == 0


def test_grading_recovered_wrong_and_false_gold():
    # x = 2 satisfies every hypothesis exactly and gives 3: the Easy statement `x + 1 = 4` is false
    d = discover_sympy(problem("theorem t (x : ℝ) (h : x = 2) :\n x + 1 = 4"))
    assert d.status == "gold_false" and d.answer == 3 and "counterexample" in d.reason
    # the same with a hypothesis the parser cannot read: no complete witness, so the disagreement counts as wrong
    d = discover_sympy(problem("theorem t (x : ℝ) (h : x = 2) (h₁ : ∥x∥ = 2) :\n x + 1 = 4"))
    assert d.status == "wrong" and d.answer == 3
    assert to_lean(sp.Rational(-7, 2)) == "-(7 / 2)" and to_lean(sp.sqrt(10)) == "real.sqrt 10"


def test_check_answer_is_substitution():
    p = problem(M478)
    assert check_answer(p, sp.Integer(65)) == (True, "the conclusion holds after substitution")
    ok, why = check_answer(p, sp.Integer(64))
    assert ok is False and "larger" in why and "65" not in why
    ok, why = check_answer(p, sp.Integer(70))
    assert ok is False and "smaller" in why
    ok, why = check_answer(problem("theorem t (x : ℝ) (h : x^2 = 4) :\n x + 1 = 3"), sp.Integer(3))
    assert ok is None and "cannot check" in why


@pytest.mark.parametrize("name,status,answer", [
    ("mathd_algebra_478", "recovered", "65"), ("mathd_numbertheory_1124", "recovered", "4"),
    ("mathd_algebra_80", "recovered", "-11"), ("amc12a_2003_p5", "recovered", "14"),
    ("mathd_numbertheory_728", "gold_false", "3"), ("mathd_algebra_332", "gold_false", "361"),
])
def test_discoverer_on_minif2f(shared_data, name, status, answer):
    from morphlm.reason.formal import load_minif2f

    st = next(s for s in load_minif2f("test").statements if s.name == name)
    d = discover_sympy(build_problem(st))
    assert (d.status, d.answer_text) == (status, answer)


# ---------------------------------------------------------------------------------------- LM discovery
def test_parse_last_number():
    assert parse_last_number("12 + 7 = 19. The answer is 19.") == 19
    assert parse_last_number("so -7/2") == sp.Rational(-7, 2) and parse_last_number("x = 2.5") == sp.Rational(5, 2)
    assert parse_last_number("1,000 apples") == 1000 and parse_last_number("no digits") is None


class Scripted:
    """A fake chat model: answers from a list, records what it was sent."""

    def __init__(self, *replies):
        self.replies, self.seen = list(replies), []

    def __call__(self, messages):
        self.seen.append(messages)
        return self.replies.pop(0)


def test_single_shot_and_loop_with_a_scripted_model():
    p = problem(M478)
    r = single_shot(Scripted("I think the answer is 64."), p)
    assert (r.status, r.answer, r.rounds) == ("wrong", 64, 1)
    chat = Scripted("The answer is 64.", "Then it is 65.")
    r = discovery_loop(chat, p, rounds=5)
    assert (r.status, r.answer, r.rounds) == ("recovered", 65, 2)
    feedback = chat.seen[1][-1]["content"]
    assert feedback.startswith("Your answer 64 fails because") and "larger" in feedback and "65" not in feedback
    asked = chat.seen[0][1]["content"]
    assert "Variables: b, h, v: real numbers." in asked and "Facts: 0 < b ∧ 0 < h ∧ 0 < v; v = 1 / 3 * (b * h)" in asked
    assert "Find the value of v (a real number)." in asked and "65" not in asked
    # a reply without a number is answered too; the loop stops after `rounds` proposals
    chat = Scripted("hmm", "60", "61")
    r = discovery_loop(chat, p, rounds=3)
    assert (r.status, r.rounds, r.answer) == ("wrong", 3, 61) and "has no number" in chat.seen[1][-1]["content"]
    assert r.transcript[-1] == {"role": "assistant", "content": "61"}  # no feedback after the last proposal
    r = discovery_loop(Scripted("60", "The answer is N."), p, rounds=2)
    assert (r.status, r.answer) == ("wrong", 60)  # the last proposal with a number stands
    # nothing to check with: the first proposal stands
    r = discovery_loop(Scripted("3", "4"), problem("theorem t (x : ℝ) (h : x^2 = 4) :\n x + 1 = 3"))
    assert r.rounds == 1 and r.answer == 3
    with pytest.raises(ValueError, match="rounds=0"):
        discovery_loop(Scripted(), p, rounds=0)


def test_reason_discover_cli(shared_data):
    res = cli("reason", "discover", "--name", "mathd_algebra_478", "--name", "mathd_numbertheory_728", "--json")
    out = json.loads(res.output)
    assert out["summary"]["recovered"] == 1 and out["summary"]["gold_false"] == 1
    assert [r["answer"] for r in out["results"]] == ["65", "3"]
    res = cli("reason", "discover", "--name", "mathd_algebra_478", "--show-hard")
    assert "abbrev mathd_algebra_478_solution : ℝ := 65" in res.output
    res = cli("reason", "discover", "--name", "no_such_theorem", code=2)
    assert "no theorem named no_such_theorem" in res.output
