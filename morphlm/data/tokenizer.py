"""Byte-level BPE tokenizer (GPT-2 style, Radford et al. 2019 §2.2) trained with the `tokenizers` library.

The initial alphabet is all 256 byte symbols, so every string is encodable without an unknown token
(this is the "byte fallback"), and ``decode(encode(s)) == s`` for any Unicode string. The seven special
tokens come first, with ids 0..6 in the order of :data:`SPECIAL_TOKENS`; ``encode`` never adds them,
and by default treats text such as ``"<eos>"`` as plain characters, so raw text can never inject a
control token (use ``allow_special=True`` to opt in).

**Special tokens by role.** :class:`Tokenizer` also wraps Hugging Face tokenizers (a ``tokenizer.json`` of the
``tokenizers`` library: BERT WordPiece, GPT-2/RoBERTa byte-level BPE, SentencePiece-style BPE). Code asks for
a token by its *role* (:data:`ROLES`: pad, unk, bos, eos, mask, cls, sep), never by its spelling. The roles
are recorded in tokenizer.json itself, in the fields the format has for them, so they travel with the file
through every verb (a checkpoint copies tokenizer.json verbatim) and a Hugging Face loader reads the same
file. :func:`infer_roles` reads them in this order:

1. ``post_processor``: a ``TemplateProcessing`` whose single-sequence template is ``X $A Y`` makes X the
   cls and Y the sep token of an encoder (``BertProcessing`` / ``RobertaProcessing`` name them directly);
2. ``padding.pad_token`` is the pad token, ``model.unk_token`` the unk token;
3. every role still open is filled by the conventional spellings in :data:`ROLE_NAMES` (``<eos>``-style names
   of our BPE and of old checkpoints, ``[CLS]``-style names of BERT, ``<s>``/``</s>`` of RoBERTa and
   SentencePiece, ``<|endoftext|>`` of GPT-2).

:func:`with_roles` writes given roles into those fields (convert does this with the roles a Hugging Face
folder declares in tokenizer_config.json / special_tokens_map.json), so the stored file says what each
token does; an export writes them again into tokenizer_config.json and special_tokens_map.json, where
``transformers.AutoTokenizer`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..io import write_atomic

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

__all__ = ["SPECIAL_TOKENS", "N_SPECIAL", "ROLES", "ROLE_NAMES", "TokenizerError", "Tokenizer", "infer_roles",
           "with_roles", "train_tokenizer"]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<cls>", "<sep>"]
N_SPECIAL = len(SPECIAL_TOKENS)
_N_BYTES = 256
MIN_VOCAB_SIZE = _N_BYTES + N_SPECIAL

ROLES = ("pad", "unk", "bos", "eos", "mask", "cls", "sep")
_ROLE_WORDS = {"pad": "padding", "unk": "unknown word", "bos": "beginning of sequence", "eos": "end of sequence",
               "mask": "masked-LM mask", "cls": "classification ([CLS]-style)", "sep": "segment separator"}
# conventional spellings per role, first match wins; our own names first (old checkpoints have only those)
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<bos>", "<s>", "[BOS]", "<|startoftext|>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "[EOS]", "<|endoftext|>", "<|end_of_text|>"),
    "mask": ("<mask>", "[MASK]", "<|mask|>"),
    "cls": ("<cls>", "[CLS]"),
    "sep": ("<sep>", "[SEP]"),
}


def _template_ends(post: dict | None) -> tuple[str | None, str | None]:
    """(first, last) special token of a post-processor's single-sequence template, e.g. ([CLS], [SEP])."""
    if not isinstance(post, dict):
        return None, None
    kind = post.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        cls, sep = post.get("cls"), post.get("sep")
        return (cls[0] if isinstance(cls, list) and cls else None), (sep[0] if isinstance(sep, list) and sep else None)
    if kind == "Sequence":
        for p in post.get("processors") or []:
            ends = _template_ends(p)
            if ends != (None, None):
                return ends
        return None, None
    if kind != "TemplateProcessing":
        return None, None
    pieces = []
    for item in post.get("single") or []:
        if isinstance(item, dict) and "SpecialToken" in item:
            pieces.append(("special", item["SpecialToken"].get("id")))
        elif isinstance(item, dict) and "Sequence" in item:
            pieces.append(("seq", None))
    seq = next((i for i, (k, _) in enumerate(pieces) if k == "seq"), None)
    if seq is None:
        return None, None
    first = pieces[seq - 1][1] if seq > 0 else None
    last = pieces[seq + 1][1] if seq + 1 < len(pieces) else None
    return first, last


def infer_roles(tk: tokenizers.Tokenizer, *, causal: bool | None = None) -> dict[str, str]:
    """role -> token string of a ``tokenizers.Tokenizer`` (roles it has no token for are absent), read from
    its tokenizer.json as the module docstring describes. A template ``X $A Y`` gives cls/sep; for a causal
    tokenizer (``causal=True``: GPT-2/LLaMA-style ``<s> $A </s>``) it gives bos/eos instead, and a template
    ``X $A`` with nothing after the sequence (LLaMA's ``<s> $A``) gives bos unless ``causal=False``."""
    doc = json.loads(tk.to_str())
    roles: dict[str, str] = {}

    def has(token) -> bool:
        return isinstance(token, str) and tk.token_to_id(token) is not None

    first, last = _template_ends(doc.get("post_processor"))
    # "X $A Y" is cls/sep of an encoder (bos/eos when causal); "X $A" alone (LLaMA's "<s> $A") is a bos
    pair = ("bos", "eos") if causal or (causal is None and last is None) else ("cls", "sep")
    for role, token in zip(pair, (first, last)):
        if has(token):
            roles[role] = token
    pad = (doc.get("padding") or {}).get("pad_token")
    if has(pad):
        roles["pad"] = pad
    unk = (doc.get("model") or {}).get("unk_token")
    if has(unk):
        roles["unk"] = unk
    for role in ROLES:
        if role not in roles:
            token = next((t for t in ROLE_NAMES[role] if has(t)), None)
            if token is not None:
                roles[role] = token
    return roles


def with_roles(tokenizer_json: str, roles: dict[str, str]) -> str:
    """``tokenizer_json`` with ``roles`` (role -> token string) recorded in the fields tokenizer.json has for
    them, so :func:`infer_roles` reads them back: every role token becomes a special added token, pad goes to
    ``padding.pad_token``, unk to ``model.unk_token`` (WordPiece/BPE/WordLevel models), and cls+sep to the
    ``post_processor`` template ``cls $A sep`` when the file has no post-processor of its own. A role that
    the conventional names (:data:`ROLE_NAMES`) would give another token is refused with an error, since no
    field of the format could record it."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise TokenizerError(f"unknown token role(s) {sorted(unknown)}; the roles are {list(ROLES)}")
    try:
        tk = tokenizers.Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # noqa: BLE001 -- the Rust side raises plain Exception
        raise TokenizerError(f"not a valid tokenizer.json ({e})") from e
    missing = {r: t for r, t in roles.items() if tk.token_to_id(t) is None}
    if missing:
        raise TokenizerError(f"the special tokens {missing} are not in the tokenizer's vocabulary; the "
                             f"tokenizer_config.json does not belong to this tokenizer.json")
    tk.add_special_tokens(sorted(set(roles.values())))  # already in the vocabulary: their ids do not change
    doc = json.loads(tk.to_str())
    if "pad" in roles:
        pad = roles["pad"]
        padding = doc.get("padding") or {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                                         "pad_type_id": 0}
        doc["padding"] = {**padding, "pad_token": pad, "pad_id": tk.token_to_id(pad)}
    if "unk" in roles and isinstance(doc.get("model"), dict) and doc["model"].get("type") in (
            "WordPiece", "BPE", "WordLevel"):
        doc["model"]["unk_token"] = roles["unk"]
    if doc.get("post_processor") is None and "cls" in roles and "sep" in roles:
        cls, sep = roles["cls"], roles["sep"]
        doc["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": sep, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": sep, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": sep, "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [tk.token_to_id(t)], "tokens": [t]} for t in sorted({cls, sep})},
        }
    out = json.dumps(doc, ensure_ascii=False, indent=2)
    got = infer_roles(tokenizers.Tokenizer.from_str(out), causal="cls" not in roles and "eos" in roles)
    wrong = {r: (t, got.get(r)) for r, t in roles.items() if got.get(r) != t}
    if wrong:
        raise TokenizerError("tokenizer.json has no field to record these roles and their tokens do not have the "
                             f"conventional names {', '.join(f'{r}: {ROLE_NAMES[r]}' for r in wrong)} "
                             f"(declared vs read back: {wrong}); rename the tokens or use a tokenizer whose "
                             "special tokens have conventional names")
    return out


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
        self._json: str | None = None
        self._roles = infer_roles(tk)  # before padding is turned off: padding.pad_token records the pad role
        if tk.padding is not None or tk.truncation is not None:
            # a Hugging Face tokenizer.json may pad/truncate every encoding (MiniLM's: to 128 tokens); morphlm
            # batches do both themselves, so they are turned off here. The file text keeps them (exports too).
            self._json = tk.to_str(pretty=True)
            tk.no_padding()
            tk.no_truncation()
        tk.encode_special_tokens = True
        self._tk = tk
        self._role_ids = {r: tk.token_to_id(t) for r, t in self._roles.items()}
        specials = {t.content for t in tk.get_added_tokens_decoder().values() if t.special}
        self._special_ids = {t: tk.token_to_id(t) for t in specials | set(self._roles.values())}
        self._special_re = (re.compile("(" + "|".join(re.escape(t) for t in sorted(self._special_ids, key=len,
                                                                                      reverse=True)) + ")")
                            if self._special_ids else None)

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

    @property
    def roles(self) -> dict[str, str]:
        """role -> token string for the roles this tokenizer has a token for (see :data:`ROLES`)."""
        return dict(self._roles)

    def has_role(self, role: str) -> bool:
        return role in self._role_ids

    def role_id(self, role: str) -> int:
        """The id of the token that plays ``role`` (pad, unk, bos, eos, mask, cls, sep)."""
        if role not in ROLES:
            raise TokenizerError(f"unknown token role {role!r}; the roles are {list(ROLES)}")
        i = self._role_ids.get(role)
        if i is None:
            raise TokenizerError(
                f"this tokenizer has no {_ROLE_WORDS[role]} ({role}) token (its special tokens by role: "
                f"{self._roles or 'none'}). Use a tokenizer that has one: morphlm.data.train_tokenizer gives all "
                f"seven; a Hugging Face tokenizer.json records it in its post_processor/padding/model fields "
                f"or by a conventional name {ROLE_NAMES[role]}")
        return i

    @property
    def special_ids(self) -> list[int]:
        """Sorted ids of every special token (the role tokens and the added tokens marked special)."""
        return sorted(set(self._special_ids.values()))

    @property
    def boundary_id(self) -> int:
        """The token written between documents in a token store: eos, or sep for an encoder tokenizer without
        an end-of-sequence token (BERT's WordPiece)."""
        return self.role_id("eos" if self.has_role("eos") or not self.has_role("sep") else "sep")

    @property
    def pad_id(self) -> int:
        return self.role_id("pad")

    @property
    def unk_id(self) -> int:
        return self.role_id("unk")

    @property
    def bos_id(self) -> int:
        return self.role_id("bos")

    @property
    def eos_id(self) -> int:
        return self.role_id("eos")

    @property
    def mask_id(self) -> int:
        return self.role_id("mask")

    @property
    def cls_id(self) -> int:
        return self.role_id("cls")

    @property
    def sep_id(self) -> int:
        return self.role_id("sep")

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(int(i))

    # ---- encode / decode --------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added). With ``allow_special`` the literal strings of the special
        tokens (:attr:`special_ids`) in ``text`` become their special ids; otherwise they are plain text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}; decode bytes first.")
        if not allow_special or self._special_re is None:
            return self._tk.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for piece in self._special_re.split(text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
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
