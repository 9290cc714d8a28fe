"""The compression benchmark's data side: SST-2 with its held-out proxy slices, windows of unlabelled text for
general distillation, the WordPiece adapter and loader of the PyPI MiniLM teacher, and the logit cache in
front of the fine-tuned teacher. Split from :mod:`morphlm.bench.compression`, which re-exports them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compress.errors import CompressionError
from ..data.tokenizer import Tokenizer
from ..model.transformer import TransformerLM


class UnlabelledBatches:
    """Windows of unlabelled token ids for general distillation: ``{"input_ids", "attention_mask"}``.

    With ``cls_id`` and ``sep_id`` (a BERT-style teacher) every row is well-formed, ``[CLS] tokens [SEP]``,
    ``seq_len`` ids in all (``seq_len - 2`` of text), as the teacher saw in pretraining; without them a row is
    ``seq_len`` ids of text. ``train_batch(step)`` is a pure function of (seed, step), as fit() requires."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
                 cls_id: int | None = None, sep_id: int | None = None) -> None:
        if (cls_id is None) != (sep_id is None):
            raise CompressionError(f"UnlabelledBatches got cls_id={cls_id} and sep_id={sep_id}: a well-formed window "
                                   f"is [CLS] tokens [SEP], so give both (tokenizer.cls_id, tokenizer.sep_id) or "
                                   f"neither")
        n_special = 0 if cls_id is None else 2
        if seq_len <= n_special:
            raise CompressionError(f"seq_len {seq_len} leaves no room for text between [CLS] and [SEP]; use a "
                                   f"seq_len of at least {n_special + 1}")
        if ids.numel() < seq_len + 1:
            raise CompressionError(f"the unlabelled corpus has {ids.numel()} tokens, fewer than one window of "
                                   f"{seq_len}; use a bigger corpus or a shorter sequence")
        self.ids, self.batch_size, self.seq_len, self.seed = ids.long(), batch_size, seq_len, seed
        self.cls_id, self.sep_id, self.body = cls_id, sep_id, seq_len - n_special

    def train_batch(self, step: int) -> dict:
        from ..data.batches import derive_seed

        g = torch.Generator().manual_seed(derive_seed("bench-gd", self.seed, int(step)))
        body = self.body
        starts = torch.randint(0, self.ids.numel() - body, (self.batch_size,), generator=g)
        win = self.ids[starts[:, None] + torch.arange(body)[None, :]]
        if self.cls_id is not None:  # the BERT-style models read [CLS] first and a [SEP] closing the segment
            win = torch.cat([torch.full((self.batch_size, 1), self.cls_id), win,
                             torch.full((self.batch_size, 1), self.sep_id)], 1)
        return {"input_ids": win, "attention_mask": torch.ones_like(win)}

    def val_batches(self) -> list[dict]:
        return [self.train_batch(10_000_000)]


GD_SOURCES = ("books", "wikitext-2", "sst2")
# WikiText-2's tokenized spellings of in-word punctuation (its ``@-@`` etc.), undone so a real tokenizer sees text
_WIKI_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def _gd_documents(data_dir: Path, source: str, tokenizer) -> list[str]:
    """The documents of one general-distillation source, in a fixed order (see :func:`gd_corpus`)."""
    import re

    from ..data.corpora import load_corpus

    folders = {"books": "gutenberg", "wikitext-2": "wikitext-2", "sst2": "glue-sst2"}
    if source not in folders:
        raise CompressionError(f"unknown general-distillation source {source!r}; choose from {', '.join(GD_SOURCES)}")
    root = Path(data_dir) / folders[source]
    if not root.is_dir():
        raise CompressionError(f"the {source} source folder {root} does not exist; pass the data folder that holds "
                               f"{folders[source]}/ (see morphlm.data.paths), or leave {source!r} out of sources")
    if source == "books":
        if not sorted(root.glob("*.txt.gz")) and not sorted(root.glob("*.txt")):
            raise CompressionError(f"{root} holds no books (*.txt.gz / *.txt); restore the Gutenberg folder")
        docs = []
        for pattern in ("*.txt.gz", "*.txt"):  # whole books, Project Gutenberg header/footer stripped
            if sorted(root.glob(pattern)):
                docs += [d.text for d in load_corpus(str(root / pattern))]
        return docs
    if source == "wikitext-2":
        files = [root / f for f in ("valid.txt", "test.txt") if (root / f).is_file()]
        if not files:
            raise CompressionError(f"{root} has neither valid.txt nor test.txt; restore the WikiText-2 folder")
        unk = tokenizer.id_to_token(tokenizer.unk_id) if tokenizer.has_role("unk") else "<unk>"
        docs = []
        for f in files:  # one document per article: a top-level heading " = Title = " starts the next one
            text = load_corpus(str(f))[0].text
            for a, b in _WIKI_JOINS:
                text = text.replace(a, b)
            text = text.replace("<unk>", unk)
            parts = re.split(r"\n(?= = [^=\n][^\n]* = \n)", text)
            docs += [p.strip() for p in parts if p.strip()]
        return docs
    train = root / "train.tsv"
    if not train.is_file():
        raise CompressionError(f"SST-2's training file {train} does not exist; restore the glue-sst2 folder")
    from ..data.tasks import load_task_file

    return [e.text for e in load_task_file(train)]  # TRAIN sentences only, labels dropped: never the dev set


def gd_corpus(data_dir: str | os.PathLike, tokenizer, *, max_tokens: int | None = None,
              sources=GD_SOURCES) -> tuple[torch.Tensor, dict[str, dict[str, int]]]:
    """The unlabelled text of general distillation, as one 1-D tensor of token ids, and its stats
    ``{source: {"tokens": n, "documents": d}}``.

    Sources (folders of ``data_dir``): ``books`` — the Project Gutenberg books of ``gutenberg/`` (sorted by file
    name, header/footer stripped, one document per book); ``wikitext-2`` — ``valid.txt`` then ``test.txt``,
    one document per article, its ``@-@`` spellings joined and ``<unk>`` read as the tokenizer's unknown token;
    ``sst2`` — the sentences of SST-2's ``glue-sst2/train.tsv`` in file order, labels dropped (the dev set is
    never read). Sources follow ``sources``' order; each document is followed by the tokenizer's boundary token
    (``[SEP]`` for a BERT WordPiece tokenizer), counted in its source's tokens.

    ``max_tokens``: the cap is spread over the sources in proportion to their full size — source s keeps
    ``floor(max_tokens * n_s / sum(n))`` tokens, its documents in order, the last one kept cut at the cap (so
    the result may be a few tokens under the cap). A source's ``documents`` counts those it contributes to."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise CompressionError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    if not sources:
        raise CompressionError(f"gd_corpus needs at least one source; choose from {', '.join(GD_SOURCES)}")
    sep = tokenizer.boundary_id
    per_source: dict[str, list[list[int]]] = {}
    for src in sources:
        docs = _gd_documents(Path(data_dir), src, tokenizer)
        # WikiText's <unk> was rewritten to the tokenizer's own unknown token: read it as that token, not as text
        encoded = ([tokenizer.encode(d, allow_special=True) for d in docs] if src == "wikitext-2"
                   else tokenizer.encode_batch(docs))
        per_source[src] = [ids + [sep] for ids in encoded if ids]
    sizes = {src: sum(len(d) for d in docs) for src, docs in per_source.items()}
    total = sum(sizes.values())
    if total == 0:
        raise CompressionError(f"the general-distillation sources {list(sources)} in {data_dir} hold no text")
    chunks, stats = [], {}
    for src, docs in per_source.items():
        cap = sizes[src] if max_tokens is None else (max_tokens * sizes[src]) // total
        taken, n_docs = 0, 0
        for ids in docs:
            if taken >= cap:
                break
            piece = ids[: cap - taken]
            chunks.append(torch.tensor(piece, dtype=torch.long))
            taken += len(piece)
            n_docs += 1
        stats[src] = {"tokens": taken, "documents": n_docs}
    ids = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
    return ids, stats


class WordPieceAdapter(Tokenizer):
    """morphlm's :class:`Tokenizer` over a BERT WordPiece ``tokenizer.json`` (MiniLM's), checked to have the
    tokens ClassificationBatches and masking need, found by role (pad, unk, cls, sep, mask); its
    ``to_json_str`` is the file's text verbatim."""

    def __init__(self, path: str | os.PathLike) -> None:
        import tokenizers

        try:
            tk = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 -- the Rust side raises plain Exception
            raise CompressionError(f"{path} is not a tokenizer.json ({exc}); pass the tokenizer.json of the MiniLM "
                                   "directory") from exc
        super().__init__(tk)  # turns off the file's padding/truncation to 128: batching does both itself
        missing = [r for r in ("pad", "unk", "cls", "sep", "mask") if not self.has_role(r)]
        if missing:
            raise CompressionError(f"{path} is not a BERT WordPiece tokenizer (it has no {missing} token); "
                                   "pass the tokenizer.json of the MiniLM directory")
        self._json = Path(path).read_text(encoding="utf-8")


@dataclass
class TaskData:
    train: list  # list[Example]
    dev: list
    tokenizer: Any
    max_len: int
    batch_size: int
    proxy_train: list = field(default_factory=list)  # searches' proxy data: from SST-2 train ...
    proxy_dev: list = field(default_factory=list)  # ... held out from every arm's training (never the dev set)

    def batches(self, seed: int, train: list | None = None):
        from ..data.tasks import ClassificationBatches

        return ClassificationBatches(train if train is not None else self.train, self.dev, self.tokenizer,
                                     self.batch_size, self.max_len, seed=seed)

    def dev_batches(self) -> list[dict]:
        if not hasattr(self, "_dev"):
            self._dev = self.batches(0).val_batches()
        return self._dev


def load_sst2(data_dir: Path, sizes, tokenizer) -> TaskData:
    """SST-2 train/dev from ``data_dir``/glue-sst2, cut to ``sizes`` (a BenchSizes): ``proxy_dev`` examples held
    out of train for the searches, optional train/dev subsets."""
    from ..data.tasks import load_task

    root = Path(data_dir) / "glue-sst2"
    if not (root / "train.tsv").is_file() or not (root / "dev.tsv").is_file():
        raise CompressionError(f"SST-2 is not at {root} (train.tsv, dev.tsv); pass --data-dir pointing at the "
                               "folder that holds glue-sst2/")
    task = load_task(root / "train.tsv", root / "dev.tsv")
    train, dev = task.train, task.val
    g = torch.Generator().manual_seed(4321)
    order = torch.randperm(len(train), generator=g).tolist()
    n_hold = min(sizes.proxy_dev, len(train) // 4)
    proxy_dev = [train[i] for i in order[:n_hold]]
    train = [train[i] for i in sorted(order[n_hold:])]
    if sizes.train_subset is not None and sizes.train_subset < len(train):
        g = torch.Generator().manual_seed(1234)
        keep = torch.randperm(len(train), generator=g)[: sizes.train_subset].tolist()
        train = [train[i] for i in sorted(keep)]
    if sizes.dev_subset is not None and sizes.dev_subset < len(dev):
        dev = dev[: sizes.dev_subset]
    proxy_train = train[: min(sizes.proxy_train, len(train))]
    return TaskData(train, dev, tokenizer, sizes.max_len, sizes.batch_size, proxy_train, proxy_dev)


# ============================================================================================ MiniLM teacher
def load_minilm_classifier(model_dir: str | os.PathLike, n_classes: int = 2, seed: int = 0) -> TransformerLM:
    """MiniLM (a bare ``BertModel`` directory: no MLM or classification head) -> native classifier.

    The backbone and pooler are mapped by the interop layer's ``BertForSequenceClassification`` table; the
    classifier (absent from the checkpoint) is freshly initialised (normal(0, initializer_range)), to be
    fine-tuned on the task."""
    from safetensors.torch import load_file

    from ..interop.hf import config_from_hf
    from ..interop.hf_maps import state_dict_from_hf

    model_dir = Path(model_dir)
    d = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    d = {**d, "architectures": ["BertForSequenceClassification"], "num_labels": n_classes}
    cfg = config_from_hf(d, "BertForSequenceClassification")
    hf_state = load_file(str(model_dir / "model.safetensors"))
    hf_state = {k if k.startswith("bert.") else f"bert.{k}": v for k, v in hf_state.items()}
    g = torch.Generator().manual_seed(seed)
    hf_state["classifier.weight"] = torch.randn(n_classes, cfg.d_model, generator=g) * cfg.init_std
    hf_state["classifier.bias"] = torch.zeros(n_classes)
    model = TransformerLM(cfg)
    model.load_state_dict(state_dict_from_hf(hf_state, cfg, "BertForSequenceClassification"), strict=True)
    return model


class LogitCachedTeacher(nn.Module):
    """The fine-tuned teacher behind a cache of its logits, keyed by the exact input tensors.

    Every student arm of a seed draws the same batches (one ``ClassificationBatches`` per seed), so the
    prediction-layer stages of several arms (KD, TinyBERT's stage b, LightMBERT, AutoTinyBERT) would run the
    same teacher forward passes again. When neither hidden states nor attentions are asked for, the cached
    logits are returned; the teacher is in eval mode (no dropout), so they are exactly what it would compute.
    FLOPs are still counted by distill() as if the teacher ran (the one ruler does not know about caches)."""

    def __init__(self, teacher: TransformerLM, max_entries: int = 20_000) -> None:
        super().__init__()
        self.inner = teacher
        self.config = teacher.config
        self.max_entries = max_entries
        self._cache: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _key(**inputs) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            t = inputs[name]
            if t is not None:
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()

    def forward(self, input_ids, labels=None, attention_mask=None, token_type_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False):
        if output_hidden_states or output_attentions or labels is not None or self.inner.training:
            return self.inner(input_ids, labels=labels, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        from ..model.transformer import ModelOutput

        key = self._key(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self._cache.get(key)
        if logits is None:
            self.misses += 1
            logits = self.inner(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits.detach()
            if len(self._cache) < self.max_entries:
                self._cache[key] = logits
        else:
            self.hits += 1
        return ModelOutput(logits=logits)
