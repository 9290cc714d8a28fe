"""Data layer: corpora -> tokenizer -> token store (memmap) -> deterministic batches; classification tasks.

Typical use::

    from morphlm.data import prepare_lm_store, LMBatches
    tok, store = prepare_lm_store("stdlib", vocab_size=8192, max_bytes=8_000_000)
    data = LMBatches(store, batch_size=32, seq_len=256, seed=0)
    batch = data.train_batch(step)   # the full global batch of that step, a pure function of (seed, step)
"""

from .batches import BatchError, LMBatches, MLMBatches, derive_seed
from .corpora import (
    CorpusError,
    Document,
    corpus_fingerprint,
    default_cache_dir,
    list_corpora,
    load_corpus,
    read_text_file,
    strip_gutenberg,
)
from . import remote  # noqa: E402,F401  (declares the downloaded corpora: shakespeare, hf:)
from .tasks import ClassificationBatches, Example, Task, TaskError, load_task, load_task_file
from .tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, train_tokenizer
from .tokens import TokenStore, TokenStoreError, prepare_lm_store

__all__ = [
    "BatchError",
    "ClassificationBatches",
    "CorpusError",
    "Document",
    "Example",
    "LMBatches",
    "MLMBatches",
    "SPECIAL_TOKENS",
    "Task",
    "TaskError",
    "TokenStore",
    "TokenStoreError",
    "Tokenizer",
    "TokenizerError",
    "corpus_fingerprint",
    "default_cache_dir",
    "derive_seed",
    "list_corpora",
    "load_corpus",
    "load_task",
    "load_task_file",
    "prepare_lm_store",
    "read_text_file",
    "strip_gutenberg",
    "train_tokenizer",
]
