"""TRIGO's rule bank (Xiong et al., EMNLP 2023, arXiv 2310.10180, the generator's 85 identity classes) as
SymPy templates over the pattern variables ``X``, ``Y`` and the integer ``n``, plus the algebra helpers.

Each :class:`Rule` is an identity ``lhs = rhs`` usable in both directions. Names are the Lean 3 lemma names
of mathlib / TRIGO's ``trigo_import.lean`` where one exists; the rest (the value rules at 2π/3, 3π/4, 5π/6,
π/12, the power-reduction and half-angle forms) follow the same naming scheme. The bank's membership
follows the paper's generator (28 special values, 20 induction formulas with an integer ``n``, 11 multiple-
angle/power, 7 sum→product, 2 half-angle, 6 product→sum, 6 addition, 2 tan↔sin/cos, 3 Pythagorean = 85);
which exact forms fill the small classes (the third ``cos 2X``, the second tan↔sin/cos) is a
reconstruction from the lemmas TRIGO's data uses.

Helpers (reconstruction of the generator's ``ABC`` field_calc, ``A=X`` constant and ``Abs(X)=±X`` classes):
``ring_nf`` (a subterm → its cancelled rational form, trig calls kept opaque), ``expand`` (multiplied out),
``field_calc`` (a subterm → any algebraically equal expression the action writes, ``OLD ==> NEW``),
``abs_pos`` / ``abs_neg`` (``abs A → ±A``: the numeric guard refuses the wrong sign) and ``sqrt_sq``
(``sqrt(A**2) → abs A``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .trigo_expr import parse_expr


@dataclass(frozen=True)
class Rule:
    """An identity ``lhs = rhs`` over ``X``, ``Y`` (reals) and ``n`` (an integer); ``kind`` is its class."""

    name: str
    lhs_text: str
    rhs_text: str
    kind: str

    @cached_property
    def lhs(self):
        return parse_expr(self.lhs_text)

    @cached_property
    def rhs(self):
        return parse_expr(self.rhs_text)

    @property
    def periodic(self) -> bool:
        """An induction formula: its right side carries the integer ``n`` (the action's ``K``)."""
        return self.kind == "periodic"

    @property
    def lean(self) -> str:
        return f"{self.lhs_text} = {self.rhs_text}"


def _values() -> list[Rule]:
    table = [
        ("sin", "0", "zero", "0"), ("sin", "pi/12", "pi_div_twelve", "-sqrt(2)/4 + sqrt(6)/4"),
        ("sin", "pi/6", "pi_div_six", "1/2"), ("sin", "pi/4", "pi_div_four", "sqrt(2)/2"),
        ("sin", "pi/3", "pi_div_three", "sqrt(3)/2"), ("sin", "pi/2", "pi_div_two", "1"),
        ("sin", "2*pi/3", "two_pi_div_three", "sqrt(3)/2"), ("sin", "3*pi/4", "three_pi_div_four", "sqrt(2)/2"),
        ("sin", "5*pi/6", "five_pi_div_six", "1/2"), ("sin", "pi", "pi", "0"),
        ("cos", "0", "zero", "1"), ("cos", "pi/12", "pi_div_twelve", "sqrt(2)/4 + sqrt(6)/4"),
        ("cos", "pi/6", "pi_div_six", "sqrt(3)/2"), ("cos", "pi/4", "pi_div_four", "sqrt(2)/2"),
        ("cos", "pi/3", "pi_div_three", "1/2"), ("cos", "pi/2", "pi_div_two", "0"),
        ("cos", "2*pi/3", "two_pi_div_three", "-1/2"), ("cos", "3*pi/4", "three_pi_div_four", "-sqrt(2)/2"),
        ("cos", "5*pi/6", "five_pi_div_six", "-sqrt(3)/2"), ("cos", "pi", "pi", "-1"),
        ("tan", "0", "zero", "0"), ("tan", "pi/12", "pi_div_twelve", "2 - sqrt(3)"),
        ("tan", "pi/6", "pi_div_six", "sqrt(3)/3"), ("tan", "pi/4", "pi_div_four", "1"),
        ("tan", "pi/3", "pi_div_three", "sqrt(3)"), ("tan", "2*pi/3", "two_pi_div_three", "-sqrt(3)"),
        ("tan", "3*pi/4", "three_pi_div_four", "-1"), ("tan", "pi", "pi", "0"),
    ]
    return [Rule(f"{f}_{tag}", f"{f}({arg})", val, "value") for f, arg, tag, val in table]


_PERIODIC = [
    ("sin_eq_neg_sin_neg_add_int_mul_two_pi", "sin(X)", "-sin(-X + n*(2*pi))"),
    ("cos_eq_cos_neg_add_int_mul_two_pi", "cos(X)", "cos(-X + n*(2*pi))"),
    ("tan_eq_neg_tan_neg_add_int_mul_pi", "tan(X)", "-tan(-X + n*pi)"),
    ("sin_eq_sin_add_int_mul_two_pi", "sin(X)", "sin(X + n*(2*pi))"),
    ("cos_eq_cos_add_int_mul_two_pi", "cos(X)", "cos(X + n*(2*pi))"),
    ("sin_eq_neg_sin_add_int_mul_two_pi_add_pi", "sin(X)", "-sin(X + n*(2*pi) + pi)"),
    ("cos_eq_neg_cos_add_int_mul_two_pi_add_pi", "cos(X)", "-cos(X + n*(2*pi) + pi)"),
    ("tan_eq_tan_add_int_mul_pi", "tan(X)", "tan(X + n*pi)"),
    ("sin_eq_neg_cos_add_pi_div_two_add_int_mul_two_pi", "sin(X)", "-cos(X + pi/2 + n*(2*pi))"),
    ("sin_eq_cos_neg_add_pi_div_two_add_int_mul_two_pi", "sin(X)", "cos(-X + pi/2 + n*(2*pi))"),
    ("cos_eq_sin_add_pi_div_two_add_int_mul_two_pi", "cos(X)", "sin(X + pi/2 + n*(2*pi))"),
    ("cos_eq_sin_neg_add_pi_div_two_add_int_mul_two_pi", "cos(X)", "sin(-X + pi/2 + n*(2*pi))"),
    ("tan_eq_neg_one_div_tan_add_pi_div_two_add_int_mul_pi", "tan(X)", "-1/tan(X + pi/2 + n*pi)"),
    ("tan_eq_one_div_tan_neg_add_pi_div_two_add_int_mul_pi", "tan(X)", "1/tan(-X + pi/2 + n*pi)"),
    ("sin_eq_sin_neg_add_int_mul_two_pi_add_pi", "sin(X)", "sin(-X + n*(2*pi) + pi)"),
    ("cos_eq_neg_cos_neg_add_int_mul_two_pi_add_pi", "cos(X)", "-cos(-X + n*(2*pi) + pi)"),
    ("sin_eq_cos_add_pi_div_two_add_int_mul_two_pi_add_pi", "sin(X)", "cos(X + pi/2 + n*(2*pi) + pi)"),
    ("cos_eq_neg_sin_add_pi_div_two_add_int_mul_two_pi_add_pi", "cos(X)", "-sin(X + pi/2 + n*(2*pi) + pi)"),
    ("sin_eq_neg_cos_neg_add_pi_div_two_add_int_mul_two_pi_add_pi", "sin(X)", "-cos(-X + pi/2 + n*(2*pi) + pi)"),
    ("cos_eq_neg_sin_neg_add_pi_div_two_add_int_mul_two_pi_add_pi", "cos(X)", "-sin(-X + pi/2 + n*(2*pi) + pi)"),
]

_IDENTITIES = [
    # multiple angle and power reduction (11)
    ("sin_two_mul", "sin(2*X)", "2*sin(X)*cos(X)", "multiple"),
    ("sin_three_mul", "sin(3*X)", "3*sin(X) - 4*sin(X)**3", "multiple"),
    ("cos_two_mul", "cos(2*X)", "2*cos(X)**2 - 1", "multiple"),
    ("cos_two_mul''", "cos(2*X)", "1 - 2*sin(X)**2", "multiple"),
    ("cos_two_mul'", "cos(2*X)", "cos(X)**2 - sin(X)**2", "multiple"),
    ("cos_three_mul", "cos(3*X)", "4*cos(X)**3 - 3*cos(X)", "multiple"),
    ("tan_two_mul", "tan(2*X)", "2*tan(X)/(1 - tan(X)**2)", "multiple"),
    ("sin_sq_eq_half_sub", "sin(X)**2", "1/2 - cos(2*X)/2", "multiple"),
    ("cos_sq", "cos(X)**2", "1/2 + cos(2*X)/2", "multiple"),
    ("cos_eq_sin_two_mul_div", "cos(X)", "sin(2*X)/(2*sin(X))", "multiple"),
    ("sin_eq_sin_two_mul_div", "sin(X)", "sin(2*X)/(2*cos(X))", "multiple"),
    # sum to product (7)
    ("sin_add_sin", "sin(X) + sin(Y)", "2*sin((X + Y)/2)*cos((X - Y)/2)", "sum"),
    ("sin_sub_sin", "sin(X) - sin(Y)", "2*sin((X - Y)/2)*cos((X + Y)/2)", "sum"),
    ("cos_add_cos", "cos(X) + cos(Y)", "2*cos((X + Y)/2)*cos((X - Y)/2)", "sum"),
    ("cos_sub_cos", "cos(X) - cos(Y)", "-2*sin((X + Y)/2)*sin((X - Y)/2)", "sum"),
    ("tan_add_tan", "tan(X) + tan(Y)", "tan(X + Y)*(1 - tan(X)*tan(Y))", "sum"),
    ("tan_sub_tan", "tan(X) - tan(Y)", "tan(X - Y)*(1 + tan(X)*tan(Y))", "sum"),
    ("tan_sub_tan'", "tan(X) - tan(Y)", "sin(X - Y)/(cos(X)*cos(Y))", "sum"),
    # half angle (2)
    ("tan_div_two", "tan(X/2)", "(1 - cos(X))/sin(X)", "half"),
    ("tan_div_two'", "tan(X/2)", "sin(X)/(1 + cos(X))", "half"),
    # product to sum (6)
    ("sin_mul_sin", "sin(X)*sin(Y)", "cos(X - Y)/2 - cos(X + Y)/2", "product"),
    ("sin_mul_cos", "sin(X)*cos(Y)", "sin(X - Y)/2 + sin(X + Y)/2", "product"),
    ("cos_mul_sin", "cos(X)*sin(Y)", "sin(X + Y)/2 - sin(X - Y)/2", "product"),
    ("cos_mul_cos", "cos(X)*cos(Y)", "cos(X - Y)/2 + cos(X + Y)/2", "product"),
    ("tan_mul_tan", "tan(X)*tan(Y)", "(tan(X) - tan(Y))/tan(X - Y) - 1", "product"),
    ("tan_mul_tan'", "tan(X)*tan(Y)", "-(tan(X) + tan(Y))/tan(X + Y) + 1", "product"),
    # addition formulas (6)
    ("sin_add", "sin(X + Y)", "sin(X)*cos(Y) + cos(X)*sin(Y)", "addition"),
    ("sin_sub", "sin(X - Y)", "sin(X)*cos(Y) - cos(X)*sin(Y)", "addition"),
    ("cos_add", "cos(X + Y)", "cos(X)*cos(Y) - sin(X)*sin(Y)", "addition"),
    ("cos_sub", "cos(X - Y)", "cos(X)*cos(Y) + sin(X)*sin(Y)", "addition"),
    ("tan_add", "tan(X + Y)", "(tan(X) + tan(Y))/(1 - tan(X)*tan(Y))", "addition"),
    ("tan_sub", "tan(X - Y)", "(tan(X) - tan(Y))/(1 + tan(X)*tan(Y))", "addition"),
    # tan <-> sin / cos (2)
    ("tan_eq_sin_div_cos", "tan(X)", "sin(X)/cos(X)", "tan"),
    ("one_div_tan_eq_cos_div_sin", "1/tan(X)", "cos(X)/sin(X)", "tan"),
    # Pythagorean (3)
    ("sin_sq_add_cos_sq", "sin(X)**2 + cos(X)**2", "1", "pythagoras"),
    ("sin_sq", "sin(X)**2", "1 - cos(X)**2", "pythagoras"),
    ("cos_sq'", "cos(X)**2", "1 - sin(X)**2", "pythagoras"),
]

RULES: list[Rule] = (_values() + [Rule(n, a, b, "periodic") for n, a, b in _PERIODIC]
                     + [Rule(n, a, b, k) for n, a, b, k in _IDENTITIES])
BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}

HELPERS = ("ring_nf", "expand", "field_calc", "abs_pos", "abs_neg", "sqrt_sq")
HELPER_DOC = {
    "ring_nf": "the subterm in cancelled rational form (trig calls opaque), Lean's field_simp/ring_nf",
    "expand": "the subterm multiplied out, Lean's ring_exp",
    "field_calc": "OLD ==> NEW: the subterm replaced by any NEW equal to it as a rational function of opaque trig "
                  "calls (the action writes NEW; never listed by Gym.actions)",
    "abs_pos": "abs(A) → A (valid when A ≥ 0; the numeric guard refuses it otherwise)",
    "abs_neg": "abs(A) → -A (valid when A ≤ 0)",
    "sqrt_sq": "sqrt(A**2) → abs(A)",
}
# the ten tan-heavy rules TRIGO's generator never uses as the first (seed) rule
FIRST_RULE_BANNED = frozenset({"tan_add_tan", "tan_sub_tan", "tan_sub_tan'", "tan_mul_tan", "tan_mul_tan'",
                               "tan_div_two", "tan_div_two'", "tan_two_mul", "tan_add", "tan_sub"})
