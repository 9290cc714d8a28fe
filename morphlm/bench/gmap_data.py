"""The G-MAP benchmark's data side (:mod:`morphlm.bench.gmap` re-exports it): the unlabelled movie-review corpus
built from SST-2's TRAINING sentences with every dev sentence kept out, the SST-2 task files, the token stores of
the general and the domain corpus, and the held-out loss every model is scored with. ``cfg`` is always a
:class:`morphlm.bench.gmap.GMAPBenchConfig` (not imported here: that module imports this one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import config_hash

DOMAIN_SOURCES = ("sst2-sentences", "glue-sst2")


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


def data_root(cfg) -> Path:
    from ..data.paths import data_dir

    return Path(cfg.data_dir) if cfg.data_dir else data_dir()


def _sst2_files(root: Path) -> dict[str, Path]:
    files = {"glue_train": root / "glue-sst2" / "train.tsv", "glue_dev": root / "glue-sst2" / "dev.tsv",
             "stsa_train": root / "sst2-sentences" / "stsa.binary.train",
             "stsa_dev": root / "sst2-sentences" / "stsa.binary.dev"}
    return files


def _stsa_sentences(path: Path) -> list[str]:
    """``<label> <sentence>`` lines -> the sentences (labels dropped)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if label not in ("0", "1") or not text.strip():
            raise BenchError(f"{path} line {n} is not '<0|1> <sentence>'; restore the sst2-sentences folder")
        out.append(text.strip())
    return out


def domain_sentences(cfg) -> tuple[list[str], dict[str, Any]]:
    """The unlabelled domain corpus: the training sentences of ``cfg.domain_sources`` in file order, labels dropped,
    exact duplicates removed (first kept) and every sentence that is also a dev sentence (glue-sst2/dev.tsv,
    sst2-sentences/stsa.binary.dev when present; compared stripped and lower-cased) removed. Returns the sentences
    and their stats."""
    from ..data.tasks import load_task_file

    files = _sst2_files(data_root(cfg))
    if not files["glue_dev"].is_file():
        raise BenchError(f"SST-2's dev file {files['glue_dev']} does not exist: it is the task's evaluation set and "
                         f"the list of sentences kept out of the domain corpus; pass --data-dir, the folder that "
                         f"holds glue-sst2/ (and sst2-sentences/)")
    dev = {e.text.strip().lower() for e in load_task_file(files["glue_dev"])}
    if files["stsa_dev"].is_file():
        dev |= {s.lower() for s in _stsa_sentences(files["stsa_dev"])}
    seen: set[str] = set()
    out: list[str] = []
    stats: dict[str, Any] = {"dev_sentences_excluded": 0, "duplicates_removed": 0, "sources": {}}
    for src in cfg.domain_sources:
        path = files["stsa_train" if src == "sst2-sentences" else "glue_train"]
        if not path.is_file():
            raise BenchError(f"the domain source {src} needs {path}, which does not exist; pass --data-dir (the "
                             f"folder that holds {path.parent.name}/) or leave {src} out of the domain sources")
        texts = _stsa_sentences(path) if src == "sst2-sentences" else [e.text.strip() for e in load_task_file(path)]
        kept = 0
        for t in texts:
            key = t.lower()
            if key in dev:
                stats["dev_sentences_excluded"] += 1
            elif key in seen or not key:
                stats["duplicates_removed"] += 1
            else:
                seen.add(key)
                out.append(t)
                kept += 1
        stats["sources"][src] = {"file": str(path), "sentences": len(texts), "kept": kept}
    if len(out) < 20:
        raise BenchError(f"the domain corpus has {len(out)} sentences after removing duplicates and dev sentences; "
                         f"it needs at least 20 (check the files under {data_root(cfg)})")
    stats["sentences"] = len(out)
    return out, stats


def write_domain_corpus(cfg, work: Path) -> tuple[Path, dict[str, Any]]:
    """The domain corpus as JSONL (one sentence per document) under ``work/domain/``, written once (atomically)."""
    from ..io import write_atomic

    sentences, stats = domain_sentences(cfg)
    body = "".join(json.dumps({"text": s}) + "\n" for s in sentences)
    path = work / "domain" / f"domain-{config_hash([cfg.domain_sources, body])}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, body)
    return path, stats


def check_task_files(cfg) -> dict[str, Path]:
    """The SST-2 files, after checking that the task's train and dev files exist (BenchError naming the fix)."""
    files = _sst2_files(data_root(cfg))
    for key in ("glue_train", "glue_dev"):
        if not files[key].is_file():
            raise BenchError(f"SST-2 is not at {files[key].parent} (train.tsv, dev.tsv); pass --data-dir, the folder "
                             f"that holds glue-sst2/")
    return files


def task_files(cfg, work: Path) -> tuple[Path, Path]:
    """(train, dev) files of SST-2: glue-sst2's own, or with ``task_train_subset`` a TSV of that many training
    examples drawn once at random (seed 1234) under ``work/task/``. The dev file is always the whole dev set."""
    files = check_task_files(cfg)
    if cfg.task_train_subset is None:
        return files["glue_train"], files["glue_dev"]
    import random

    from ..data.tasks import load_task_file
    from ..io import write_atomic

    examples = load_task_file(files["glue_train"])
    keep = sorted(random.Random(1234).sample(range(len(examples)), min(cfg.task_train_subset, len(examples))))
    lines = ["label\tsentence"] + [f"{examples[i].label}\t{examples[i].text}" for i in keep]
    body = "\n".join(lines) + "\n"
    path = work / "task" / f"train-{len(keep)}-{config_hash(body)}.tsv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, body)
    return path, files["glue_dev"]


def prepare_general_store(cfg, show_progress: bool = True):
    from ..data import prepare_lm_store

    return prepare_lm_store(cfg.corpus, cfg.vocab_size, max_bytes=cfg.max_bytes, val_fraction=cfg.val_fraction,
                            seed=0, show_progress=show_progress)


def prepare_domain_store(cfg, domain_path: Path, tokenizer, show_progress: bool = True):
    from ..data import prepare_lm_store

    return prepare_lm_store(str(domain_path), cfg.vocab_size, tokenizer=tokenizer, max_bytes=None,
                            val_fraction=cfg.domain_val_fraction, seed=0, show_progress=show_progress)[1]


def lm_val_loss(model, store, cfg) -> float:
    """Held-out next-token loss (nats/token) of ``model`` on ``store``'s validation windows (the same windows for
    every model: they do not depend on a seed)."""
    import torch

    from ..data.batches import LMBatches
    from ..train.loop import model_loss
    from ..train.steps import evaluate

    batches = LMBatches(store, cfg.batch_size, cfg.seq_len, seed=0, eval_batches=cfg.eval_batches).val_batches()
    return float(evaluate(model, model_loss, batches, torch.device("cpu"), cfg.precision)["val_loss"])
