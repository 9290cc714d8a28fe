"""Next-tactic prediction on TRIGO's GOAL → PROOFSTEP steps (Xiong et al., EMNLP 2023, arXiv 2310.10180, §4):
a tiny morphlm causal LM trained on the step text, scored by exact match (greedy decoding) and by the NLL of the
gold tactic, against two anchors that need no training — always the most frequent tactic (`rw this,`) and BM25
nearest-goal retrieval (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond",
§3.4: Okapi BM25 with k1 = 1.5, b = 0.75 and the non-negative idf log(1 + (N − n + 0.5)/(n + 0.5))).

The same machinery serves the prover's policy (:mod:`morphlm.reason.prover`): any list of (context, target) text
pairs with a prompt template becomes a training set; :class:`PairLM` bundles the model, its tokenizer and the
template, and answers greedy predictions, target NLLs and sampled targets with their log-probabilities.

Text format: ``<prompt>`` = ``template.format(goal=...)`` (``GOAL {goal} PROOFSTEP `` for the tactic task, TRIGO's
own query), ``<target>`` = the tactic followed by the tokenizer's eos token. Training loss covers the target
tokens only (the prompt positions are labelled -100). A goal longer than ``max_prompt_tokens`` keeps its FIRST
tokens: a Lean tactic state lists the goal the tactic acts on first (reconstruction: the paper does not say how
TRIGO's 1,024-token GPT-2 context truncates; median goals are far below either limit).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

TACTIC_TEMPLATE = "GOAL {goal} PROOFSTEP "
ALWAYS_TACTIC = "rw this,"


class TacticError(ValueError):
    """Bad input to next-tactic training or evaluation; the message names the problem and the fix."""


def normalize(text: str) -> str:
    """A tactic (or action) as compared by exact match: surrounding whitespace stripped, runs of whitespace as one
    space."""
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------------ BM25 anchor
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9'.]*|\d+|[^\sA-Za-z_0-9]")


def bm25_tokens(text: str) -> list[str]:
    """Words for BM25: identifiers (``sin``, ``cos_sq'``), integers and every other non-space symbol."""
    return _WORD.findall(text)


class BM25:
    """Okapi BM25 over a fixed list of documents (k1 = 1.5, b = 0.75; Robertson & Zaragoza 2009, §3.4)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        if not docs:
            raise TacticError("BM25 needs at least one document (the training goals were empty)")
        self.k1, self.b = float(k1), float(b)
        self.tfs = [Counter(bm25_tokens(d)) for d in docs]
        self.lens = [sum(tf.values()) for tf in self.tfs]
        self.avg = sum(self.lens) / len(self.lens) or 1.0
        df: Counter = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {w: math.log(1.0 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        # per word: the documents containing it and their BM25 term weight idf · f(k1+1)/(f + k1(1 − b + b·|d|/avg))
        docs_of: dict[str, list[int]] = {}
        weight_of: dict[str, list[float]] = {}
        for i, tf in enumerate(self.tfs):
            denom = self.k1 * (1 - self.b + self.b * self.lens[i] / self.avg)
            for w, f in tf.items():
                docs_of.setdefault(w, []).append(i)
                weight_of.setdefault(w, []).append(self.idf[w] * f * (self.k1 + 1) / (f + denom))
        self.n = n
        self.postings = {w: (np.asarray(docs_of[w]), np.asarray(weight_of[w])) for w in docs_of}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (n_docs,)."""
        out = np.zeros(self.n)
        for w, qtf in Counter(bm25_tokens(query)).items():
            hit = self.postings.get(w)
            if hit is not None:
                out[hit[0]] += qtf * hit[1]
        return out

    def top(self, query: str) -> int:
        """Index of the best document (ties → the lowest index; no shared word → document 0)."""
        return int(np.argmax(self.scores(query)))


def anchor_always(eval_pairs: Sequence[tuple[str, str]], tactic: str = ALWAYS_TACTIC) -> dict[str, Any]:
    """Exact match of always predicting ``tactic``."""
    _check_pairs(eval_pairs, "evaluation")
    hits = sum(normalize(t) == normalize(tactic) for _, t in eval_pairs)
    return {"em": hits / len(eval_pairs), "hits": hits, "n": len(eval_pairs), "tactic": tactic}


def anchor_bm25(train_pairs: Sequence[tuple[str, str]], eval_pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Exact match of predicting the tactic of the BM25-nearest training goal."""
    _check_pairs(train_pairs, "training")
    _check_pairs(eval_pairs, "evaluation")
    index = BM25([g for g, _ in train_pairs])
    hits = sum(normalize(train_pairs[index.top(g)][1]) == normalize(t) for g, t in eval_pairs)
    return {"em": hits / len(eval_pairs), "hits": hits, "n": len(eval_pairs)}


def _check_pairs(pairs: Sequence[tuple[str, str]], what: str) -> None:
    if not pairs:
        raise TacticError(f"the {what} set has no (goal, tactic) pairs; check the step file it was read from")
    for i, p in enumerate(pairs[:1] if len(pairs) > 1000 else pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p)):
            raise TacticError(f"the {what} set's item {i} is {p!r}, not a (goal, tactic) pair of strings")


# ------------------------------------------------------------------------------------------------ the LM
@dataclass
class PairLMConfig:
    """Model, tokenizer and training settings of a (context → target) causal LM."""

    template: str = TACTIC_TEMPLATE
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    max_prompt_tokens: int = 224
    max_target_tokens: int = 32
    batch_size: int = 16
    steps: int = 2000
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    precision: str = "fp32"

    @property
    def seq_len(self) -> int:
        return self.max_prompt_tokens + self.max_target_tokens

    def validate(self) -> None:
        if "{goal}" not in self.template:
            raise TacticError(f"template {self.template!r} has no {{goal}} field; e.g. {TACTIC_TEMPLATE!r}")
        for name in ("max_prompt_tokens", "max_target_tokens", "batch_size", "steps", "d_model", "n_layers"):
            if int(getattr(self, name)) < 1:
                raise TacticError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.lr > 0:
            raise TacticError(f"lr={self.lr}: the learning rate must be positive")

    def model_config(self, vocab_size: int):
        from ..model.config import PRESETS, ModelConfig

        return ModelConfig.from_dict({**PRESETS["tiny-llama"], "name": "trigo-pair-lm", "vocab_size": vocab_size,
                                      "d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                                      "n_kv_heads": self.n_kv_heads, "max_seq_len": self.seq_len})

    def train_args(self):
        from ..train.optim import TrainArgs

        return TrainArgs(max_steps=self.steps, lr=self.lr, warmup_steps=min(self.warmup_steps, self.steps // 2),
                         weight_decay=self.weight_decay, seed=self.seed, progress=False, device="cpu",
                         precision=self.precision, check_memory=False)


def encode_pair(tokenizer, prompt: str, target: str | None, max_prompt: int, max_target: int) -> tuple[list[int], int]:
    """(ids, n_prompt): the prompt's first ``max_prompt`` tokens, then (when given) the target's first
    ``max_target - 1`` tokens and eos."""
    p = tokenizer.encode(prompt)[:max_prompt]
    if target is None:
        return p, len(p)
    t = tokenizer.encode(target)[: max_target - 1] + [tokenizer.eos_id]
    return p + t, len(p)


class PairBatches:
    """Fixed-shape batches of (prompt, target) rows for fit(): ``input_ids`` (B, seq_len) right-padded with pad,
    ``labels`` the next token at target positions and -100 elsewhere. ``train_batch(step)`` is a pure function of
    (seed, step), as fit() requires; ``val_batches`` are the first rows of ``val`` (or of train), in order."""

    def __init__(self, rows: list[tuple[list[int], int]], seq_len: int, pad_id: int, batch_size: int, seed: int = 0,
                 val_rows: list[tuple[list[int], int]] | None = None, eval_batches: int = 2) -> None:
        if not rows:
            raise TacticError("no training rows: the training pairs were empty")
        self.rows, self.seq_len, self.pad, self.bs, self.seed = rows, seq_len, pad_id, batch_size, seed
        self.val_rows = (val_rows or rows)[: batch_size * eval_batches]

    def _batch(self, rows: list[tuple[list[int], int]]) -> dict:
        import torch

        ids = torch.full((len(rows), self.seq_len), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), self.seq_len), -100, dtype=torch.long)
        for r, (seq, n_prompt) in enumerate(rows):
            seq = seq[: self.seq_len + 1]
            x = seq[:-1]
            ids[r, : len(x)] = torch.tensor(x)
            for t in range(max(n_prompt - 1, 0), len(seq) - 1):
                labels[r, t] = seq[t + 1]
        return {"input_ids": ids, "labels": labels}

    def train_batch(self, step: int) -> dict:
        import torch

        from ..data.batches import derive_seed

        g = torch.Generator().manual_seed(derive_seed("trigo-pairs", self.seed, int(step)) % (2**63))
        idx = torch.randint(0, len(self.rows), (self.bs,), generator=g).tolist()
        return self._batch([self.rows[i] for i in idx])

    def val_batches(self) -> list[dict]:
        return [self._batch(self.val_rows[i: i + self.bs]) for i in range(0, len(self.val_rows), self.bs)]


class PairLM:
    """A trained (context → target) causal LM: ``model``, ``tokenizer`` and the prompt ``cfg.template``."""

    def __init__(self, model, tokenizer, cfg: PairLMConfig) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg

    def prompt_ids(self, context: str) -> list[int]:
        return encode_pair(self.tokenizer, self.cfg.template.format(goal=context), None,
                           self.cfg.max_prompt_tokens, self.cfg.max_target_tokens)[0]

    def _decode(self, ids: list[int]) -> str:
        eos = self.tokenizer.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def greedy(self, context: str) -> str:
        """The greedy target for ``context`` (generation: morphlm.model.generate)."""
        import torch

        from ..model.generate import generate

        p = self.prompt_ids(context)
        out = generate(self.model, torch.tensor([p]), self.cfg.max_target_tokens, temperature=0.0,
                       eos_id=self.tokenizer.eos_id)
        return self._decode(out[0, len(p):].tolist())

    def target_logprobs(self, context: str, targets: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log-probs, number of tokens incl. eos) of each target after ``context``, teacher-forced."""
        import torch

        if not targets:
            return []
        rows = [encode_pair(self.tokenizer, self.cfg.template.format(goal=context), t, self.cfg.max_prompt_tokens,
                            self.cfg.max_target_tokens) for t in targets]
        return self._score_rows(rows)

    def shared_prompt_logprobs(self, context: str, targets: Sequence[str]) -> list[tuple[float, int]]:
        """:meth:`target_logprobs` for many targets of one context, the prompt run once: its keys and values are
        cached and repeated for every target (the same numbers up to float rounding, ≈ (prompt + target) / target
        times fewer FLOPs). Falls back to :meth:`target_logprobs` for a model without a KV cache."""
        import torch

        from ..model.attention import KVCache
        from ..model.transformer import kv_cache_unsupported

        if not targets:
            return []
        if kv_cache_unsupported(self.model.config) is not None:
            return self.target_logprobs(context, targets)
        p = self.prompt_ids(context)
        tgt = [encode_pair(self.tokenizer, "", t, 0, self.cfg.max_target_tokens)[0] for t in targets]
        width = max(len(t) for t in tgt)
        cache = KVCache(self.model.config.n_layers, len(p) + width)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            first = torch.log_softmax(self.model(torch.tensor([p]), kv_cache=cache).logits[0, -1].float(), dim=-1)
            out = [float(first[t[0]]) for t in tgt]
            if width > 1:
                ids = torch.full((len(tgt), width - 1), self.tokenizer.pad_id, dtype=torch.long)
                for r, t in enumerate(tgt):
                    ids[r, : len(t) - 1] = torch.tensor(t[:-1])
                logp = torch.log_softmax(self.model(ids, kv_cache=cache.repeat(len(tgt))).logits.float(), dim=-1)
                for r, t in enumerate(tgt):
                    if len(t) > 1:
                        out[r] += float(logp[r, torch.arange(len(t) - 1), torch.tensor(t[1:])].sum())
        self.model.train(was)
        return [(s, len(t)) for s, t in zip(out, tgt)]

    def _score_rows(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
        import torch

        batches = PairBatches(rows, max(len(s) for s, _ in rows) - 1, self.tokenizer.pad_id, len(rows))
        b = batches._batch(rows)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(b["input_ids"]).logits.float()  # (B, T, V)
        self.model.train(was)
        logp = torch.log_softmax(logits, dim=-1)
        labels = b["labels"]
        mask = labels != -100
        picked = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * mask  # (B, T)
        return [(float(picked[i].sum()), int(mask[i].sum())) for i in range(len(rows))]

    def sample(self, context: str, n: int, *, temperature: float = 1.0, generator=None) -> list[tuple[str, float]]:
        """``n`` sampled targets for ``context``, deduplicated, each with its log-probability under the model
        (temperature 1, eos included), best first."""
        import torch

        from ..model.generate import generate

        p = self.prompt_ids(context)
        out = generate(self.model, torch.tensor([p] * n), self.cfg.max_target_tokens, temperature=temperature,
                       top_k=None, generator=generator, eos_id=self.tokenizer.eos_id)
        eos = self.tokenizer.eos_id
        seen: dict[tuple[int, ...], None] = {}
        for row in out[:, len(p):].tolist():
            if eos in row:
                seen.setdefault(tuple(row[: row.index(eos) + 1]), None)
            # a sample that never reached eos is cut off: not a complete action, dropped
        if not seen:
            return []
        rows = [(p + list(t), len(p)) for t in seen]
        scores = self._score_rows(rows)
        res = [(self.tokenizer.decode(list(t[:-1]), skip_special_tokens=True), s) for t, (s, _) in zip(seen, scores)]
        return sorted(res, key=lambda x: -x[1])


def train_pair_lm(train_pairs: Sequence[tuple[str, str]], cfg: PairLMConfig, *,
                  val_pairs: Sequence[tuple[str, str]] | None = None, out_dir: str | None = None,
                  tokenizer=None, progress: bool = False) -> tuple[PairLM, Any]:
    """Train a tokenizer (byte-level BPE on the prompts and targets, unless given) and a morphlm causal LM on
    ``train_pairs`` with the one training loop (morphlm.train.fit; ``progress``: its progress bar). Returns
    (PairLM, FitResult)."""
    import torch

    from ..data.batches import derive_seed
    from ..data.tokenizer import train_tokenizer
    from ..model import TransformerLM
    from ..train.loop import fit

    cfg.validate()
    _check_pairs(train_pairs, "training")
    texts = [cfg.template.format(goal=g) + t for g, t in train_pairs]
    if tokenizer is None:
        tokenizer = train_tokenizer(texts, cfg.vocab_size)
    rows = [encode_pair(tokenizer, cfg.template.format(goal=g), t, cfg.max_prompt_tokens, cfg.max_target_tokens)
            for g, t in train_pairs]
    val_rows = None
    if val_pairs:
        val_rows = [encode_pair(tokenizer, cfg.template.format(goal=g), t, cfg.max_prompt_tokens,
                                cfg.max_target_tokens) for g, t in val_pairs]
    data = PairBatches(rows, cfg.seq_len, tokenizer.pad_id, cfg.batch_size, cfg.seed, val_rows)
    torch.manual_seed(derive_seed("trigo-pair-lm-init", cfg.seed) % (2**31))
    model = TransformerLM(cfg.model_config(tokenizer.vocab_size))
    args = cfg.train_args()
    args.progress = progress
    if out_dir is not None:  # a run stopped by a signal saved its state there: the same call resumes it
        args.out_dir, args.resume, args.save_every = str(out_dir), "auto", max(cfg.steps // 4, 1)
    res = fit(model, None, data, args, tokenizer_json=tokenizer.to_json_str(),
              lineage={"verb": "train", "preset": "trigo pair LM", "config": asdict(cfg), "parents": []})
    model.eval()
    if out_dir is not None:
        save_pair_lm_settings(out_dir, cfg)
    return PairLM(model, tokenizer, cfg), res


PAIR_LM_FILE = "pair_lm.json"


def save_pair_lm_settings(out_dir, cfg: PairLMConfig) -> None:
    """Write the prompt template and token limits next to a checkpoint fit() wrote (``pair_lm.json``)."""
    import json
    from pathlib import Path

    from ..io import write_atomic

    write_atomic(Path(out_dir) / PAIR_LM_FILE, json.dumps(asdict(cfg), indent=1))


def load_pair_lm(run_dir) -> PairLM:
    """A PairLM from a checkpoint directory written by :func:`train_pair_lm` with ``out_dir``."""
    import json
    from pathlib import Path

    from ..data.tokenizer import Tokenizer
    from ..train.checkpoint import load_model, load_tokenizer_json

    path = Path(run_dir) / PAIR_LM_FILE
    if not path.is_file():
        raise TacticError(f"{run_dir} has no {PAIR_LM_FILE}: it is not a policy written by `morphlm bench trigo` "
                          f"(the policy-* folders of its work dir, $MORPHLM_CACHE/trigo-bench); pass such a directory")
    try:
        cfg = PairLMConfig(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise TacticError(f"{path} is unreadable ({exc}); retrain the model") from exc
    tk_json = load_tokenizer_json(run_dir)
    if tk_json is None:
        raise TacticError(f"{run_dir} has no tokenizer.json; retrain the model")
    model = load_model(run_dir)
    model.eval()
    return PairLM(model, Tokenizer.from_json_str(tk_json), cfg)


def evaluate_pair_lm(lm: PairLM, pairs: Sequence[tuple[str, str]], *, batch: int = 32,
                     progress: bool = False) -> dict[str, Any]:
    """Exact match of the greedy prediction and NLL of the gold target (nats per target token incl. eos, and per
    target) over ``pairs``."""
    from ..progress import progress_bar

    _check_pairs(pairs, "evaluation")
    hits = 0
    nll, ntok = 0.0, 0
    for g, t in progress_bar(pairs, desc="greedy tactics", unit="step", disable=not progress):
        hits += normalize(lm.greedy(g)) == normalize(t)
    for i in range(0, len(pairs), batch):
        chunk = pairs[i: i + batch]
        rows = [encode_pair(lm.tokenizer, lm.cfg.template.format(goal=g), t, lm.cfg.max_prompt_tokens,
                            lm.cfg.max_target_tokens) for g, t in chunk]
        for s, k in lm._score_rows(rows):
            nll -= s
            ntok += k
    return {"em": hits / len(pairs), "hits": hits, "n": len(pairs), "nll_per_token": nll / max(ntok, 1),
            "nll_per_tactic": nll / len(pairs)}


def pairs_from_steps(steps: Iterable[Any]) -> list[tuple[str, str]]:
    """(goal, tactic) pairs from step records with ``goal`` and ``tactic`` attributes (trigo_data.Step) or
    2-tuples."""
    out = []
    for s in steps:
        if isinstance(s, (tuple, list)):
            g, t = s
        else:
            g, t = s.goal, s.tactic
        out.append((str(g), str(t)))
    return out
