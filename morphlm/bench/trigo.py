"""The TRIGO benchmark: ``morphlm bench trigo`` (Xiong et al., EMNLP 2023, arXiv 2310.10180).

Two parts, one results file (``benchmarks/results/trigo.json``; ``trigo-quick.json`` with ``--quick``):

* **A — next-tactic prediction** on TG-REAL valid (1,212 GOAL → PROOFSTEP steps of 42 lemmas): a tiny morphlm
  causal LM trained on the 7,338 train steps (:mod:`morphlm.reason.tactic`), scored by exact match of its greedy
  tactic and by the NLL of the gold tactic, against two anchors without training: always ``rw this,`` and the
  tactic of the BM25-nearest training goal. Goal: LM EM ≥ the best anchor's + 5 points.
* **B — proving in the gym** (:mod:`morphlm.reason.trigo_gym`, SymPy as the checker): pass@1 and pass@8 over
  ``attempts`` (8) independent attempts per problem, ≤ ``max_expansions`` (128) expansions each (and a
  per-attempt time limit), on the TG-1 and TG-2 test sets (1,000 each) and the 86 TG-REAL test statements, for
  uniform BFS, the size heuristic and the LM prover (:mod:`morphlm.reason.prover`; its policy is trained on the
  TG-REAL train steps plus trajectories of the gym's generator, ``gen_problems`` per rule count 1..3). Goal: the
  LM prover's pass@8 ≥ the heuristic's on TG-2.

``--limit N`` keeps the first N items of every evaluation set (valid steps and problems per subset): the full run
needs hours of CPU. ``--quick`` is a CI-sized smoke run (seconds), not a measurement.

Every finished part (the tactic evaluation; one (subset, searcher) cell of B) is cached through
:class:`~morphlm.bench.runner.ResultCache` under a hash of everything that shapes it, and the policy checkpoint is
kept, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runner import STOP, ResultCache, check_stop, interruptible

log = logging.getLogger("morphlm.bench.trigo")

SCHEMA_VERSION = 1
SUBSETS = {"tg1": "TG-1 test (1 rule)", "tg2": "TG-2 test (2 rules)", "real": "TG-REAL test (86 statements)"}
SEARCHERS = ("bfs", "heuristic", "lm")
SUMMARY_KEYS = ("tactic_em", "tactic_em_anchor", "pass8_tg2_lm", "pass8_tg2_heuristic")
# the generator's version in the keys of the policy and of the LM cells: 2 = addition formulas can seed a problem
# (closed right-to-left); a policy trained on version-1 problems never saw sin_add/sin_sub/cos_add/cos_sub
GENERATOR_VERSION = 2


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


def default_data() -> str:
    from ..data.paths import data_dir

    return str(data_dir() / "trigo")


@dataclass
class TrigoBenchConfig:
    """Everything that shapes ``morphlm bench trigo``. The profiles below fill it."""

    profile: str = "full"  # full | quick | test
    data: str = ""
    limit: int | None = None  # first N valid steps (A) and problems per subset (B); None = all
    problems: int | None = None  # first N problems per subset of B when it differs from ``limit``
    train_limit: int | None = None  # first N train steps for the tactic LM and the policy; None = all 7,338
    tactic: dict = field(default_factory=dict)  # PairLMConfig fields of the next-tactic LM
    policy: dict = field(default_factory=dict)  # PairLMConfig fields of the prover's policy
    gen_problems: int = 300  # generated problems per rule count (1, 2, 3) for the policy's trajectories
    gen_seed: int = 0
    gym_share: float = 0.5  # the gym pairs are repeated until they are at least this share of the policy's rows
    subsets: list[str] = field(default_factory=lambda: list(SUBSETS))
    searchers: list[str] = field(default_factory=lambda: list(SEARCHERS))
    attempts: int = 8
    max_expansions: int = 128
    samples: int = 8
    time_limit: float = 120.0  # seconds per attempt
    width: int | None = None  # children per expansion of BFS / heuristic (None: every legal action)
    policy_mode: str = "sample"  # sample: free LM samples (TRIGO's) | rank: LM-sampled among the gym's legal actions
    only_cached: bool = False  # assemble the results from the cache (partial cells marked), train and search nothing
    parts: list[str] = field(default_factory=lambda: ["tactic", "prover"])

    def validate(self) -> None:
        from ..reason.tactic import PairLMConfig, TacticError

        if self.profile not in ("full", "quick", "test"):
            raise BenchError(f"profile={self.profile!r}: choose full, quick or test")
        if not Path(self.data).is_dir():
            raise BenchError(f"TRIGO data folder {self.data!r} does not exist; set $MORPHLM_DATA (its trigo/ "
                             f"folder) or pass --data DIR with TG-1/, TG-2/ and TG-REAL/")
        for name in ("limit", "train_limit", "problems"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise BenchError(f"{name}={v}: must be >= 1 (or unset for everything)")
        unknown = [p for p in self.parts if p not in ("tactic", "prover")]
        if unknown or not self.parts:
            raise BenchError(f"parts={self.parts}: choose from tactic, prover")
        bad = [s for s in self.subsets if s not in SUBSETS]
        if bad or not self.subsets:
            raise BenchError(f"subsets {bad or self.subsets}: choose from {', '.join(SUBSETS)}")
        bad = [s for s in self.searchers if s not in SEARCHERS]
        if bad or not self.searchers:
            raise BenchError(f"searchers {bad or self.searchers}: choose from {', '.join(SEARCHERS)}")
        if self.attempts < 8:
            raise BenchError(f"attempts={self.attempts}: pass@8 needs at least 8 attempts per problem")
        if self.max_expansions < 1 or self.samples < 1:
            raise BenchError(f"max_expansions={self.max_expansions}, samples={self.samples}: both must be >= 1")
        if not 0.0 <= self.gym_share < 1.0:
            raise BenchError(f"gym_share={self.gym_share}: the share of gym pairs must be in [0, 1)")
        if self.policy_mode not in ("sample", "rank"):
            raise BenchError(f"policy_mode={self.policy_mode!r}: choose sample or rank")
        if not self.time_limit > 0:
            raise BenchError(f"time_limit={self.time_limit}: seconds per attempt must be > 0")
        for name in ("tactic", "policy"):
            try:
                PairLMConfig(**getattr(self, name)).validate()
            except (TypeError, TacticError) as exc:
                raise BenchError(f"{name} settings {getattr(self, name)}: {exc}") from exc

    def tactic_cfg(self):
        from ..reason.tactic import PairLMConfig

        return PairLMConfig(**self.tactic)

    def policy_cfg(self):
        from ..reason.tactic import PairLMConfig

        return PairLMConfig(**self.policy)


def full_config(**changes: Any) -> TrigoBenchConfig:
    """The protocol: the tactic LM and the policy are d=128, L=4 (4 heads, 2 KV heads; ≈ 0.95M parameters: the
    byte-level BPE asked for 1,024 ids stops near 600-730 on this text), context 192 + 32 tokens (the policy:
    192 + 64), batch 16, 3,000 steps (the policy: 4,000) at lr 3e-3; B at 8 attempts × ≤ 128 expansions × 8
    samples; the policy also reads the gold trajectories of 2,000 generated problems per rule count (1, 2, 3),
    at least 70% of its rows.

    Sizing, measured on this 2-core machine with 2-3 jobs sharing it: one training step ≈ 0.65 s single-threaded
    (the policy's 4,000 ≈ 45 min, plus ≈ 10 min generating its problems); a gym state has 25-85 legal actions and
    a checked child costs ≈ 4 ms (most candidate states are ruled out as not closed by a numeric first test), so
    over 30 TG-1 problems × 8 attempts the heuristic took 16 s and BFS 15 min (BFS expands whole levels); the LM
    prover (rank mode) ≈ 20 s for a problem it proves early and ≈ 2.5 min for one it does not (8 attempts × 128
    expansions; the attempts share the policy's scores). Part B on all 2,086 problems × 3 searchers is therefore
    a day of CPU here: the committed run uses ``--problems 30`` (the first 30 of each subset; README says so)."""
    model = dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_prompt_tokens=192,
                 max_target_tokens=32, batch_size=16, steps=3000, lr=3e-3, warmup_steps=100)
    # the policy's targets are gym actions (`RULE ->|<- SIDE [K=k] : SUBTERM`, longer than a Lean tactic) and it
    # reads ≈ 18k generated (state → action) pairs beside the 7,338 Lean steps, so it gets longer targets and more
    # steps (≈ 2.5 passes over its rows)
    policy = {**model, "max_target_tokens": 64, "steps": 4000}
    cfg = TrigoBenchConfig(profile="full", data=default_data(), tactic=dict(model), policy=policy,
                           gen_problems=2000, gym_share=0.7)
    return dataclasses.replace(cfg, **changes)


def quick_config(**changes: Any) -> TrigoBenchConfig:
    """A smoke test of the whole pipeline in well under a minute: tiny models, 40 training steps, 12 valid steps,
    1 problem per subset, 8 attempts of ≤ 2 expansions (2 children or samples each). Not a measurement."""
    model = dict(vocab_size=300, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_prompt_tokens=64,
                 max_target_tokens=24, batch_size=8, steps=40, lr=1e-2, warmup_steps=4)
    cfg = TrigoBenchConfig(profile="quick", data=default_data(), limit=12, problems=1, train_limit=400,
                           tactic=dict(model), policy=dict(model), gen_problems=2, max_expansions=2, samples=2,
                           time_limit=10.0, width=2)
    return dataclasses.replace(cfg, **changes)


def ci_config(**changes: Any) -> TrigoBenchConfig:
    """The CI profile (tests/test_bench_trigo.py): --quick, smaller still."""
    cfg = quick_config(profile="test", limit=6, train_limit=120, gen_problems=1, max_expansions=2, samples=2)
    cfg.tactic = {**cfg.tactic, "steps": 10}
    cfg.policy = {**cfg.policy, "steps": 10}
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------------ paths, keys
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_work_dir() -> Path:
    env = os.environ.get("MORPHLM_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "morphlm"
    return base / "trigo-bench"


def results_path(cfg: TrigoBenchConfig) -> Path:
    """benchmarks/results/trigo.json (``$MORPHLM_RESULTS`` moves the folder); trigo-quick.json / trigo-test.json
    for the small profiles."""
    from .common import RESULTS_DIR

    folder = Path(os.environ["MORPHLM_RESULTS"]) if os.environ.get("MORPHLM_RESULTS") else RESULTS_DIR
    return folder / ("trigo.json" if cfg.profile == "full" else f"trigo-{cfg.profile}.json")


# ------------------------------------------------------------------------------------------------ data
def _real(cfg: TrigoBenchConfig) -> Path:
    return Path(cfg.data) / "TG-REAL"


def load_step_pairs(cfg: TrigoBenchConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """(train pairs, valid pairs, load report) of the TG-REAL step files, limits applied."""
    from ..reason.tactic import pairs_from_steps
    from ..reason.trigo_data import LoadReport, load_steps

    real = _real(cfg)
    files = {"train": real / "train_raw_299_new.txt", "valid": real / "valid_raw_42_new.txt"}
    for what, f in files.items():
        if not f.is_file():
            raise BenchError(f"the TG-REAL {what} steps {f} are missing; point --data at a TRIGO folder")
    rep_t, rep_v = LoadReport(), LoadReport()
    train = pairs_from_steps(load_steps(files["train"], report=rep_t))[: cfg.train_limit]
    valid = pairs_from_steps(load_steps(files["valid"], report=rep_v))[: cfg.limit]
    return train, valid, {"train_kept": rep_t.kept, "train_skipped": rep_t.skipped, "valid_kept": rep_v.kept,
                          "valid_skipped": rep_v.skipped, "train_used": len(train), "valid_used": len(valid)}


def load_subset(cfg: TrigoBenchConfig, subset: str) -> tuple[list, dict]:
    """The statements of one subset of B (first ``limit``) and what the loader skipped."""
    from ..reason.trigo_data import LoadReport, load_names, load_trigo

    rep = LoadReport()
    root = Path(cfg.data)
    if subset == "tg1":
        stmts = load_trigo(root / "TG-1" / "from_rule_test_data_step1_after_delete.lean", report=rep)
    elif subset == "tg2":
        stmts = load_trigo(root / "TG-2" / "from_rule_test_data_step2_after_delete.lean", report=rep)
    elif subset == "real":
        names = set(load_names(_real(cfg) / "test_valid_names_set.txt"))
        stmts = [s for s in load_trigo(sorted(_real(cfg).glob("Trigo_*.lean"))[0].parent, report=rep)
                 if s.name in names]
        stmts = sorted(stmts, key=lambda s: s.name)
    else:
        raise BenchError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    n = cfg.problems if cfg.problems is not None else cfg.limit
    return stmts[:n], {"kept": rep.kept, "skipped": rep.skipped, "used": len(stmts[:n])}


# ------------------------------------------------------------------------------------------------ part A
def _tactic_key(cfg: TrigoBenchConfig, n_train: int, n_valid: int) -> str:
    shaping = {"cfg": asdict(cfg.tactic_cfg()), "train": n_train, "valid": n_valid, "data": cfg.data,
               "v": SCHEMA_VERSION}
    return f"tactic-{_hash(shaping)}"


def cached_tactic(cfg: TrigoBenchConfig, work: Path) -> dict[str, Any] | None:
    """Part A from the cache only (``--only-cached``), or None."""
    train, valid, _ = load_step_pairs(cfg)
    return ResultCache(work / "parts").load(_tactic_key(cfg, len(train), len(valid)))


def _bars(cfg: TrigoBenchConfig) -> bool:
    """Progress bars for the long steps of a full run (the small profiles stay quiet)."""
    return cfg.profile == "full"


def run_tactic(cfg: TrigoBenchConfig, work: Path) -> dict[str, Any]:
    """Part A: anchors and the next-tactic LM on the (limited) valid steps; cached."""
    from ..reason import tactic as tc

    train, valid, report = load_step_pairs(cfg)
    key = _tactic_key(cfg, len(train), len(valid))

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        always = tc.anchor_always(valid)
        bm25 = tc.anchor_bm25(train, valid)
        check_stop("the tactic anchors")
        lm, res = tc.train_pair_lm(train, cfg.tactic_cfg(), val_pairs=valid, progress=_bars(cfg))
        t1 = time.perf_counter()
        ev = tc.evaluate_pair_lm(lm, valid, progress=_bars(cfg))
        return {"n_valid": len(valid), "n_train": len(train), "load": report, "always": always, "bm25": bm25,
                "lm": ev, "lm_params": sum(p.numel() for p in lm.model.parameters()),
                "lm_vocab": lm.tokenizer.vocab_size,
                "lm_train": {"steps": res.steps, "tokens": res.tokens, "final_loss": res.final_loss,
                             "val_loss": res.val_loss, "seconds": t1 - t0},
                "eval_seconds": time.perf_counter() - t1}

    return ResultCache(work / "parts").get_or_run(key, run, "the next-tactic LM (training and evaluation)")


# ------------------------------------------------------------------------------------------------ part B
def _policy_dir(cfg: TrigoBenchConfig, work: Path, n_train: int) -> Path:
    shaping = {"cfg": asdict(cfg.policy_cfg()), "train": n_train, "gen": [cfg.gen_problems, cfg.gen_seed],
               "data": cfg.data, "v": SCHEMA_VERSION}
    if cfg.gym_share:  # (a run without oversampling keeps its earlier key)
        shaping["gym_share"] = cfg.gym_share
    shaping["generator"] = GENERATOR_VERSION
    return work / f"policy-{_hash(shaping)}"


def _policy(cfg: TrigoBenchConfig, env, work: Path):
    """The prover's policy: trained on TG-REAL train steps + generated gym trajectories, or reloaded from its
    cached checkpoint."""
    from ..reason import prover as pv
    from ..reason import tactic as tc

    train, _, _ = load_step_pairs(cfg)
    pcfg = cfg.policy_cfg()
    out = _policy_dir(cfg, work, len(train))
    info_path = out / "policy_data.json"
    if info_path.is_file() and (out / tc.PAIR_LM_FILE).is_file():
        return tc.load_pair_lm(out), json.loads(info_path.read_text(encoding="utf-8"))
    log.info("generating %d problems per rule count (1, 2, 3) for the policy's trajectories", cfg.gen_problems)
    problems = env.generated_problems(cfg.gen_problems, cfg.gen_seed)
    gym_pairs, rejected = pv.trajectory_pairs(env, problems)
    log.info("%d gym (state → action) pairs from %d problems (%d steps the gym refused)", len(gym_pairs),
             len(problems), rejected)
    pairs = pv.policy_pairs(train, gym_pairs, cfg.gym_share)
    with interruptible("training the prover's policy"):
        lm, res = tc.train_pair_lm(pairs, pcfg, out_dir=str(out), progress=_bars(cfg))
    info = {"lean_pairs": len(train), "gym_pairs": len(gym_pairs), "gym_rows": len(pairs) - len(train),
            "gym_steps_rejected": rejected,
            "generated_problems": len(problems), "steps": res.steps, "final_loss": res.final_loss}
    from ..io import write_atomic

    write_atomic(info_path, json.dumps(info, indent=1))
    return lm, info


def cell_key(cfg: TrigoBenchConfig, subset: str, searcher: str) -> str:
    """The cache name of one (subset, searcher) cell: a hash of everything that shapes it."""
    shaping = {k: getattr(cfg, k)
               for k in ("limit", "problems", "attempts", "max_expansions", "samples", "time_limit", "width")}
    if searcher == "lm":
        shaping["policy"] = [cfg.policy, cfg.train_limit, cfg.gen_problems, cfg.gen_seed]
        if cfg.gym_share:
            shaping["gym_share"] = cfg.gym_share
        shaping["generator"] = GENERATOR_VERSION
        if cfg.policy_mode != "sample":  # (the key of a default run stays what it was)
            shaping["policy_mode"] = cfg.policy_mode
    return f"prover-{subset}-{searcher}-{_hash({'s': shaping, 'data': cfg.data, 'v': SCHEMA_VERSION})}"


class _Rows:
    """The finished problems of a cell that is still running: one JSON line each in ``<key>.partial.jsonl`` beside
    the cache, so a stopped cell resumes at the problem where it stopped (a torn last line is ignored)."""

    def __init__(self, work: Path, key: str) -> None:
        self.path = work / "parts" / f"{key}.partial.jsonl"
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["name"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def add(self, row: dict) -> None:
        self.rows[row["name"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _cell_record(subset: str, searcher: str, rows: list[dict], report: dict, seconds: float,
                 planned: int) -> dict[str, Any]:
    """pass@1 / pass@8 and what was spent, from the cell's per-problem rows (``planned`` problems; fewer rows is a
    partial cell, marked so)."""
    from ..reason import prover as pv

    p1, p8, stops = [], [], {}
    for r in rows:
        n_att = r.get("attempts", 0)
        p1.append(pv.pass_at_k(n_att, r["successes"], 1) if n_att else 0.0)
        p8.append(pv.pass_at_k(n_att, r["successes"], 8) if n_att else 0.0)
        for stop in r.get("stops", []):
            stops[stop] = stops.get(stop, 0) + 1
    n = len(rows)
    rec = {"subset": subset, "searcher": searcher, "n": n, "load": report,
           "unloadable": sum(r.get("kind") == "unloadable" for r in rows),
           "search_errors": sum(r.get("kind") == "error" for r in rows),
           "pass1": sum(p1) / n if n else None, "pass8": sum(p8) / n if n else None, "stops": stops,
           "problems": rows, "seconds": seconds}
    if n < planned:
        rec["partial"] = {"done": n, "planned": planned}
    return rec


def run_cell(cfg: TrigoBenchConfig, env, subset: str, searcher: str, policy, work: Path) -> dict[str, Any]:
    """One (subset, searcher) cell of B: ``attempts`` attempts per problem; pass@1, pass@8 and what was spent.
    Each finished problem is kept (:class:`_Rows`), so a stopped cell resumes where it stopped."""
    from ..reason import prover as pv

    stmts, report = load_subset(cfg, subset)
    key = cell_key(cfg, subset, searcher)
    cache = ResultCache(work / "parts")
    hit = cache.load(key)
    if hit is not None:
        return hit
    done = _Rows(work, key)
    t0 = time.perf_counter() - sum(r.get("seconds", 0.0) for r in done.rows.values())
    from ..progress import progress_bar

    bar = progress_bar(total=len(stmts), desc=f"{searcher} on {subset}", unit="problem", disable=not _bars(cfg),
                       initial=sum(st.name in done.rows for st in stmts))
    for st in stmts:
        if st.name in done.rows:
            continue
        check_stop(f"{searcher} on {subset}")
        t1 = time.perf_counter()
        try:
            start = env.start(st)
        except ValueError as exc:  # a statement the gym cannot hold: counted as unproved, reported
            done.add({"name": st.name, "kind": "unloadable", "error": str(exc)[:300], "successes": 0})
            bar.update(1)
            continue
        try:
            runs = pv.attempts(searcher, env, start, cfg.attempts, policy=policy,
                               max_expansions=cfg.max_expansions, time_limit=cfg.time_limit, samples=cfg.samples,
                               width=cfg.width, policy_mode=cfg.policy_mode)
        except Exception as exc:  # (Ctrl-C is not an Exception) a gym failure on one problem: unproved, reported
            log.warning("%s on %s: %s failed with %s: %s", searcher, subset, st.name, type(exc).__name__, exc)
            done.add({"name": st.name, "kind": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                      "successes": 0})
            bar.update(1)
            continue
        check_stop(f"{searcher} on {subset}")  # a search cut short by the stop is not kept
        best = next((r for r in runs if r.proved), None)
        done.add({"name": st.name, "successes": sum(r.proved for r in runs), "attempts": len(runs),
                  "stops": [r.stop for r in runs], "expansions": [r.expansions for r in runs],
                  "proof": best.proof if best else None, "seconds": time.perf_counter() - t1})
        bar.update(1)
        bar.set_postfix(pass8=f"{_cell_record(subset, searcher, list(done.rows.values()), report, 0, 0)['pass8']:.2f}",
                        refresh=False)
    bar.close()
    rows = [done.rows[st.name] for st in stmts]
    record = cache.store(key, _cell_record(subset, searcher, rows, report, time.perf_counter() - t0, len(stmts)),
                         f"{searcher} on {subset}")
    done.path.unlink(missing_ok=True)
    return record


def cached_cell(cfg: TrigoBenchConfig, subset: str, searcher: str, work: Path) -> dict[str, Any] | None:
    """A cell from the cache without running anything: the finished cell, else a partial one from the problems
    already done (marked ``partial``), else None."""
    key = cell_key(cfg, subset, searcher)
    hit = ResultCache(work / "parts").load(key)
    if hit is not None:
        return hit
    done = _Rows(work, key)
    if not done.rows:
        return None
    stmts, report = load_subset(cfg, subset)
    rows = [done.rows[st.name] for st in stmts if st.name in done.rows]
    return _cell_record(subset, searcher, rows, report, sum(r.get("seconds", 0.0) for r in rows), len(stmts))


def run_prover(cfg: TrigoBenchConfig, work: Path) -> dict[str, Any]:
    from ..reason import prover as pv

    if cfg.only_cached:
        return cached_prover(cfg, work)
    env = pv.trigo_env()
    policy, policy_info = (None, None)
    if "lm" in cfg.searchers:
        policy, policy_info = _policy(cfg, env, work)
    cells: dict[str, dict[str, Any]] = {}
    for subset in cfg.subsets:
        for searcher in cfg.searchers:
            cells.setdefault(subset, {})[searcher] = run_cell(cfg, env, subset, searcher, policy, work)
    return {"cells": cells, "policy": policy_info}


def cached_prover(cfg: TrigoBenchConfig, work: Path) -> dict[str, Any]:
    """Part B from the cache only (``--only-cached``): finished cells, partial ones marked ``partial``, and the
    cells with nothing cached listed under ``not_run``; nothing is trained or searched."""
    info = None
    if "lm" in cfg.searchers:
        path = _policy_dir(cfg, work, len(load_step_pairs(cfg)[0])) / "policy_data.json"
        info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    cells: dict[str, dict[str, Any]] = {}
    missing = []
    for subset in cfg.subsets:
        for searcher in cfg.searchers:
            cell = cached_cell(cfg, subset, searcher, work)
            if cell is None:
                missing.append(f"{subset}/{searcher}")
            else:
                cells.setdefault(subset, {})[searcher] = cell
    return {"cells": cells, "policy": info, "not_run": missing}


# ------------------------------------------------------------------------------------------------ summary
def summarise(tactic: dict | None, prover: dict | None) -> dict[str, Any]:
    """The summary keys (:data:`SUMMARY_KEYS`, fractions) and the two goals (None where not measured)."""
    s: dict[str, Any] = {k: None for k in SUMMARY_KEYS}
    goals: dict[str, Any] = {"tactic_lm_beats_best_anchor_by_5_points": None, "lm_prover_ge_heuristic_pass8_tg2": None}
    notes: dict[str, str] = {}
    if tactic:
        s["tactic_em"] = tactic["lm"]["em"]
        s["tactic_em_anchor"] = max(tactic["always"]["em"], tactic["bm25"]["em"])
        s["tactic_em_always"] = tactic["always"]["em"]
        s["tactic_em_bm25"] = tactic["bm25"]["em"]
        s["tactic_nll_per_token"] = tactic["lm"]["nll_per_token"]
        goals["tactic_lm_beats_best_anchor_by_5_points"] = s["tactic_em"] >= s["tactic_em_anchor"] + 0.05
    else:
        notes["tactic_lm_beats_best_anchor_by_5_points"] = "part A (tactic) not run"
    cells = (prover or {}).get("cells", {})
    for subset, by in cells.items():
        for searcher, cell in by.items():
            s[f"pass1_{subset}_{searcher}"] = cell["pass1"]
            s[f"pass8_{subset}_{searcher}"] = cell["pass8"]
    partial = [f"{sub}/{x}" for sub, by in cells.items() for x, c in by.items() if c.get("partial")]
    if any(p in partial for p in ("tg2/lm", "tg2/heuristic")):
        notes["lm_prover_ge_heuristic_pass8_tg2"] = "a TG-2 cell is partial (not every problem was searched)"
    elif s.get("pass8_tg2_lm") is not None and s.get("pass8_tg2_heuristic") is not None:
        goals["lm_prover_ge_heuristic_pass8_tg2"] = s["pass8_tg2_lm"] >= s["pass8_tg2_heuristic"]
    else:
        notes["lm_prover_ge_heuristic_pass8_tg2"] = "TG-2 was not run with both the lm and heuristic searchers"
    s["goals"], s["goal_notes"] = goals, notes
    return s


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown_table(results: dict[str, Any]) -> str:
    """The README tables of a results dict (or a loaded results JSON)."""
    s, c = results["summary"], results["config"]
    lines: list[str] = []
    t = results.get("tactic")
    if t:
        lines += [f"Next-tactic prediction, TG-REAL valid ({t['n_valid']} steps; LM trained on {t['n_train']} steps, "
                  f"{t['lm_params'] / 1e6:.2f}M parameters):", "",
                  "| predictor | exact match | NLL (nats/token) |", "|---|---|---|",
                  f"| always `{t['always']['tactic']}` | {_f(t['always']['em'])} | – |",
                  f"| BM25 nearest goal | {_f(t['bm25']['em'])} | – |",
                  f"| morphlm LM (greedy) | {_f(t['lm']['em'])} | {_f(t['lm']['nll_per_token'])} |", ""]
    cells = (results.get("prover") or {}).get("cells") or {}
    if cells:
        searchers = [x for x in SEARCHERS if any(x in by for by in cells.values())]
        mode = c.get("policy_mode", "sample")
        how = "free LM samples" if mode == "sample" else "LM-sampled among the gym's legal actions"
        lines += [f"Gym proving: pass@1 / pass@8 over {c['attempts']} attempts, ≤ {c['max_expansions']} expansions "
                  f"({c['samples']} {how} per LM expansion), ≤ {c['time_limit']:g} s per attempt:", "",
                  "| subset | problems | " + " | ".join(searchers) + " |", "|---|---|" + "---|" * len(searchers)]
        def cell(c: dict) -> str:
            part = c.get("partial")
            return f"{_f(c['pass1'])} / {_f(c['pass8'])}" + (f" ({part['done']} of {part['planned']})" if part else "")

        for subset, by in cells.items():
            n = max(c.get("partial", {}).get("planned", c["n"]) for c in by.values())
            lines.append(f"| {SUBSETS.get(subset, subset)} | {n} | " + " | ".join(
                cell(by[x]) if x in by else "–" for x in searchers) + " |")
        not_run = (results.get("prover") or {}).get("not_run") or []
        if not_run or any(c.get("partial") for by in cells.values() for c in by.values()):
            lines += ["", "(k of n): a partial cell, pass@k over the first k problems searched when the run was "
                      "assembled from the cache" + (f"; not run: {', '.join(not_run)}" if not_run else "") + "."]
        bad = [f"{subset} {x}: {c.get('unloadable', 0)} unloadable, {c.get('search_errors', 0)} failed"
               for subset, by in cells.items() for x, c in by.items()
               if c.get("unloadable", 0) or c.get("search_errors", 0)]
        if bad:
            lines += ["", "Counted as unproved (the gym could not hold the statement, or the search failed): "
                      + "; ".join(bad) + "."]
        lines.append("")
    goals = ", ".join(f"{k}: {v}" + (f" ({s['goal_notes'][k]})" if k in s.get("goal_notes", {}) else "")
                      for k, v in s["goals"].items())
    machine = results.get("machine")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    a = f"first {c['limit']} valid steps" if c.get("limit") else "all valid steps"
    n_b = c.get("problems") if c.get("problems") is not None else c.get("limit")
    limit = a if not cells else f"{a}, " + (f"first {n_b} problems per subset" if n_b else "every problem")
    lines.append(f"Profile {c['profile']} ({limit}). Goals — {goals}. {cpu + ', ' if cpu else ''}torch "
                 f"{results.get('torch', '?')}, commit {str(results.get('commit', '?'))[:10]}.")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], png: str | Path) -> Path:
    """Left: exact match of the anchors and the LM; right: pass@8 per subset and searcher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.metrics import save_figure

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    t = results.get("tactic")
    if t:
        names = ["always rw this,", "BM25", "morphlm LM"]
        vals = [t["always"]["em"], t["bm25"]["em"], t["lm"]["em"]]
        ax_a.bar(names, vals, color=["tab:gray", "tab:orange", "tab:blue"])
        ax_a.set_title(f"next tactic, TG-REAL valid ({t['n_valid']} steps)", fontsize=9)
    ax_a.set_ylabel("exact match")
    ax_a.set_ylim(0, 1)
    cells = (results.get("prover") or {}).get("cells") or {}
    colors = {"bfs": "tab:gray", "heuristic": "tab:orange", "lm": "tab:blue"}
    for j, (subset, by) in enumerate(cells.items()):
        for i, x in enumerate(SEARCHERS):
            if x in by and by[x]["pass8"] is not None:
                ax_b.bar(j + (i - 1) * 0.27, by[x]["pass8"], width=0.27, color=colors[x], label=x if j == 0 else None)
    ax_b.set_xticks(range(len(cells)), [SUBSETS.get(s, s).split(" (")[0] for s in cells])
    ax_b.set_ylim(0, 1)
    ax_b.set_ylabel("pass@8")
    c = results["config"]
    ax_b.set_title(f"gym proving, ≤ {c['max_expansions']} expansions", fontsize=9)
    if cells:
        ax_b.legend(fontsize=8)
    fig.suptitle(f"TRIGO bench ({c['profile']}{', limit ' + str(c['limit']) if c.get('limit') else ''})", fontsize=9)
    try:
        return save_figure(fig, png)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ the benchmark
def run_benchmark(cfg: TrigoBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark and write the results JSON (+ plot next to it); returns the results. A Ctrl-C /
    SIGTERM stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results."""
    with STOP:
        return _run(cfg, out_json=out_json, work_dir=work_dir, plot=plot)


def _run(cfg: TrigoBenchConfig, *, out_json, work_dir, plot) -> dict[str, Any]:
    import torch

    from .common import metadata, write_json

    cfg.validate()
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(int(os.environ.get("MORPHLM_BENCH_THREADS", "1")), 1))
    try:
        tactic = None
        if "tactic" in cfg.parts:
            tactic = cached_tactic(cfg, work) if cfg.only_cached else run_tactic(cfg, work)
        prover = run_prover(cfg, work) if "prover" in cfg.parts else None
    finally:
        torch.set_num_threads(threads)
    results = {
        "benchmark": "trigo", "schema_version": SCHEMA_VERSION, **metadata(),
        "summary": summarise(tactic, prover),
        "protocol": {
            "tactic": "TG-REAL valid GOAL → PROOFSTEP steps; exact match of the whitespace-normalized greedy tactic; "
                      "NLL of the gold tactic + eos (nats per token); anchors: always `rw this,`, BM25 (k1 1.5, "
                      "b 0.75) nearest training goal's tactic",
            "prover": "pass@k = 1 − C(n−c,k)/C(n,k) over n = attempts independent attempts (seeds) per problem; "
                      "each attempt ≤ max_expansions expansions and ≤ time_limit s; LM: best-first on cumulative "
                      "log-prob with `samples` sampled actions per expansion; BFS / heuristic: every legal action "
                      "(or `width` of them, shuffled by the seed) per expansion; visited states deduplicated",
            "checker": "the SymPy gym (morphlm.reason.trigo_gym), a stand-in for Lean: every step checked there",
        },
        "config": {**asdict(cfg)},
        "tactic": tactic, "prover": prover, "wall_s": time.perf_counter() - t0,
    }
    write_json(out_json, results)
    if plot:
        results["plot"] = str(plot_results(results, out_json.with_suffix(".png")))
        write_json(out_json, results)
    return results
