"""Deterministic batch sources for the one training loop.

``train_batch(step)`` returns the FULL GLOBAL batch of an optimizer step and is a pure function of
``(seed, step)``: no iterator state, no epoch counter. Resuming at step k therefore sees exactly the
batches an uninterrupted run would, and data-parallel ranks each slice the same global batch (rank r
of W takes rows ``r*B/W : (r+1)*B/W``), which makes a DDP run consume the same data as one process.
``val_batches()`` returns the same list every time.

Randomness comes only from ``torch.Generator``s seeded with :func:`derive_seed`, a stable hash that
does not depend on ``PYTHONHASHSEED`` or the process.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .tokens import TokenStore

__all__ = ["BatchError", "LMBatches", "MLMBatches", "derive_seed"]

IGNORE_INDEX = -100  # labels that the loss ignores (torch.nn.functional.cross_entropy's default)


class BatchError(ValueError):
    """Batches cannot be drawn with these settings; the message says why and what to change."""


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, e.g. ``derive_seed("lm-train", seed, step)``; stable
    across processes, machines and Python versions."""
    h = hashlib.blake2b("\x1f".join(repr(p) for p in parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def _generator(*parts) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(*parts))
    return g


def _check_pos_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BatchError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class LMBatches:
    """Causal-LM batches: random windows of the train split, next-token labels.

    ``train_batch(step)`` -> ``{"input_ids": (B, T) int64, "labels": (B, T) int64}`` where
    ``labels[:, t] == input_ids[:, t + 1]`` within the underlying window of T+1 tokens.
    """

    def __init__(self, store: TokenStore, batch_size: int, seq_len: int, seed: int = 0, eval_batches: int = 8):
        self.store = store
        self.batch_size = _check_pos_int("batch_size", batch_size)
        self.seq_len = _check_pos_int("seq_len", seq_len)
        self.seed = int(seed)
        self.eval_batches = _check_pos_int("eval_batches", eval_batches, minimum=0)
        n = len(store.train)
        if n < self.seq_len + 1:
            raise BatchError(
                f"the train split has {n} tokens, fewer than seq_len + 1 = {self.seq_len + 1}: not one "
                "training window fits. Use a bigger corpus (or a larger max_bytes) or a shorter --seq-len."
            )
        self._val_cache: list[dict] | None = None

    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one global batch (B * T)."""
        return self.batch_size * self.seq_len

    @property
    def vocab_size(self) -> int:
        return self.store.vocab_size

    # ---- windows ----------------------------------------------------------------------------------

    def _train_windows(self, step: int, length: int, domain: str) -> np.ndarray:
        """(B, length) token windows starting at uniformly random offsets; a pure function of (seed, step)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise BatchError(f"step must be an integer >= 0, got {step!r}.")
        data = self.store.train
        g = _generator(domain, self.seed, int(step))
        starts = torch.randint(0, len(data) - length + 1, (self.batch_size,), generator=g).numpy()
        idx = starts[:, None] + np.arange(length)[None, :]  # (B, length)
        return np.asarray(data[idx])

    def _val_windows(self) -> list[np.ndarray]:
        """Contiguous, non-overlapping (rows, T + 1) windows of the val split, grouped into batches.

        Window k covers val[k*T : k*T + T + 1], so consecutive windows share one token (the label of
        the last position) and every val token is predicted at most once.
        """
        data, T, B = self.store.val, self.seq_len, self.batch_size
        if self.eval_batches == 0:
            return []
        if len(data) < T + 1:
            raise BatchError(
                f"the validation split has {len(data)} tokens, fewer than seq_len + 1 = {T + 1}: no "
                "evaluation window fits. Use a bigger corpus, a larger val_fraction, or a shorter --seq-len."
            )
        n_windows = (len(data) - 1) // T
        if n_windows >= B:
            sizes = [B] * min(self.eval_batches, n_windows // B)
        else:
            sizes = [n_windows]  # too little validation text for one full batch: one smaller batch
        out, k = [], 0
        for rows in sizes:
            starts = (k + np.arange(rows)) * T
            out.append(np.asarray(data[starts[:, None] + np.arange(T + 1)[None, :]]))
            k += rows
        return out

    # ---- batches ----------------------------------------------------------------------------------

    def train_batch(self, step: int) -> dict:
        w = torch.from_numpy(self._train_windows(step, self.seq_len + 1, "lm-train").astype(np.int64))
        return {"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous()}  # (B, T) each

    def val_batches(self) -> list[dict]:
        if self._val_cache is None:
            batches = []
            for w in self._val_windows():
                t = torch.from_numpy(w.astype(np.int64))
                batches.append({"input_ids": t[:, :-1].contiguous(), "labels": t[:, 1:].contiguous()})
            self._val_cache = batches
        return [dict(b) for b in self._val_cache]


class MLMBatches(LMBatches):
    """BERT-style masked-LM batches (Devlin et al. 2019, §3.1 "Task #1: Masked LM").

    Each non-special position is chosen with probability ``mask_prob``; a chosen position becomes
    ``mask_id`` 80% of the time, a random non-special token 10%, and stays unchanged 10%. ``labels`` hold
    the original id at chosen positions and -100 elsewhere. Positions holding special tokens (ids below
    ``n_special``, e.g. the <eos> between documents) are never chosen. Every row with at least one
    maskable token gets at least one chosen position, so the loss is never an average over nothing.

    ``special_ids`` (a tokenizer's :attr:`~morphlm.data.Tokenizer.special_ids`) replaces ``n_special`` for
    tokenizers whose special tokens are not the first ids (BERT's WordPiece: [CLS] is 101): those ids are never
    chosen nor drawn as random replacements. Ids 0..k-1 given this way behave exactly as ``n_special=k``.
    """

    def __init__(self, store: TokenStore, batch_size: int, seq_len: int, *, mask_id: int, vocab_size: int,
                 n_special: int = 7, mask_prob: float = 0.15, seed: int = 0, eval_batches: int = 8,
                 special_ids=None):
        super().__init__(store, batch_size, seq_len, seed=seed, eval_batches=eval_batches)
        self._special = None  # (V,) bool: the special ids when they are not a prefix 0..k-1
        if special_ids is not None:
            ids = sorted({int(i) for i in special_ids})
            if ids == list(range(len(ids))):
                n_special = len(ids)
            else:
                bad = [i for i in ids if not 0 <= i < int(vocab_size)]
                if bad:
                    raise BatchError(f"special_ids {bad[:5]} lie outside vocab_size={vocab_size}; pass the "
                                     "tokenizer's special_ids and vocab_size")
                self._special = torch.zeros(int(vocab_size), dtype=torch.bool)
                self._special[ids] = True
                self._plain = (~self._special).nonzero(as_tuple=True)[0]  # ids a random replacement may take
                n_special = 0
        self.n_special = _check_pos_int("n_special", n_special, minimum=0)
        self.mlm_vocab_size = _check_pos_int("vocab_size", vocab_size)
        if self.mlm_vocab_size <= self.n_special:
            raise BatchError(f"vocab_size={vocab_size} leaves no non-special token (n_special={n_special}); "
                             "pass the tokenizer's vocab_size.")
        if store.vocab_size > self.mlm_vocab_size:
            raise BatchError(f"the token store uses ids up to {store.vocab_size - 1} but vocab_size={vocab_size}; "
                             "pass tokenizer.vocab_size (the store was built with a bigger tokenizer).")
        if not (isinstance(mask_id, (int, np.integer)) and 0 <= mask_id < self.mlm_vocab_size):
            raise BatchError(f"mask_id={mask_id!r} is not a valid id below vocab_size={vocab_size}; pass "
                             "tokenizer.mask_id.")
        self.mask_id = int(mask_id)
        if not 0.0 < float(mask_prob) < 1.0:
            raise BatchError(f"mask_prob must be in (0, 1), got {mask_prob}; BERT uses 0.15.")
        self.mask_prob = float(mask_prob)

    def _mask(self, ids: torch.Tensor, g: torch.Generator) -> dict:
        B, T = ids.shape
        if self._special is None:
            eligible = ids >= self.n_special  # (B, T) specials are never masked
        else:
            eligible = ~self._special[ids.clamp(0, self.mlm_vocab_size - 1)]
        # All draws happen unconditionally and in a fixed order, so the stream is the same for every batch.
        chosen = (torch.rand(B, T, generator=g) < self.mask_prob) & eligible
        fallback_score = torch.rand(B, T, generator=g)
        action = torch.rand(B, T, generator=g)
        if self._special is None:
            random_tok = torch.randint(self.n_special, self.mlm_vocab_size, (B, T), generator=g)
        else:
            random_tok = self._plain[torch.randint(0, self._plain.numel(), (B, T), generator=g)]

        needs_one = ~chosen.any(dim=1) & eligible.any(dim=1)  # (B,)
        if bool(needs_one.any()):
            pick = torch.where(eligible, fallback_score, torch.full_like(fallback_score, -1.0)).argmax(dim=1)
            rows = needs_one.nonzero(as_tuple=True)[0]
            chosen[rows, pick[rows]] = True

        inputs = ids.clone()
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        inputs[to_mask] = self.mask_id
        inputs[to_random] = random_tok[to_random]
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}

    def train_batch(self, step: int) -> dict:
        ids = torch.from_numpy(self._train_windows(step, self.seq_len, "mlm-train").astype(np.int64))  # (B, T)
        return self._mask(ids, _generator("mlm-mask", self.seed, int(step)))

    def val_batches(self) -> list[dict]:
        if self._val_cache is None:
            batches = []
            for i, w in enumerate(self._val_windows()):
                ids = torch.from_numpy(w[:, : self.seq_len].astype(np.int64))
                batches.append(self._mask(ids, _generator("mlm-val", self.seed, i)))
            self._val_cache = batches
        return [dict(b) for b in self._val_cache]
