"""Proof search through the TRIGO gym: a best-first prover guided by a morphlm causal LM policy, and its two
anchors at equal expansions (Xiong et al., EMNLP 2023, arXiv 2310.10180, §4; TRIGO's search.py follows the
GPT-f/Polu & Sutskever 2020, arXiv 2009.03393, §4.2 recipe).

* **LM best-first**: a global priority queue of proof states; each expansion pops the state with the highest
  cumulative log-probability (the sum over the actions that led to it), samples ``samples`` (8) actions from the
  policy (deduplicated), applies each in the gym (every step checked there: an action that does not parse or does
  not apply is dropped and counted) and pushes every child not seen before (dedup of visited states by their
  text). ≤ ``max_expansions`` (128) expansions.
* **Uniform BFS**: the same queue in first-in first-out order over ALL legal actions of a state (shuffled by the
  attempt's seed, so attempts differ); ``width`` caps the children per expansion.
* **Size heuristic**: best-first on the child's size — trig atoms first, then operations (fewest first, as SymPy's
  ``fu`` simplification measures progress: Fu, Zhong & Zeng 2006, "Automated and readable simplification of
  trigonometric expressions"), ties broken by the attempt's seed.

A search stops at the first closed state (proved), when the queue empties (exhausted), after ``max_expansions``
(budget) or after ``time_limit`` seconds (time); it reports the proof found (or none) and what it spent.

pass@k from n ≥ k attempts of which c succeed: 1 − C(n−c, k)/C(n, k) (Chen et al. 2021, arXiv 2107.03374, §2.1).

The gym is reached through :class:`SearchEnv`: anything with ``actions(state)``, ``step(state, action)`` (raising
on an action that does not apply), ``is_closed(state)`` and text forms of states and actions;
:func:`gym_env` wraps the TRIGO gym (morphlm.reason.trigo_gym).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

SEARCHERS = ("bfs", "heuristic", "lm")


class ProverError(ValueError):
    """Bad input to the prover (unknown searcher, bad budget, a policy missing); the message says the fix."""


class SearchEnv(Protocol):
    def actions(self, state) -> list: ...

    def step(self, state, action): ...

    def is_closed(self, state) -> bool: ...

    def state_text(self, state) -> str: ...

    def action_text(self, action) -> str: ...

    def parse_action(self, text: str): ...


@dataclass
class SearchResult:
    """What one search found and spent. ``stop``: proved | exhausted | expansions | time."""

    proved: bool
    proof: list[str]
    stop: str
    expansions: int
    children: int = 0
    rejected: int = 0
    seconds: float = 0.0
    frontier: str | None = None  # unproved: the state the search would have expanded next (its best lead)
    frontier_path: list[str] = field(default_factory=list)  # the actions that reached it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ sizes
_TRIG = re.compile(r"\b(?:sin|cos|tan|cot|sec|csc)\b")
_OPS = re.compile(r"\*\*|[-+*/^]")


def text_size(text: str) -> tuple[int, int]:
    """(trig atoms, arithmetic operations) of a state's text: the size heuristic's key, smaller is simpler."""
    return len(_TRIG.findall(text)), len(_OPS.findall(text))


# ------------------------------------------------------------------------------------------------ pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n attempts with c successes: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ProverError(f"pass@k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ProverError(f"pass@{k} needs at least {k} attempts per problem, got n={n}; raise the attempts")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ------------------------------------------------------------------------------------------------ the search
@dataclass(order=True)
class _Node:
    priority: Any
    order: int
    state: Any = field(compare=False)
    path: list = field(compare=False)
    score: float = field(compare=False, default=0.0)


def search(env: SearchEnv, start, expand: Callable[[Any, float], Iterable[tuple[Any, float]]],
           priority: Callable[[_Node, Any, float], Any], *, max_expansions: int = 128,
           time_limit: float | None = None) -> SearchResult:
    """The one search loop. ``expand(state, score)`` yields (action, action score) candidates; ``priority(parent,
    child_state, child_score)`` orders the queue (smallest first; a child's score = parent's + action's).
    Visited states (by text) are expanded at most once; a state queued again is only re-queued when reached with a
    strictly lower cumulative score (the searchers without scores keep the first path found)."""
    if max_expansions < 1:
        raise ProverError(f"max_expansions={max_expansions}: need at least 1 expansion")
    t0 = time.perf_counter()
    if env.is_closed(start):
        return SearchResult(True, [], "proved", 0, seconds=time.perf_counter() - t0)
    counter = itertools.count()
    root = _Node(0, next(counter), start, [], 0.0)
    queue = [root]
    best = {env.state_text(start): 0.0}  # lowest cumulative score a queued state was reached with
    expanded: set[str] = set()
    expansions = children = rejected = 0

    def out(proved: bool, proof: list, stop: str, lead: _Node | None = None) -> SearchResult:
        res = SearchResult(proved, [env.action_text(a) for a in proof], stop, expansions, children, rejected,
                           time.perf_counter() - t0)
        while lead is None and queue:  # the queue's best live entry
            top = heapq.heappop(queue)
            k = env.state_text(top.state)
            if k not in expanded and top.score <= best[k]:
                lead = top
        if not proved and lead is not None:
            res.frontier, res.frontier_path = env.state_text(lead.state), [env.action_text(a) for a in lead.path]
        return res

    while queue:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            return out(False, [], "time")
        node = heapq.heappop(queue)
        key = env.state_text(node.state)
        if key in expanded or node.score > best[key]:  # a stale entry: the state was reached more cheaply since
            continue
        if expansions >= max_expansions:
            return out(False, [], "expansions", node)
        expanded.add(key)
        expansions += 1
        for action, a_score in expand(node.state, node.score):
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                return out(False, [], "time", node)
            try:
                child = env.step(node.state, action)
            except Exception:  # the gym refused it (no match, a guard failed): a rejected candidate
                rejected += 1
                continue
            children += 1
            if env.is_closed(child):
                return out(True, node.path + [action], "proved")
            ckey = env.state_text(child)
            score = node.score + a_score
            if ckey in expanded or (ckey in best and score >= best[ckey]):
                continue
            best[ckey] = score
            heapq.heappush(queue, _Node(priority(node, child, score), next(counter), child, node.path + [action],
                                        score))
    return out(False, [], "exhausted")


def _legal(env: SearchEnv, state, rng: random.Random, width: int | None) -> list:
    acts = list(env.actions(state))
    rng.shuffle(acts)
    return acts if width is None else acts[:width]


def bfs(env: SearchEnv, start, *, seed: int = 0, max_expansions: int = 128, time_limit: float | None = None,
        width: int | None = None) -> SearchResult:
    """Uniform breadth-first search over the legal actions (in an order shuffled by ``seed``)."""
    rng = random.Random(seed)
    return search(env, start, lambda s, _: ((a, 0.0) for a in _legal(env, s, rng, width)),
                  lambda parent, child, score: 0, max_expansions=max_expansions, time_limit=time_limit)


def heuristic(env: SearchEnv, start, *, seed: int = 0, max_expansions: int = 128, time_limit: float | None = None,
              width: int | None = None, size: Callable[[Any], tuple] | None = None) -> SearchResult:
    """Best-first on the child's size (fewest trig atoms, then operations; ties by ``seed``)."""
    rng = random.Random(seed)
    size = size or (lambda st: text_size(env.state_text(st)))
    return search(env, start, lambda s, _: ((a, 0.0) for a in _legal(env, s, rng, width)),
                  lambda parent, child, score: (*size(child), rng.random()), max_expansions=max_expansions,
                  time_limit=time_limit)


POLICY_MODES = ("sample", "rank")


def lm_best_first(env: SearchEnv, start, policy, *, seed: int = 0, samples: int = 8, max_expansions: int = 128,
                  time_limit: float | None = None, temperature: float = 1.0, mode: str = "sample",
                  memo: dict | None = None) -> SearchResult:
    """Best-first on the cumulative log-probability of the policy's actions, ``samples`` per expansion.

    ``mode="sample"`` (TRIGO's): ``samples`` free samples from the LM (deduplicated; ``policy.sample(context, n,
    temperature=, generator=)`` → [(action text, log-prob)]), an action text that does not parse or apply is
    rejected. ``mode="rank"``: the gym's legal actions of the state are scored by the LM (teacher-forced
    log-probability of each action's text, ``policy.shared_prompt_logprobs`` where the policy has it, else
    ``policy.target_logprobs``) and ``samples`` of them are drawn without
    replacement from the LM's distribution renormalised over them — sampling constrained to well-formed actions
    (reconstruction: TRIGO samples freely and lets Lean reject; a small policy that rarely writes a well-formed
    gym action is still measured on its ranking this way). Either way the cost is − the action's log-prob under
    the LM (not renormalised), and the context is :func:`policy_context` of the state's text.

    ``memo`` (rank mode): a dict shared by the attempts on one problem; a state's legal actions and their scores
    are a pure function of the state and the policy, so later attempts reuse them (only the sampling differs)."""
    import torch

    if samples < 1:
        raise ProverError(f"samples={samples}: need at least 1 sampled action per expansion")
    if mode not in POLICY_MODES:
        raise ProverError(f"policy mode {mode!r}: choose one of {', '.join(POLICY_MODES)}")
    g = torch.Generator().manual_seed(seed)
    bad = [0]

    def expand_sample(state, _score):
        for text, logp in policy.sample(policy_context(env.state_text(state)), samples, temperature=temperature,
                                        generator=g):
            try:
                action = env.parse_action(text)
            except Exception:
                bad[0] += 1
                continue
            yield action, -logp  # the queue pops the smallest: cost = − cumulative log-prob

    def expand_rank(state, _score):
        key = env.state_text(state)
        if memo is not None and key in memo:
            acts, lp = memo[key]
        else:
            acts = list(env.actions(state))
            score = getattr(policy, "shared_prompt_logprobs", None) or policy.target_logprobs
            scored = score(policy_context(key), [env.action_text(a) for a in acts]) if acts else []
            lp = torch.tensor([s for s, _ in scored], dtype=torch.float64)
            if memo is not None:
                memo[key] = (acts, lp)
        if not acts:
            return
        probs = torch.softmax(lp / max(temperature, 1e-6), dim=0)
        picked = torch.multinomial(probs.float(), min(samples, len(acts)), replacement=False, generator=g)
        for i in picked.tolist():
            yield acts[i], -float(lp[i])

    res = search(env, start, expand_rank if mode == "rank" else expand_sample,
                 lambda parent, child, score: score, max_expansions=max_expansions, time_limit=time_limit)
    res.rejected += bad[0]
    return res


def run_searcher(name: str, env: SearchEnv, start, *, policy=None, seed: int = 0, max_expansions: int = 128,
                 time_limit: float | None = None, samples: int = 8, width: int | None = None,
                 policy_mode: str = "sample", memo: dict | None = None) -> SearchResult:
    """One attempt of searcher ``name`` (bfs | heuristic | lm); ``memo``: see :func:`lm_best_first`."""
    if name == "bfs":
        return bfs(env, start, seed=seed, max_expansions=max_expansions, time_limit=time_limit, width=width)
    if name == "heuristic":
        return heuristic(env, start, seed=seed, max_expansions=max_expansions, time_limit=time_limit, width=width)
    if name == "lm":
        if policy is None:
            raise ProverError("the lm searcher needs a trained policy (train one with the bench, or pass --policy "
                              "DIR)")
        return lm_best_first(env, start, policy, seed=seed, samples=samples, max_expansions=max_expansions,
                             time_limit=time_limit, mode=policy_mode, memo=memo)
    raise ProverError(f"unknown searcher {name!r}; choose one of {', '.join(SEARCHERS)}")


def attempts(name: str, env: SearchEnv, start, n: int, **kw) -> list[SearchResult]:
    """``n`` independent attempts (seeds 0..n−1) of searcher ``name`` on one problem (the LM's scores of the
    states they share are computed once)."""
    if n < 1:
        raise ProverError(f"attempts={n}: need at least 1")
    memo: dict = {}
    return [run_searcher(name, env, start, seed=i, memo=memo if name == "lm" else None, **kw) for i in range(n)]


# ------------------------------------------------------------------------------------------------ policy data
GYM_TAG = "[gym] "
LEAN_TAG = "[lean] "


def policy_context(state_text: str) -> str:
    """The policy's context for a gym state (gym pairs carry a tag so Lean steps and gym actions, two
    vocabularies of actions, stay apart in one model)."""
    return GYM_TAG + state_text


def lean_context(goal: str) -> str:
    return LEAN_TAG + goal


def trajectory_pairs(env: SearchEnv,
                     problems: Iterable[tuple[Any, Sequence[Any]]]) -> tuple[list[tuple[str, str]], int]:
    """(context, action text) pairs from gold trajectories: each problem is (start state, [actions]); the actions
    are replayed in the gym, so a pair is only kept for a step the gym accepts. Returns (pairs, rejected steps)."""
    pairs: list[tuple[str, str]] = []
    bad = 0
    for start, actions in problems:
        state = start
        for a in actions:
            try:
                nxt = env.step(state, a)
            except Exception:
                bad += 1
                break
            pairs.append((policy_context(env.state_text(state)), env.action_text(a)))
            state = nxt
    return pairs, bad


def policy_pairs(lean_steps: Iterable[tuple[str, str]], gym_pairs: Sequence[tuple[str, str]],
                 gym_share: float = 0.0) -> list[tuple[str, str]]:
    """The policy's training set: TG-REAL GOAL → PROOFSTEP steps (tagged as Lean) and gym (state → action) pairs,
    the gym pairs repeated (whole copies) until they are at least ``gym_share`` of the rows.
    Reconstruction: TRIGO trains its policy on Lean steps only; here the search acts through the gym, whose
    actions are the rule bank's, so the generated trajectories teach those while the real steps add their goals'
    vocabulary (a few hundred generated steps beside 7,338 real ones are 3.5% of the rows: ``gym_share``
    oversamples them)."""
    if not 0.0 <= gym_share < 1.0:
        raise ProverError(f"gym_share={gym_share}: the share of gym pairs must be in [0, 1)")
    lean = [(lean_context(g), t) for g, t in lean_steps]
    gym = list(gym_pairs)
    copies = 1
    if gym and gym_share > 0:
        need = gym_share * len(lean) / (1.0 - gym_share)  # gym rows for that share
        copies = max(1, math.ceil(need / len(gym)))
    return lean + gym * copies


# ------------------------------------------------------------------------------------------------ the TRIGO gym
class TrigoEnv:
    """:class:`SearchEnv` over the TRIGO gym (morphlm.reason.trigo_gym): states are ``TrigoState``, actions
    ``Action`` in the gym's one-line text format (``RULE ->|<- lhs|rhs [K=k] : SUBTERM``).

    The gym is deterministic (its numeric guard draws its points from a fixed seed), so the legal actions of a
    state, the outcome of (state, action) and the closing check are memoized per problem — :meth:`start` clears
    the memo. Later attempts on the same problem then cost less time; their expansion budget is unchanged."""

    def __init__(self, gym=None) -> None:
        from .trigo_gym import Gym

        self.gym = gym if gym is not None else Gym()
        self._clear()

    def _clear(self) -> None:
        self._actions: dict[str, list] = {}
        self._steps: dict[tuple[str, str], Any] = {}
        self._closed: dict[str, bool] = {}

    def start(self, statement):
        """The gym state of a loaded statement (trigo_data.Statement); a new problem, so the memo is cleared."""
        from .trigo_gym import TrigoState

        self._clear()
        return TrigoState.make(statement.lhs, statement.rhs)

    def actions(self, state) -> list:
        key = state.to_text()
        if key not in self._actions:
            self._actions[key] = self.gym.actions(state)
        return list(self._actions[key])

    def step(self, state, action):
        key = (state.to_text(), action.to_text())
        if key not in self._steps:
            try:
                self._steps[key] = self.gym.step(state, action)
            except Exception as exc:  # remembered and raised again: a refused action stays refused
                self._steps[key] = exc
        out = self._steps[key]
        if isinstance(out, Exception):
            raise out
        return out

    def is_closed(self, state) -> bool:
        key = state.to_text()
        if key not in self._closed:
            self._closed[key] = self.gym.is_closed(state)
        return self._closed[key]

    def state_text(self, state) -> str:
        return state.to_text()

    def action_text(self, action) -> str:
        return action.to_text()

    def parse_action(self, text: str):
        from .trigo_gym import Action

        return Action.from_text(text)

    def generated_problems(self, n: int, seed: int = 0, rule_counts: Sequence[int] = (1, 2, 3)) -> list:
        """``n`` generated TG-k problems per k in ``rule_counts`` (morphlm.reason.trigo_gen, seeded ``seed + k``)
        as (start state, gold actions)."""
        from .trigo_gen import generate
        from .trigo_gym import TrigoState

        out = []
        for k in rule_counts:
            for proof in generate(k, n, seed=seed + k):
                out.append((TrigoState.make(proof.statement.lhs, proof.statement.rhs), list(proof.actions)))
        return out


def trigo_env(gym=None) -> TrigoEnv:
    """The TRIGO gym as a search environment (the bench and ``morphlm reason trigo-prove`` use this)."""
    return TrigoEnv(gym)


def load_statements(path, strict: bool = False):
    """Statements to prove: a Lean 3 file or folder (trigo_data.load_trigo), or a ``.txt`` with one ``LHS = RHS``
    (or one-line lemma) per line (blank and ``--`` lines ignored). A malformed line is skipped and counted, or
    refused under ``strict`` naming its file and line. Returns (statements, trigo_data.LoadReport)."""
    from pathlib import Path

    from .trigo_data import LoadReport, load_trigo, parse_statement
    from .trigo_expr import TrigoError

    p = Path(path)
    rep = LoadReport()
    if not (p.is_file() and p.suffix == ".txt"):
        return load_trigo(p, strict=strict, report=rep), rep
    out = []
    for no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        where = f"{p}:{no}"
        try:
            out.append(parse_statement(line, name=f"line{no}", where=where))
            rep.kept += 1
        except TrigoError as exc:
            if strict:  # the error names the file and line already
                raise
            rep.skip(where, str(exc), False)
    return out, rep
