"""The TRIGO prover (morphlm/reason/prover.py) and next-tactic LM (morphlm/reason/tactic.py): pass@k, the search
loop's stops and dedup on a toy environment, each searcher's order, BM25 and the anchors by hand, the pair LM's
batches, training, save/load and sampling, and the policy's training pairs."""

from __future__ import annotations

import math

import pytest
import torch

from morphlm.reason import prover as pv
from morphlm.reason import tactic as tc


# ---------------------------------------------------------------------------- a toy environment
class Toy:
    """States are integers; actions are '+1', '*2', '-1' (and whatever ``extra`` adds); closed at ``target``;
    optionally everything modulo ``mod`` (a finite graph). Records the order states were expanded in."""

    def __init__(self, target: int, mod: int | None = None, extra: tuple = ()):
        self.target, self.mod, self.extra = target, mod, extra
        self.expanded: list[int] = []

    def actions(self, s):
        self.expanded.append(s)
        return ["+1", "*2", "-1", *self.extra]

    def step(self, s, a):
        if a == "+1":
            v = s + 1
        elif a == "*2":
            v = s * 2
        elif a == "-1":
            v = s - 1
        elif a == "+0":
            v = s
        else:
            raise ValueError(f"no such action {a}")
        return v % self.mod if self.mod else v

    def is_closed(self, s):
        return s == self.target

    def state_text(self, s):
        return str(s)

    def action_text(self, a):
        return a

    def parse_action(self, text):
        if text not in ("+1", "*2", "-1", "+0"):
            raise ValueError(text)
        return text


def replay_to(env, start, path):
    s = start
    for a in path:
        s = env.step(s, env.parse_action(a))
    return s


def replay(env, start, proof):
    s = start
    for a in proof:
        s = env.step(s, env.parse_action(a))
    return env.is_closed(s)


# ---------------------------------------------------------------------------- pass@k
def test_pass_at_k_formula():
    assert pv.pass_at_k(8, 0, 1) == 0.0 and pv.pass_at_k(8, 0, 8) == 0.0
    assert pv.pass_at_k(8, 1, 1) == pytest.approx(1 / 8)
    assert pv.pass_at_k(8, 1, 8) == 1.0
    assert pv.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pv.pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    with pytest.raises(pv.ProverError, match="at least 8 attempts"):
        pv.pass_at_k(4, 1, 8)
    with pytest.raises(pv.ProverError, match="0 <= c <= n"):
        pv.pass_at_k(4, 5, 1)


# ---------------------------------------------------------------------------- the search loop
def test_bfs_finds_a_shortest_proof_that_replays():
    env = Toy(6)
    res = pv.bfs(env, 1, seed=3)
    assert res.proved and res.stop == "proved"
    assert len(res.proof) == 3  # 1 -> 2 -> 3 -> 6 is the shortest
    assert replay(env, 1, res.proof)
    # a different seed shuffles the order but BFS stays shortest
    assert len(pv.bfs(Toy(6), 1, seed=11).proof) == 3


def test_closed_start_needs_no_expansion():
    res = pv.bfs(Toy(4), 4)
    assert res.proved and res.proof == [] and res.expansions == 0


def test_budget_stops_report_what_was_spent():
    res = pv.bfs(Toy(10_000), 1, max_expansions=5)
    assert not res.proved and res.stop == "expansions" and res.expansions == 5 and res.proof == []
    assert res.children == 15  # three legal actions per expansion, all applied
    # what it found: the next state it would have expanded and the path to it (BFS: a depth-2 state)
    assert res.frontier is not None and len(res.frontier_path) == 2
    assert str(replay_to(Toy(10_000), 1, res.frontier_path)) == res.frontier
    timed = pv.bfs(Toy(10_000), 1, time_limit=0.0)
    assert not timed.proved and timed.stop == "time"
    with pytest.raises(pv.ProverError, match="max_expansions=0"):
        pv.bfs(Toy(3), 1, max_expansions=0)


def test_visited_states_are_not_expanded_twice():
    # modulo 5 the target 7 never appears: with dedup each of the 5 states is expanded once and the queue runs dry
    env = Toy(7, mod=5, extra=("+0",))
    res = pv.bfs(env, 1, max_expansions=128)
    assert res.stop == "exhausted" and res.expansions == 5
    assert sorted(env.expanded) == [0, 1, 2, 3, 4]


def test_rejected_actions_are_counted_not_fatal():
    env = Toy(3, extra=("bogus",))
    res = pv.bfs(env, 1)
    assert res.proved and res.rejected >= 1


def test_text_size_counts_trig_atoms_then_operations():
    assert pv.text_size("sin x + cos (y) * 2") == (2, 2)
    assert pv.text_size("tan (pi / 3) ** 2 - 1 = cosine") == (1, 3)  # 'cosine' is not an atom; ** counts once


def test_heuristic_expands_the_smallest_state_first():
    env = Toy(10_000)
    size = lambda s: (abs(s - 40), 0)  # noqa: E731  distance to 40 as the "size"
    res = pv.heuristic(env, 1, size=size, max_expansions=30)
    assert 40 in env.expanded  # greedy descent on the size reaches 40 within the budget
    pv.heuristic(Toy(10_000), 1, max_expansions=3)  # the default text size runs on any state text


class FakePolicy:
    """Fixed action log-probabilities; records the contexts it was asked about."""

    def __init__(self, table):
        self.table, self.contexts = table, []

    def sample(self, context, n, temperature=1.0, generator=None):
        self.contexts.append(context)
        return list(self.table)[:n]

    def target_logprobs(self, context, targets):
        self.contexts.append(context)
        table = dict(self.table)
        return [(table.get(t, -50.0), 1) for t in targets]


def test_lm_best_first_follows_cumulative_log_probability():
    # '+1' is likely, '*2' unlikely: from 1 to 5 the likely path is four '+1' (cost 0.4) although '*2' paths are
    # shorter (1 -> 2 -> 4 -> 5 costs 0.1 + 5 + 0.1)
    policy = FakePolicy([("+1", -0.1), ("*2", -5.0), ("nonsense", -0.01)])
    env = Toy(5)
    res = pv.lm_best_first(env, 1, policy, max_expansions=50)
    assert res.proved and res.proof == ["+1", "+1", "+1", "+1"]
    assert res.rejected >= 1  # 'nonsense' does not parse
    assert all(c.startswith(pv.GYM_TAG) for c in policy.contexts)
    # flip the probabilities: the doubling path wins
    res2 = pv.lm_best_first(Toy(8), 1, FakePolicy([("*2", -0.1), ("+1", -5.0)]), max_expansions=50)
    assert res2.proof == ["*2", "*2", "*2"]


def test_lm_rank_mode_samples_among_legal_actions():
    # the policy's free samples are all malformed, but ranked among the gym's legal actions it still steers:
    # '+1' is likely, so the cheap path is four '+1' from 1 to 5; with 1 sample per expansion the search follows it
    policy = FakePolicy([("+1", -0.1), ("*2", -5.0), ("-1", -9.0)])
    free = pv.lm_best_first(Toy(5), 1, FakePolicy([("garbage", -0.1)]), max_expansions=5)
    assert not free.proved and free.stop == "exhausted" and free.rejected == 1
    res = pv.lm_best_first(Toy(5), 1, policy, mode="rank", samples=3, max_expansions=50)
    assert res.proved and res.proof == ["+1", "+1", "+1", "+1"]
    # samples bounds the children per expansion: one child each, drawn from the renormalised distribution
    one = pv.lm_best_first(Toy(5), 1, policy, mode="rank", samples=1, max_expansions=50, seed=1)
    assert one.proved and one.children == len(one.proof)
    with pytest.raises(pv.ProverError, match="policy mode 'beam'"):
        pv.lm_best_first(Toy(5), 1, policy, mode="beam")
    # attempts share the scores of the states they meet: the same results, fewer policy calls
    counting = FakePolicy([("+1", -0.1), ("*2", -5.0), ("-1", -9.0)])
    runs = pv.attempts("lm", Toy(5), 1, 4, policy=counting, policy_mode="rank", samples=2, max_expansions=50)
    alone = [pv.lm_best_first(Toy(5), 1, policy, mode="rank", samples=2, max_expansions=50, seed=i)
             for i in range(4)]
    assert [r.proof for r in runs] == [r.proof for r in alone]
    assert len(counting.contexts) == len(set(counting.contexts)) < sum(r.expansions for r in runs)


def test_run_searcher_and_attempts():
    with pytest.raises(pv.ProverError, match="unknown searcher"):
        pv.run_searcher("dfs", Toy(3), 1)
    with pytest.raises(pv.ProverError, match="needs a trained policy"):
        pv.run_searcher("lm", Toy(3), 1)
    runs = pv.attempts("heuristic", Toy(6), 1, 3, max_expansions=20)
    assert len(runs) == 3 and all(r.proved for r in runs)


def test_trajectory_pairs_replay_in_the_gym():
    env = Toy(0)
    pairs, bad = pv.trajectory_pairs(env, [(1, ["+1", "*2"]), (3, ["bogus", "+1"])])
    assert pairs == [(pv.GYM_TAG + "1", "+1"), (pv.GYM_TAG + "2", "*2")] and bad == 1
    mixed = pv.policy_pairs([("x : R ⊢ a = b", "ring,")], pairs)
    assert mixed[0] == (pv.LEAN_TAG + "x : R ⊢ a = b", "ring,") and mixed[1:] == pairs
    # oversampling: 10 Lean rows and 2 gym pairs at a share of at least 0.5 -> 10 gym rows (5 whole copies)
    lean = [("g", "ring,")] * 10
    assert len(pv.policy_pairs(lean, pairs, 0.5)) == 20
    assert len(pv.policy_pairs(lean, pairs, 0.6)) == 10 + 16  # ceil(15 / 2) = 8 copies
    assert len(pv.policy_pairs(lean, [], 0.5)) == 10
    with pytest.raises(pv.ProverError, match="gym_share=1"):
        pv.policy_pairs(lean, pairs, 1.0)


# ---------------------------------------------------------------------------- anchors
def test_bm25_by_hand():
    docs = ["sin x = cos y", "tan x + 1", "sin x * sin x"]
    bm = tc.BM25(docs)
    # 'tan' occurs in one doc: only doc 1 scores for it
    s = bm.scores("tan")
    assert s[1] > 0 and s[0] == 0 and s[2] == 0
    # the hand formula for doc 1: idf = log(1 + (3 - 1 + 0.5)/(1 + 0.5)); |d| = 4, avg = (5+4+5)/3
    idf = math.log(1 + 2.5 / 1.5)
    avg = 14 / 3
    want = idf * 1 * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * 4 / avg))
    assert s[1] == pytest.approx(want)
    assert bm.top("sin sin") == 2  # term frequency 2 beats 1
    assert bm.top("zzz") == 0  # nothing shared: the first document
    with pytest.raises(tc.TacticError, match="at least one document"):
        tc.BM25([])


def test_anchors_on_hand_made_pairs():
    train = [("sin x = a", "rw sin_x,"), ("cos y = b", "rw cos_y,")]
    evals = [("sin x = c", "rw sin_x,"), ("cos y = d", "rw this,"), ("q", "rw  this, ")]
    assert tc.anchor_always(evals)["em"] == pytest.approx(2 / 3)  # whitespace is normalized
    assert tc.anchor_bm25(train, evals)["hits"] == 1
    with pytest.raises(tc.TacticError, match="no \\(goal, tactic\\) pairs"):
        tc.anchor_always([])


# ---------------------------------------------------------------------------- the pair LM
def _tiny_cfg(**kw):
    base = dict(vocab_size=300, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_prompt_tokens=16,
                max_target_tokens=8, batch_size=8, steps=5, lr=1e-2, warmup_steps=2)
    return tc.PairLMConfig(**{**base, **kw})


def test_pair_batches_label_only_the_target():
    from morphlm.data.tokenizer import train_tokenizer

    tk = train_tokenizer(["GOAL ab PROOFSTEP xy,"] * 3, 300)
    seq, n_prompt = tc.encode_pair(tk, "GOAL ab PROOFSTEP ", "xy,", 64, 8)
    assert seq[-1] == tk.eos_id and tk.decode(seq[n_prompt:-1]) == "xy,"
    b = tc.PairBatches([(seq, n_prompt)], 20, tk.pad_id, 1)._batch([(seq, n_prompt)])
    lab = b["labels"][0].tolist()
    assert all(v == -100 for v in lab[: n_prompt - 1])
    assert lab[n_prompt - 1: len(seq) - 1] == seq[n_prompt:]
    assert all(v == -100 for v in lab[len(seq) - 1:])
    # truncation: the prompt keeps its first tokens, the target at most max_target - 1 tokens + eos
    short, k = tc.encode_pair(tk, "GOAL ab PROOFSTEP ", "xy," * 10, 3, 4)
    assert k == 3 and len(short) == 7 and short[-1] == tk.eos_id


def test_pair_lm_learns_a_mapping_and_round_trips(tmp_path):
    pairs = [("alpha", "rw one,"), ("beta", "ring,")] * 20
    lm, res = tc.train_pair_lm(pairs, _tiny_cfg(steps=80), out_dir=str(tmp_path / "lm"))
    assert res.steps == 80
    ev = tc.evaluate_pair_lm(lm, [("alpha", "rw one,"), ("beta", "ring,")])
    assert ev["em"] == 1.0 and ev["nll_per_token"] < 0.5
    back = tc.load_pair_lm(tmp_path / "lm")
    assert back.cfg == lm.cfg and back.greedy("beta") == "ring,"
    samples = lm.sample("alpha", 6, generator=torch.Generator().manual_seed(0))
    texts = [t for t, _ in samples]
    assert len(texts) == len(set(texts)) and "rw one," in texts  # deduplicated, the learnt target among them
    assert all(lp <= 0 for _, lp in samples) and samples == sorted(samples, key=lambda x: -x[1])
    # the reported log-prob is the teacher-forced one
    (lp, n), = lm.target_logprobs("alpha", ["rw one,"])
    assert dict(samples)["rw one,"] == pytest.approx(lp, abs=1e-4) and n == len(lm.tokenizer.encode("rw one,")) + 1
    # one prompt run once for many targets (cached keys/values repeated) == each row teacher-forced on its own
    targets = ["rw one,", "ring,", "rw one, ring, simp, linarith,", "x"]
    shared = lm.shared_prompt_logprobs("alpha", targets)
    for (a, na), (b, nb) in zip(shared, lm.target_logprobs("alpha", targets)):
        assert na == nb and a == pytest.approx(b, abs=1e-4)
    assert lm.shared_prompt_logprobs("alpha", []) == []
    with pytest.raises(tc.TacticError, match="no pair_lm.json"):
        tc.load_pair_lm(tmp_path)


def test_pair_lm_bad_settings():
    with pytest.raises(tc.TacticError, match="no \\{goal\\} field"):
        tc.train_pair_lm([("a", "b")], _tiny_cfg(template="GOAL PROOFSTEP "))
    with pytest.raises(tc.TacticError, match="steps=0"):
        tc.train_pair_lm([("a", "b")], _tiny_cfg(steps=0))
    with pytest.raises(tc.TacticError, match="item 0"):
        tc.train_pair_lm([("a", 3)], _tiny_cfg())


# ---------------------------------------------------------------------------- the real gym
def test_search_in_the_trigo_gym_and_the_proof_replays():
    from morphlm.reason.trigo_data import parse_statement

    env = pv.trigo_env()
    start = env.start(parse_statement("sin(pi/6) + sin(x)**2 + cos(x)**2 = 3/2"))
    assert not env.is_closed(start)
    res = pv.heuristic(env, start, max_expansions=8, width=30)
    assert res.proved and 1 <= len(res.proof) <= 3
    assert replay(env, start, res.proof)
    # the LM searcher with a fake policy speaking the gym's action text
    policy = FakePolicy([("sin_pi_div_six -> lhs : sin(pi/6)", -0.5), ("not an action", -0.1),
                         ("sin_sq_add_cos_sq -> lhs : sin(x)**2 + cos(x)**2", -0.7)])
    lm = pv.lm_best_first(env, start, policy, max_expansions=4)
    assert lm.proved and lm.rejected >= 1 and replay(env, start, lm.proof)
    assert policy.contexts[0] == pv.GYM_TAG + start.to_text()


def test_generated_trajectories_become_policy_pairs():
    pytest.importorskip("morphlm.reason.trigo_gen")
    env = pv.trigo_env()
    problems = env.generated_problems(1, seed=0, rule_counts=(1,))
    pairs, bad = pv.trajectory_pairs(env, problems)
    assert bad == 0 and len(pairs) == len(problems[0][1])
    for ctx, act in pairs:
        assert ctx.startswith(pv.GYM_TAG)
        env.parse_action(act)  # the gym's own text format


def test_trigo_prove_cli(tmp_path):
    from clihelp import cli

    f = tmp_path / "st.txt"
    f.write_text("sin(x)**2 + cos(x)**2 = 1\nsin(pi/6) = 1/2\n")
    out, lean = tmp_path / "r.json", tmp_path / "p.lean"
    res = cli("reason", "trigo-prove", f, "--searcher", "bfs", "--width", "20", "--max-expansions", "4", "--out", out,
              "--lean", lean)
    assert "2/2 proved with bfs" in res.output
    import json

    data = json.loads(out.read_text())
    proof = data["statements"][1]["proof"]
    assert data["proved"] == 2 and len(proof) == 1 and proof[0].startswith("sin_pi_div_six ")
    assert "lemma line2" in lean.read_text() and "sin_pi_div_six" in lean.read_text()
    # a search that runs out of expansions reports it and what it spent
    hard = tmp_path / "hard.txt"
    hard.write_text("sin(13*pi/180)*cos(137*pi/180) + cos(13*pi/180)*cos(47*pi/180) = 1/2\n")
    res = cli("reason", "trigo-prove", hard, "--searcher", "heuristic", "--width", "3", "--max-expansions", "1")
    assert "not proved (expansions) after 1 expansions" in res.output and "0/1 proved" in res.output
    assert "best lead after 1 step(s): " in res.output
    # bad input: one clear line, exit 2
    assert "needs --policy" in cli("reason", "trigo-prove", f, "--searcher", "lm", code=2).output
    assert "choose one of" in cli("reason", "trigo-prove", f, "--searcher", "dfs", code=2).output
    assert "does not exist" in cli("reason", "trigo-prove", tmp_path / "none.txt", code=2).output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "holds no statement" in cli("reason", "trigo-prove", empty, code=2).output
    # a malformed line is skipped with a count, or refused under --strict naming the file and line
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("sin(x) = \nsin(pi/6) = 1/2\n")
    res = cli("reason", "trigo-prove", mixed, "--width", "20", "--max-expansions", "2")
    assert "skipped 1 malformed" in res.output and "1/1 proved" in res.output
    assert "mixed.txt:1" in cli("reason", "trigo-prove", mixed, "--strict", code=2).output
    assert "no pair_lm.json" in cli("reason", "trigo-prove", f, "--searcher", "lm", "--policy", tmp_path,
                                    code=2).output
