"""TinyBERT data augmentation (Jiao et al. 2020, arXiv 1909.10351, §3.2 / Algorithm 1).

For every word of a training text that is not a stop word (nor punctuation / a number):

* a word that is **one token** is masked and a masked-LM model predicts it; the top-K predictions that are
  themselves whole words become its candidates. As in TinyBERT's code the model reads
  ``<cls> masked text <sep> original text <sep>`` (the original visible as segment B);
* a word of **several tokens** (and every word when no masked-LM model is given) takes the K nearest whole-
  word tokens by cosine similarity of token embeddings (the mean of its pieces' embeddings). TinyBERT uses
  GloVe here; no GloVe exists offline, so the embedding matrix of the model itself is used — a declared
  deviation (refs §8 proposes the same).

Then N_a variants are drawn: each candidate position is replaced with probability p_t by a uniformly chosen
candidate; duplicates and copies of the original are dropped. Defaults follow the paper: N_a = 20, K = 15,
p_t = 0.4. Every draw comes from a ``random.Random`` seeded by (seed, example index), so the output is a
pure function of the inputs. Labels are kept (stage-b distillation uses the teacher's soft labels anyway).

"Whole word" means: the candidate token decodes to a string s of letters such that s (or " " + s) encodes
back to exactly that one token — so it is a complete word, not a prefix piece or a "##" continuation.
A BPE vocabulary also holds word-initial fragments that pass this test ("ist", "pt"); GloVe's vocabulary
(TinyBERT) holds real words only, so by default candidates must also occur as whole words somewhere in the
texts being augmented (``corpus_words_only``; a reconstruction of that filter).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..data.batches import derive_seed
from ..data.tasks import Example
from .errors import CompressionError

log = logging.getLogger("morphlm.compress.augment")

__all__ = ["AugmentConfig", "Augmenter", "augment_examples", "STOPWORDS"]

# A short English stop-word list (function words); written for this module.
STOPWORDS = frozenset("""
a an the and or but if then else so of to in on at by for with from into onto over under about as is are was
were be been being am do does did doing have has had having i me my mine we us our you your he him his she her
it its they them their this that these those there here what which who whom whose when where why how not no
nor all any each few more most other some such only own same than too very can will just should would could
may might must shall up down out off again further once s t don isn aren wasn weren
""".split())


@dataclass
class AugmentConfig:
    n_aug: int = 20  # N_a: variants drawn per example
    p_replace: float = 0.4  # p_t: probability of replacing a candidate position
    top_k: int = 15  # K: candidates per word
    seed: int = 0
    use_mlm: bool = True  # masked-LM candidates for one-token words when a masked-LM model is given
    include_original: bool = True
    corpus_words_only: bool = True  # candidates must also occur as words in the texts being augmented
    max_len: int = 128  # longest masked-LM input (tokens, specials included)

    def validate(self) -> None:
        if not (isinstance(self.n_aug, int) and self.n_aug >= 0):
            raise CompressionError(f"n_aug={self.n_aug!r} must be an integer >= 0 (TinyBERT: 10-30)")
        if not 0.0 <= self.p_replace <= 1.0:
            raise CompressionError(f"p_replace={self.p_replace} must be in [0, 1] (TinyBERT: 0.4)")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise CompressionError(f"top_k={self.top_k!r} must be an integer >= 1 (TinyBERT: 15)")
        if self.max_len < 8:
            raise CompressionError(f"max_len={self.max_len} is too short for masked-LM inputs; use >= 8")


def _is_word(w: str) -> bool:
    return w.isalpha()


class Augmenter:
    """Candidate generation over one tokenizer and one model (its embedding matrix; its masked-LM head
    when ``model.config.head == 'mlm'``)."""

    def __init__(self, tokenizer, model: nn.Module, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.cfg.validate()
        self.tok = tokenizer
        self.model = model
        mcfg = getattr(model, "config", None)
        if mcfg is None or not hasattr(model, "tok_emb"):
            raise CompressionError("augmentation needs a native morphlm model (token embeddings, optional masked-LM "
                                   "head); convert Hugging Face models with `morphlm convert` first")
        if tokenizer.vocab_size > mcfg.vocab_size:
            raise CompressionError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                                   f"{mcfg.vocab_size}; use the model's own tokenizer.json")
        self.mlm = self.cfg.use_mlm and mcfg.head == "mlm"
        self.vocab_n = tokenizer.vocab_size
        self._build_vocab()

    # ---- vocabulary of whole-word tokens --------------------------------------------------------------
    def _build_vocab(self) -> None:
        n = self.vocab_n
        texts = [self.tok.decode([i]) for i in range(n)]
        words = [t.strip() for t in texts]
        spaced = self.tok.encode_batch([" " + w for w in words])
        plain = self.tok.encode_batch(words)
        ok = torch.zeros(n, dtype=torch.bool)
        self.word_of: dict[int, str] = {}
        for i in range(n):
            w = words[i]
            if len(w) < 2 or not _is_word(w) or w.lower() in STOPWORDS:  # no single letters (byte tokens)
                continue
            if spaced[i] == [i] or plain[i] == [i]:
                ok[i] = True
                self.word_of[i] = w
        if not bool(ok.any()):
            raise CompressionError("the tokenizer has no whole-word tokens to draw candidates from; train it on "
                                   "more text (a larger vocab_size)")
        self.word_ok = ok
        with torch.no_grad():
            emb = self.model.tok_emb.weight[:n].detach().float().cpu()
            self.emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (V, D) unit rows

    def word_ids(self, word: str, first: bool) -> list[int]:
        return self.tok.encode(word if first else " " + word)

    # ---- candidates -----------------------------------------------------------------------------------
    def embedding_candidates(self, word: str, ids: Sequence[int]) -> list[str]:
        vec = self.emb[list(ids)].mean(dim=0)
        sims = self.emb @ vec  # (V,)
        sims = sims.masked_fill(~self.word_ok, float("-inf"))
        sims[list(ids)] = float("-inf")
        k = min(self.cfg.top_k + 8, int(self.word_ok.sum()))
        out = []
        for i in torch.topk(sims, k).indices.tolist():
            w = self.word_of.get(i)
            if w is not None and w.lower() != word.lower() and w not in out:
                out.append(w)
            if len(out) == self.cfg.top_k:
                break
        return out

    @torch.no_grad()
    def mlm_candidates(self, word_pieces: list[list[int]], positions: list[int]) -> dict[int, list[str]]:
        """Top-K whole-word predictions for each one-token word at ``positions`` (word indices)."""
        if not positions:
            return {}
        tok = self.tok
        flat: list[int] = []
        start: list[int] = []
        for pieces in word_pieces:
            start.append(len(flat))
            flat.extend(pieces)
        budget = (self.cfg.max_len - 3) // 2
        flat_cut = flat[:budget]
        rows, types, where = [], [], []
        for wi in positions:
            p = start[wi]
            if p >= len(flat_cut):
                continue
            masked = list(flat_cut)
            masked[p] = tok.mask_id
            a = [tok.cls_id, *masked, tok.sep_id]
            b = [*flat_cut, tok.sep_id]
            rows.append(a + b)
            types.append([0] * len(a) + [1] * len(b))
            where.append((wi, 1 + p))
        if not rows:
            return {}
        mcfg = self.model.config
        ids = torch.tensor(rows, dtype=torch.long)
        tt = torch.tensor(types, dtype=torch.long) if mcfg.n_segments >= 2 else None
        was = self.model.training
        self.model.eval()
        dev = next(self.model.parameters()).device
        logits = self.model(ids.to(dev), token_type_ids=None if tt is None else tt.to(dev)).logits.float().cpu()
        self.model.train(was)
        out: dict[int, list[str]] = {}
        for r, (wi, pos) in enumerate(where):
            scores = logits[r, pos, : self.vocab_n].masked_fill(~self.word_ok, float("-inf"))
            original = flat[start[wi]]
            scores[original] = float("-inf")
            k = min(self.cfg.top_k, int(self.word_ok.sum()))
            out[wi] = [self.word_of[i] for i in torch.topk(scores, k).indices.tolist() if i in self.word_of]
        return out

    def candidates(self, text: str) -> tuple[list[str], list[list[str]]]:
        """(words, candidate list per word; empty for stop words, punctuation and numbers)."""
        words = text.split()
        pieces = [self.word_ids(w, i == 0) for i, w in enumerate(words)]
        cands: list[list[str]] = [[] for _ in words]
        single = []
        for i, (w, p) in enumerate(zip(words, pieces)):
            if not _is_word(w) or w.lower() in STOPWORDS or not p:
                continue
            if len(p) == 1 and self.mlm:
                single.append(i)
            else:
                cands[i] = self.embedding_candidates(w, p)
        for i, c in self.mlm_candidates(pieces, single).items():
            cands[i] = c
        for i in single:  # words past the masked-LM budget fall back to embedding neighbours
            if not cands[i]:
                cands[i] = self.embedding_candidates(words[i], pieces[i])
        return words, cands

    # ---- variants -------------------------------------------------------------------------------------
    def _variants(self, words: list[str], cands: list[list[str]], rng: random.Random) -> list[str]:
        original = " ".join(words)
        seen, out = {original}, []
        for _ in range(self.cfg.n_aug):
            new = [rng.choice(c) if c and rng.random() < self.cfg.p_replace else w for w, c in zip(words, cands)]
            s = " ".join(new)
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out

    def restrict_to_words(self, words) -> None:
        """Keep only candidate tokens whose word (case-insensitive) is in ``words``."""
        allowed = {w.lower() for w in words}
        for i, w in list(self.word_of.items()):
            if w.lower() not in allowed:
                self.word_ok[i] = False
                del self.word_of[i]
        if not self.word_of:
            log.warning("no vocabulary token is a word of these texts: no candidates, nothing will be replaced "
                        "(augment more text at once, or set corpus_words_only=False)")

    def augment(self, examples: Sequence[Example], *, progress: bool = True) -> list[Example]:
        from ..progress import progress_bar

        if self.cfg.corpus_words_only:
            self.restrict_to_words({w for ex in examples for t in (ex.text, ex.text_pair or "")
                                    for w in t.split() if _is_word(w)})
        out: list[Example] = []
        for idx, ex in enumerate(progress_bar(examples, desc="augment", unit="ex", disable=not progress)):
            rng = random.Random(derive_seed("tinybert-augment", self.cfg.seed, idx))
            if self.cfg.include_original:
                out.append(ex)
            words_a, cands_a = self.candidates(ex.text)
            if ex.text_pair is None:
                for s in self._variants(words_a, cands_a, rng):
                    out.append(dataclasses.replace(ex, text=s))
                continue
            words_b, cands_b = self.candidates(ex.text_pair)
            n_a = len(words_a)
            joint = self._variants(words_a + words_b, cands_a + cands_b, rng)
            for s in joint:
                w = s.split(" ")
                out.append(dataclasses.replace(ex, text=" ".join(w[:n_a]), text_pair=" ".join(w[n_a:])))
        return out


def augment_examples(examples: Sequence[Example], tokenizer, model: nn.Module, cfg: AugmentConfig | None = None,
                     *, progress: bool = True) -> list[Example]:
    """TinyBERT augmentation of ``examples`` (originals first unless ``include_original=False``); see the
    module docstring. ``model``: a masked-LM model for candidates of one-token words (any native model for
    embedding neighbours only)."""
    return Augmenter(tokenizer, model, cfg).augment(examples, progress=progress)
