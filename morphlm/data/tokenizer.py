"""Byte-level BPE tokenizer (GPT-2 style, Radford et al. 2019 §2.2) trained with the `tokenizers` library.

The initial alphabet is all 256 byte symbols, so every string is encodable without an unknown token
(this is the "byte fallback"), and ``decode(encode(s)) == s`` for any Unicode string. The seven special
tokens come first, with ids 0..6 in the order of :data:`SPECIAL_TOKENS`; ``encode`` never adds them,
and by default treats text such as ``"<eos>"`` as plain characters, so raw text can never inject a
control token (use ``allow_special=True`` to opt in).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..io import write_atomic

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

__all__ = ["SPECIAL_TOKENS", "N_SPECIAL", "TokenizerError", "Tokenizer", "train_tokenizer"]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<cls>", "<sep>"]
N_SPECIAL = len(SPECIAL_TOKENS)
_N_BYTES = 256
MIN_VOCAB_SIZE = _N_BYTES + N_SPECIAL
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class TokenizerError(ValueError):
    """A tokenizer could not be trained, loaded or used; the message says why and what to do."""


class Tokenizer:
    """Thin wrapper around a ``tokenizers.Tokenizer`` with morphlm's special-token conventions.

    Note: wrapping sets ``tk.encode_special_tokens = True`` on the given object (that flag is not
    stored in tokenizer.json), so that special-token strings in raw text are encoded as text.
    """

    def __init__(self, tk: tokenizers.Tokenizer):
        if not isinstance(tk, tokenizers.Tokenizer):
            raise TokenizerError(f"Tokenizer() wraps a tokenizers.Tokenizer, got {type(tk).__name__}; use "
                                 "Tokenizer.load(path) or train_tokenizer(texts, vocab_size) instead.")
        tk.encode_special_tokens = True
        self._tk = tk
        self._special_ids = {t: tk.token_to_id(t) for t in SPECIAL_TOKENS}
        self._json: str | None = None

    # ---- vocabulary -------------------------------------------------------------------------------

    @property
    def hf(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for interop; do not change its settings)."""
        return self._tk

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _special(self, token: str) -> int:
        i = self._special_ids[token]
        if i is None:
            raise TokenizerError(f"this tokenizer has no {token} token; morphlm needs the special tokens "
                                 f"{SPECIAL_TOKENS}. Train one with morphlm.data.train_tokenizer.")
        return i

    @property
    def pad_id(self) -> int:
        return self._special("<pad>")

    @property
    def unk_id(self) -> int:
        return self._special("<unk>")

    @property
    def bos_id(self) -> int:
        return self._special("<bos>")

    @property
    def eos_id(self) -> int:
        return self._special("<eos>")

    @property
    def mask_id(self) -> int:
        return self._special("<mask>")

    @property
    def cls_id(self) -> int:
        return self._special("<cls>")

    @property
    def sep_id(self) -> int:
        return self._special("<sep>")

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(int(i))

    # ---- encode / decode --------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added). With ``allow_special`` the literal strings of
        :data:`SPECIAL_TOKENS` in ``text`` become their special ids; otherwise they are plain text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}; decode bytes first.")
        if not allow_special:
            return self._tk.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for piece in _SPECIAL_RE.split(text):
            if piece in self._special_ids:
                ids.append(self._special(piece))
            elif piece:
                ids.extend(self._tk.encode(piece, add_special_tokens=False).ids)
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed in parallel by the Rust library."""
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TokenizerError(f"encode_batch() takes a list of str; item {bad} is {type(texts[bad]).__name__}.")
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a list, tuple, numpy array or tensor of ints). Special tokens are written
        as their strings unless ``skip_special_tokens``."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise TokenizerError(f"cannot decode id {bad}: this tokenizer has ids 0..{n - 1}. The ids come "
                                 "from a different tokenizer or a model with a larger (padded) vocabulary.")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- serialization ----------------------------------------------------------------------------

    def to_json_str(self) -> str:
        """The tokenizer.json text (what :meth:`save` writes and :meth:`fingerprint` hashes)."""
        if self._json is None:
            self._json = self._tk.to_str(pretty=True)
        return self._json

    def fingerprint(self) -> str:
        """SHA-256 (hex) of :meth:`to_json_str`; equal fingerprints mean identical tokenization."""
        return hashlib.sha256(self.to_json_str().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically. ``path`` is a file, or a directory (then ``path/tokenizer.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, self.to_json_str())
        return p

    @classmethod
    def from_json_str(cls, s: str) -> Tokenizer:
        try:
            tk = tokenizers.Tokenizer.from_str(s)
        except Exception as e:  # noqa: BLE001 -- the Rust side raises plain Exception
            raise TokenizerError(f"not a valid tokenizer.json ({e}). Re-save the tokenizer, or delete the "
                                 "file and retrain it (morphlm retrains automatically when it is absent).") from e
        return cls(tk)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json from a file or from a directory that contains one (e.g. a checkpoint dir)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise TokenizerError(f"tokenizer file not found: {p}. Pass the path of a tokenizer.json (or a "
                                 "checkpoint directory containing one), or train one with train_tokenizer().")
        try:
            s = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read tokenizer file {p} ({e}); delete it and retrain or re-copy it.") from e
        try:
            return cls.from_json_str(s)
        except TokenizerError as e:
            raise TokenizerError(f"{p} is corrupt: {e}") from None

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"


def _empty_bpe() -> tokenizers.Tokenizer:
    tk = tokenizers.Tokenizer(models.BPE())
    # add_prefix_space=False keeps the round trip exact (no space is invented at the start).
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    return tk


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                    show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer with at most ``vocab_size`` ids (specials first, ids 0..6).

    The result may be smaller than ``vocab_size`` when the texts have too few pairs occurring at least
    ``min_frequency`` times. Training is deterministic for the same texts and arguments.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an int, got {vocab_size!r}.")
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs {_N_BYTES} byte tokens + "
            f"{N_SPECIAL} special tokens = {MIN_VOCAB_SIZE}. Use vocab_size >= {MIN_VOCAB_SIZE} "
            "(e.g. 512 for tests, 8192-50304 for real runs)."
        )
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}.")
    tk = _empty_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    got = [tk.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != list(range(N_SPECIAL)):  # guards against a change in the library's id assignment
        raise TokenizerError(f"special tokens got ids {got}, expected 0..{N_SPECIAL - 1}; this tokenizers "
                             f"version ({tokenizers.__version__}) orders them differently. Please report it.")
    if tk.get_vocab_size(with_added_tokens=True) < MIN_VOCAB_SIZE:
        raise TokenizerError(f"the trained tokenizer has {tk.get_vocab_size()} ids, fewer than "
                             f"{MIN_VOCAB_SIZE}; this tokenizers version did not keep the byte alphabet.")
    return Tokenizer(tk)
