"""The Hard-Mode answer-discovery benchmark: ``morphlm bench discover``.

Discover-and-Prove (Liu et al., ACL 2026, arXiv 2604.15839) splits Hard-Mode theorem proving into finding the
answer and proving the statement with it. Lean cannot run here, so this benchmark measures the first half on
miniF2F (Zheng, Han, Polu, ICLR 2022, arXiv 2109.00110), test and valid (244 statements each): every statement
whose conclusion is ``LHS = <number>`` gets its constant masked (:mod:`morphlm.reason.hardmode`), and three arms try
to recover it:

* ``sympy``: the SymPy discoverer (:func:`morphlm.reason.discover.discover_sympy`), on every statement;
* ``single``: a chat model asked once, the last number of its reply taken as the answer;
* ``loop``: the same model in a propose → substitute-and-check → correct loop, at most ``rounds`` proposals.

The LM arms use SmolLM2-135M-Instruct imported from GGUF (when the GGUF importer and the fetched file are available)
or any morphlm checkpoint directory given with ``--model``; they run on the first ``lm_limit`` answer-style
statements of each split (CPU decoding is slow), greedy, ``max_new_tokens`` per reply. Without a model they are
recorded as skipped, with the reason.

Counted per arm and split, by source (mathd / amc / aime / imo / ...): recovered (equal to the gold constant,
exactly), wrong, abstained (no answer, or a statement without an answer-style conclusion), and ``gold_false`` —
an answer that differs from the gold constant where an assignment satisfying EVERY hypothesis exactly exists, so
the Easy statement itself is false (miniF2F has a few such statements). Summary keys ``discover_sympy_test``,
``discover_single_test``, ``discover_loop_test`` count recovered answers out of all 244 test statements.
``kv_cache_speedup`` is the KV-cache speed-up of the chat model's decoding, measured by the generation module's
``measure_kv_speedup`` when it exists, else None with the reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("morphlm.bench.discover")

SCHEMA_VERSION = 1
SUMMARY_KEYS = ("discover_sympy_test", "discover_single_test", "discover_loop_test", "kv_cache_speedup")
STATUSES = ("recovered", "wrong", "gold_false", "abstain")


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


@dataclass
class DiscoverBenchConfig:
    profile: str = "full"  # full | quick
    splits: list[str] = field(default_factory=lambda: ["test", "valid"])
    limit: int | None = None  # statements per split for the SymPy arm (None: all)
    lm_limit: int = 40  # answer-style statements per split for the LM arms
    max_new_tokens: int = 64
    rounds: int = 5
    seconds: float = 10.0  # SymPy time limit per method and statement
    model: str | None = None  # a checkpoint directory for the LM arms (None: SmolLM2 when available)
    lm: bool = True  # run the LM arms at all
    root: str | None = None  # miniF2F folder (None: $MORPHLM_DATA/minif2f)

    def validate(self) -> None:
        if self.profile not in ("full", "quick"):
            raise BenchError(f"profile={self.profile!r}: choose full or quick")
        bad = [s for s in self.splits if s not in ("test", "valid")]
        if bad or not self.splits:
            raise BenchError(f"splits={self.splits}: choose from test, valid")
        for name, v, lo in (("limit", self.limit, 1), ("lm_limit", self.lm_limit, 0),
                            ("max_new_tokens", self.max_new_tokens, 1), ("rounds", self.rounds, 1)):
            if v is not None and v < lo:
                raise BenchError(f"{name}={v}: must be >= {lo}")
        if not self.seconds > 0:
            raise BenchError(f"seconds={self.seconds}: the per-method SymPy time limit must be positive")
        if self.model is not None and not Path(self.model).is_dir():
            raise BenchError(f"--model {self.model}: not a directory; pass a morphlm checkpoint directory (e.g. "
                             f"`morphlm convert FILE.gguf DIR`)")


def full_config(**changes) -> DiscoverBenchConfig:
    return DiscoverBenchConfig(**changes)


def quick_config(**changes) -> DiscoverBenchConfig:
    """CI size: the SymPy arm on the first 40 test statements; LM arms only with an explicit --model, 4 problems."""
    base = dict(profile="quick", splits=["test"], limit=40, lm_limit=4, max_new_tokens=24, rounds=2, seconds=5.0)
    base.update(changes)
    if "model" not in changes:
        base["lm"] = changes.get("lm", False)
    return DiscoverBenchConfig(**base)


def results_path(cfg: DiscoverBenchConfig) -> Path:
    from .common import RESULTS_DIR

    return RESULTS_DIR / ("discover-quick.json" if cfg.profile == "quick" else "discover.json")


# ------------------------------------------------------------------------------------------- the LM
def _cache_dir() -> Path:
    return Path(os.environ.get("MORPHLM_CACHE", Path.home() / ".cache" / "morphlm")).expanduser()


def resolve_model(cfg: DiscoverBenchConfig) -> tuple[str | None, str]:
    """(checkpoint dir, description) of the chat model, or (None, why the LM arms are skipped)."""
    if not cfg.lm:
        return None, ("LM arms off (--quick runs them only with --model DIR)" if cfg.profile == "quick"
                      else "LM arms off (--no-lm)")
    if cfg.model is not None:
        return cfg.model, f"checkpoint {cfg.model}"
    try:
        from ..data import remote
        from ..interop import gguf
    except ImportError as exc:
        return None, f"the GGUF importer is not available on this build ({exc})"
    cached = getattr(remote, "cached_smollm2", None)
    fetch = getattr(remote, "fetch_smollm2", None)
    importer = getattr(gguf, "import_gguf", None)
    if fetch is None or importer is None:
        return None, "SmolLM2 cannot be obtained here: fetch_smollm2/import_gguf are not in this build"
    out = _cache_dir() / "smollm2" / "converted"
    if (out / "model.safetensors").is_file():
        return str(out), "SmolLM2-135M-Instruct (GGUF Q4_1 → float32, cached conversion)"
    try:
        src = (cached(_cache_dir()) if cached else None) or fetch(_cache_dir())
        importer(src, out)
    except Exception as exc:  # a failed download or import only skips the LM arms; the reason is recorded
        return None, f"SmolLM2 could not be fetched or imported: {type(exc).__name__}: {exc}"
    return str(out), "SmolLM2-135M-Instruct (GGUF Q4_1 → float32)"


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def checkpoint_chat(run_dir: str, max_new_tokens: int, *, retry_temperature: float = 0.7,
                    seed: int = 0) -> tuple[Callable[[list[dict]], str], Any, Any]:
    """``chat(messages) -> str`` over a checkpoint: the conversation is rendered with the checkpoint's chat template
    (lineage.json ``chat_template``, as a GGUF import records it) or ChatML, decoding stops at the turn's end token.
    The first answer of a conversation is greedy (so single-shot and the loop's first proposal are the same); an
    answer after feedback (a conversation with more than one user turn) is sampled at ``retry_temperature``
    (top-k 50, one seeded generator for the whole run), since greedy decoding of a small model repeats the rejected
    answer verbatim. Returns (chat, model, prompt ids of a sample prompt) — the last two for the speed probe."""
    import torch
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from ..model.generate import generate
    from ..train import checkpoint as ckpt

    model, tok, record = ckpt.open_checkpoint(run_dir, device="cpu", need_tokenizer="the LM arms need a tokenizer")
    template = record.lineage.get("chat_template") or CHATML
    render = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    eos_token = record.lineage.get("eos_token") or "<|im_end|>"
    eos = tok.token_to_id(eos_token)
    ctx = model.config.max_seq_len

    def encode(messages):
        text = render.render(messages=messages, add_generation_prompt=True)
        ids = tok.encode(text, allow_special=True)
        keep = max(ctx - max_new_tokens, 1)
        if len(ids) > keep:
            log.warning("prompt of %d tokens cut to its last %d (context %d)", len(ids), keep, ctx)
            ids = ids[-keep:]
        return ids

    gen = torch.Generator().manual_seed(seed)

    def chat(messages: list[dict]) -> str:
        ids = encode(messages)
        x = torch.tensor([ids], dtype=torch.long)
        retry = sum(m["role"] == "user" for m in messages) > 1
        y = generate(model, x, max_new_tokens, temperature=retry_temperature if retry else 0, top_k=50,
                     generator=gen, eos_id=eos)[0, len(ids):].tolist()
        if eos is not None and eos in y:
            y = y[:y.index(eos)]
        return tok.decode(y, skip_special_tokens=True).strip()

    sample = encode([{"role": "user", "content": "What is 12 + 7?"}])
    return chat, model, sample


def _speed(x) -> str:
    return "not measured" if x is None else f"{x:.2f}×"


def kv_cache_speedup(model, sample_ids, max_new_tokens: int) -> tuple[float | None, str]:
    """The generation module's ``measure_kv_speedup`` on ``model`` (None with the reason when it is missing)."""
    if model is None:
        return None, "no chat model was loaded"
    import importlib

    try:  # the module, not the function `morphlm.model.generate` that the package re-exports under the same name
        gen = importlib.import_module("morphlm.model.generate")
    except ImportError as exc:
        return None, f"no generation module ({exc})"
    measure = getattr(gen, "measure_kv_speedup", None)
    if measure is None:
        return None, "this build's generation has no KV cache (measure_kv_speedup is missing)"
    import torch

    out = measure(model, torch.tensor([sample_ids], dtype=torch.long), max_new_tokens)
    return float(out["kv_cache_speedup"]), (f"cached {out['cached_tok_s']:.1f} tok/s vs uncached "
                                            f"{out['uncached_tok_s']:.1f} tok/s, {max_new_tokens} new tokens, same "
                                            f"tokens: {out['same_tokens']}")


# ------------------------------------------------------------------------------------------- counting
def tally(records: list[dict], statements: list, skipped: list[str] = ()) -> dict[str, Any]:
    """Counts by status, overall and by source; statements without a record, and the malformed statements the
    loader skipped (``file:line: NAME: why``), count as abstained."""
    import re

    from ..reason.formal import source_of

    by: dict[str, Counter] = defaultdict(Counter)
    seen = {r["name"] for r in records}
    total = Counter()
    for r in records:
        by[r["source"]][r["status"]] += 1
        total[r["status"]] += 1
    for s in statements:
        if s.name not in seen:
            by[s.source]["abstain"] += 1
            total["abstain"] += 1
    for line in skipped:
        m = re.search(r":\d+: (\S+?):", line)
        by[source_of(m.group(1)) if m else "unknown"]["abstain"] += 1
        total["abstain"] += 1
    return {"total": {k: total.get(k, 0) for k in STATUSES},
            "by_source": {src: {k: c.get(k, 0) for k in STATUSES} for src, c in sorted(by.items())}}


def _fmt_answer(v) -> str | None:
    from ..reason.discover import to_lean

    if v is None:
        return None
    text = to_lean(v)
    return text if len(text) <= 200 else text[:200] + "…"


# ------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: DiscoverBenchConfig, *, out_json: str | Path | None = None,
                  chat: Callable[[list[dict]], str] | None = None) -> dict[str, Any]:
    """Run every arm and write the results JSON; returns the results. ``chat`` replaces the model (tests)."""
    from ..reason.discover import build_problem, discover_sympy, discovery_loop, single_shot
    from ..reason.formal import load_minif2f, statistics
    from .common import metadata, write_json
    from .runner import STOP, check_stop

    cfg.validate()
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    model_desc, lm_reason, model, sample = None, None, None, None
    if chat is None:
        run_dir, why = resolve_model(cfg)
        if run_dir is None:
            lm_reason = why
        else:
            chat, model, sample = checkpoint_chat(run_dir, cfg.max_new_tokens)
            model_desc = why
    else:
        model_desc = "a chat callable passed by the caller"
    arms: dict[str, dict] = {"sympy": {}, "single": {}, "loop": {}}
    stats, records_out = {}, {}
    with STOP:
        for split in cfg.splits:
            fs = load_minif2f(split, cfg.root)
            stats[split] = statistics(fs)
            statements = fs.statements[:cfg.limit] if cfg.limit else fs.statements
            skipped = fs.skipped if cfg.limit is None else []
            n_total = len(statements) + len(skipped)
            problems = [p for p in (build_problem(s) for s in statements) if p is not None]
            sym = []
            forced = {}
            for p in problems:
                check_stop("bench discover (nothing is cached: rerun the command)")
                d = discover_sympy(p, seconds=cfg.seconds)
                forced[p.stmt.name] = d.answer
                sym.append({"name": d.name, "source": d.source, "status": d.status, "method": d.method,
                            "answer": _fmt_answer(d.answer), "gold": p.hard.gold, "seconds": round(d.seconds, 3),
                            "reason": d.reason[:300]})
            arms["sympy"][split] = {**tally(sym, statements, skipped), "n": n_total, "skipped": skipped, "answer_style": len(problems),
                                    "seconds": round(sum(r["seconds"] for r in sym), 2)}
            records_out.setdefault("sympy", {})[split] = sym
            if chat is None:
                continue
            lm_problems = problems[:cfg.lm_limit]
            for arm in ("single", "loop"):
                recs = []
                t_arm = time.perf_counter()
                for p in lm_problems:
                    check_stop("bench discover (nothing is cached: rerun the command)")
                    r = (single_shot(chat, p) if arm == "single"
                         else discovery_loop(chat, p, rounds=cfg.rounds, forced=forced[p.stmt.name]))
                    recs.append({"name": r.name, "source": r.source, "status": r.status,
                                 "answer": _fmt_answer(r.answer), "gold": p.hard.gold, "rounds": r.rounds,
                                 "reply": next((m["content"][:300] for m in reversed(r.transcript)
                                                if m["role"] == "assistant"), "")})
                    log.info("%s %s %s: %s (gold %s)", arm, split, r.name, r.status, p.hard.gold)
                arms[arm][split] = {**tally(recs, [p.stmt for p in lm_problems]), "n": len(lm_problems),
                                    "of_answer_style": len(problems), "seconds": round(time.perf_counter() - t_arm, 1),
                                    "mean_rounds": (sum(r["rounds"] for r in recs) / len(recs)) if recs else None}
                records_out.setdefault(arm, {})[split] = recs
    speed, speed_note = (kv_cache_speedup(model, sample, cfg.max_new_tokens) if model is not None
                         else (None, lm_reason or "the chat model was passed in by the caller"))

    def recovered(arm):
        return arms[arm].get("test", {}).get("total", {}).get("recovered") if "test" in arms[arm] else None

    results = {
        "benchmark": "discover", "schema_version": SCHEMA_VERSION, **metadata(),
        "summary": {"discover_sympy_test": recovered("sympy"), "discover_single_test": recovered("single"),
                    "discover_loop_test": recovered("loop"), "kv_cache_speedup": speed,
                    "wrong_sympy_test": arms["sympy"].get("test", {}).get("total", {}).get("wrong"),
                    "notes": {"kv_cache_speedup": speed_note,
                              **({"lm_arms": f"skipped: {lm_reason}"} if lm_reason else {})}},
        "protocol": {
            "hard_mode": "conclusion `LHS = <numeric literal>` → `LHS = NAME_solution`, the literal kept as gold",
            "grading": "exact equality with the gold constant evaluated in the answer's Lean type (SymPy; agreement "
                       "to 60 digits only where SymPy cannot decide)",
            "gold_false": "answer ≠ gold AND an assignment satisfying every hypothesis exactly exists: the Easy "
                          "statement is false; counted apart from wrong",
            "prove": "stand-in for Lean: substitute the answer and check the conclusion against the value the "
                     "hypotheses force (SymPy)",
            "lm": f"first answer greedy, answers after feedback sampled (T 0.7, top-k 50, seed 0), "
                  f"{cfg.max_new_tokens} new tokens per reply; loop: ≤ {cfg.rounds} proposals, feedback "
                  f"'your answer X fails because ...' from the substitution check (with larger/smaller); the first "
                  f"{cfg.lm_limit} answer-style statements of each split",
            "denominator": "discover_*_test count recovered answers out of the 244 test statements",
        },
        "config": asdict(cfg), "model": model_desc, "lm_skipped": lm_reason, "statistics": stats, "arms": arms,
        "records": records_out, "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json(out_json, results)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """The README table: per arm and split, recovered / wrong / gold-false / abstained, and by source."""
    lines = ["| arm | split | problems | recovered | wrong | gold false | abstained | by source (recovered/n) |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, by_split in results["arms"].items():
        for split, a in by_split.items():
            t = a["total"]
            src = ", ".join(f"{s} {c['recovered']}/{sum(c.values())}" for s, c in a["by_source"].items())
            lines.append(f"| {arm} | {split} | {a['n']} | {t['recovered']} | {t['wrong']} | {t['gold_false']} | "
                         f"{t['abstain']} | {src} |")
    s = results["summary"]
    machine = results.get("machine")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    notes = "; ".join(f"{k}: {v}" for k, v in s.get("notes", {}).items())
    n_test = results["arms"].get("sympy", {}).get("test", {}).get("n", "?")
    lines += ["", f"Summary — recovered on test: SymPy {s['discover_sympy_test']}/{n_test}, single-shot "
                  f"{s['discover_single_test']}, loop {s['discover_loop_test']} (LM arms: of their first "
                  f"{results['config']['lm_limit']} answer-style statements); KV-cache speed-up "
                  f"{_speed(s['kv_cache_speedup'])}. {notes}. "
                  f"Model: {results.get('model') or 'none'}. {cpu + ', ' if cpu else ''}torch "
                  f"{results.get('torch', '?')}, commit {str(results.get('commit', '?'))[:10]}."]
    return "\n".join(lines)
