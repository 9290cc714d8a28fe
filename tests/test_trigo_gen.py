"""The TG-k generator: seeded and reproducible, valid problems whose gold proofs replay, the file format the
loader reads back, and the CLI (`morphlm reason generate`, `morphlm reason trigo check`)."""

import json

import pytest

from clihelp import cli
from morphlm.reason.trigo_data import load_trigo
from morphlm.reason.trigo_expr import numerically_equal
from morphlm.reason.trigo_gen import GeneratorError, generate, write_problems
from morphlm.reason.trigo_expr import TrigoError
from morphlm.reason.trigo_gym import (Action, Gym, Proof, TrigoState, actions_from_trigo_proof, check_statement,
                                      from_lean, to_lean)


@pytest.fixture(scope="module")
def tg2():
    return generate(2, 6, seed=7)


def test_generate_reproducible_and_distinct(tg2):
    again = generate(2, 6, seed=7)
    assert [p.statement.text for p in again] == [p.statement.text for p in tg2]
    assert [[a.to_text() for a in p.actions] for p in again] == [[a.to_text() for a in p.actions] for p in tg2]
    other = generate(2, 6, seed=8)
    assert [p.statement.text for p in other] != [p.statement.text for p in tg2]
    assert len({p.statement.text for p in tg2}) == 6


def test_generated_problems_valid_and_gold_replays(tg2):
    gym = Gym(helpers=False)
    for p in tg2:
        s = p.statement
        assert numerically_equal(s.lhs, s.rhs), s.text
        assert not gym.is_closed(TrigoState.make(s.lhs, s.rhs)) and s.lhs != s.rhs
        assert len(p.actions) == 3  # two undone rewrites, then the seed rule
        closed, states = p.replay(gym)
        assert closed and len(states) == 4
        assert not any(gym.is_closed(st) for st in states[:-1])
        # the Lean export parses back to the same actions
        assert from_lean(to_lean(p, gym)).actions == p.actions


def test_write_and_load_roundtrip(tg2, tmp_path):
    f = write_problems(tg2, tmp_path / "tg2.lean")
    sts = load_trigo(f, strict=True)
    assert [s.name for s in sts] == [p.statement.name for p in tg2]
    for s, p in zip(sts, tg2):
        assert s.gold == [a.to_text() for a in p.actions]
        assert TrigoState.make(s.lhs, s.rhs) == TrigoState.make(p.statement.lhs, p.statement.rhs)
        r = check_statement(s)
        assert r.status in ("equal", "total") and r.gold is True
        assert Proof(s, [Action.from_text(a) for a in s.gold]).replay()[0]


def test_generate_bad_settings():
    with pytest.raises(GeneratorError, match="--rules"):
        generate(0, 3)
    with pytest.raises(GeneratorError, match="--n"):
        generate(1, 0)


def test_cli_generate_and_check(tmp_path):
    out = tmp_path / "tg1.lean"
    res = cli("reason", "generate", "--rules", 1, "--n", 4, "--seed", 3, "--out", out)
    assert "wrote 4 TG-1 problems" in res.output and out.is_file()
    first = out.read_text()
    cli("reason", "generate", "--rules", 1, "--n", 4, "--seed", 3, "--out", out)
    assert out.read_text() == first  # reproducible
    res = cli("reason", "trigo", "check", out)
    assert "4 statements" in res.output and "gold proofs replaying to a closed goal: 4/4" in res.output
    got = json.loads(cli("reason", "trigo", "check", out, "--json").output)
    assert got["statements"] == 4 and got["gold_replayed"] == 4 and got["counts"]["false"] == 0
    assert got["proofs_replayed"] is None
    # the exported Lean proofs themselves replay too
    assert "Lean proofs replaying in the gym: 4/4" in cli("reason", "trigo", "check", out, "--replay-proofs").output
    # a tampered gold proof is reported
    bad = tmp_path / "bad.lean"
    text = first.replace("-- gold: ", "-- gold: sin_two_mul -> lhs : sin(2*x)\n  -- gold: ", 1)
    bad.write_text(text)
    res = cli("reason", "trigo", "check", bad)
    assert "3/4" in res.output and "gold proof fails" in res.output
    # bad input: one clear line, exit 2, nothing written
    res = cli("reason", "generate", "--rules", 0, "--n", 2, "--out", tmp_path / "x.lean", code=2)
    assert "--rules must be at least 1" in res.output and not (tmp_path / "x.lean").exists()
    (tmp_path / "m.lean").write_text("lemma M : sin(x) + 1 :=\n")
    res = cli("reason", "trigo", "check", tmp_path / "m.lean", "--strict", code=2)
    assert "m.lean:1" in res.output
    res = cli("reason", "trigo", "check", tmp_path / "m.lean")
    assert "1 malformed lines skipped" in res.output
    cli("reason", "trigo", "check", tmp_path / "missing.lean", code=2)


def test_trigo_own_tg1_proofs_replay(shared_data):
    """TRIGO's generated Lean proofs of the first 40 TG-1 test lemmas, read block by block, replay in the gym
    (measured on all: TG-1 944/1,000, TG-2 786/1,000; misses hold only through a false `D ≠ 0` hypothesis,
    which the guard refuses, pair a sum-to-product rule's angles the other way round, or need `- -x`)."""
    f = shared_data / "trigo" / "TG-1" / "from_rule_test_data_step1_after_delete.lean"
    if not f.is_file():
        pytest.skip(f"trigo not in {shared_data} (the data folder is $MORPHLM_DATA)")
    gym = Gym(helpers=False)
    ok = 0
    for st in load_trigo(f)[:40]:
        try:
            acts = actions_from_trigo_proof(st, gym)
        except TrigoError:
            continue
        assert Proof(st, acts).replay(gym)[0]
        ok += 1
    assert ok >= 38


class _Picks:
    """A stand-in rng whose choice() returns the named rule / the given angle, in order."""

    def __init__(self, picks):
        self.picks = list(picks)

    def choice(self, seq):
        want = self.picks.pop(0)
        return next(x for x in seq if getattr(x, "name", x) == want)

    def randint(self, a, b):
        return 3


def test_seed_of_an_addition_formula_closes_right_to_left():
    # the gym evaluates angle arithmetic (cos(π/3 - (-π/2)) is cos(5π/6)), so cos_sub cannot split the left side:
    # the seed step is the rule right-to-left on the right side, and it closes the goal
    import sympy as sp

    from morphlm.reason.trigo_gen import _seed

    gym = Gym(helpers=False)
    st, action = _seed(_Picks(["cos_sub", sp.pi / 3, -sp.pi / 2]), gym)
    assert (action.rule, action.reverse, action.side) == ("cos_sub", True, "rhs")
    assert gym.is_closed(gym.step(st, action))
    st, action = _seed(_Picks(["sin_two_mul", sp.pi / 3, sp.pi / 6]), gym)  # a one-angle rule: left-to-right
    assert (action.rule, action.reverse, action.side) == ("sin_two_mul", False, "lhs")
    assert gym.is_closed(gym.step(st, action))
