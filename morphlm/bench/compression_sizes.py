"""The compression benchmark's sizes: every knob in one dataclass, and the named profiles ``full`` (the
committed run), ``quick`` (a smoke test of the whole pipeline) and ``test`` (seconds, for the test suite)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

SCHEMA_VERSION = 1


@dataclass
class BenchSizes:
    """Every knob of the benchmark; ``FULL`` / ``QUICK`` / ``TEST`` are the named profiles."""

    name: str = "full"
    vocab_size: int = 4096
    corpus_glob: str = "wikitext-2/*.txt"  # relative to the data dir
    corpus_max_bytes: int | None = None
    teacher: dict = field(default_factory=lambda: dict(d_model=256, n_layers=8, n_heads=4, d_ff=1024))
    student: dict = field(default_factory=lambda: dict(d_model=64, n_layers=4, n_heads=4, d_ff=256))
    max_len: int = 64  # SST-2 dev sentences are < 64 BPE tokens except a handful (truncated)
    batch_size: int = 32
    dropout: float = 0.1
    # teacher
    mlm_steps: int = 250
    mlm_batch: int = 32
    mlm_seq: int = 64
    mlm_lr: float = 5e-4
    ft_steps: int = 250
    ft_lr: float = 6e-4  # probed: 2e-4 -> 68.8% dev, 6e-4 -> 70.4% (200 steps), 1.5e-3 diverges
    # students
    student_steps: int = 200
    student_lr: float = 1e-3
    distill_lr: float = 1e-3
    ternary_lr: float = 2e-4
    augment_subset: int = 1000  # --augment: train examples augmented (originals + variants = the train set)
    augment_n: int = 8  # --augment: variants per example (paper: 20 for SST-2)
    ternary_steps: int = 80  # QAT of the teacher-size model (its steps cost ~4x a student's)
    gd_steps: int = 150  # TinyBERT general distillation (extra compute, once, shared by seeds)
    eval_every: int = 20
    etd_eval_every: int = 10  # ETD's steps-to-reach resolution (each dev eval costs ~1 student step)
    train_subset: int | None = None  # None: all 67,349 SST-2 train examples
    dev_subset: int | None = None  # None: all 872 dev sentences
    proxy_train: int = 2000  # searches: proxy fine-tuning examples (from train)
    proxy_dev: int = 500  # searches: proxy scoring examples, held out of SST-2 train (never the dev set)
    # searches
    layermap_evals: int = 10  # GA and random search get the same number of proxy evaluations
    layermap_proxy_steps: int = 40  # proxy general distillation (with the candidate map)
    # proxy fine-tuning, then fitness = −cross-entropy on the proxy dev slice. Probed on this teacher: after
    # 30 steps every map scored the majority rate (52.2% in an earlier full run) and after 120 steps every
    # map's loss is still ln 2 to 3 decimals; at 200 steps (warm-up 20) maps differ (0.664-0.680 over 4 maps)
    layermap_proxy_ft_steps: int = 200
    layermap_metric: str = "neg_loss"
    nas_supernet_steps: int = 300
    nas_latency_samples: int = 100  # measured archs for the latency predictor (80/20 train/held-out)
    nas_evals: int = 32  # proxy evaluations (inherited weights, proxy dev) for each search
    # inherited-weight fitness: −cross-entropy (continuous; accuracy on 500 sentences moves in 0.2-point
    # steps and tied or near-tied most candidates in an earlier full run)
    nas_metric: str = "neg_loss"
    # ternary format size at a reference shape (bytes depend only on shapes): BERT-base; None skips it
    ternary_reference_shape: dict | None = field(default_factory=lambda: dict(
        vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512))
    # latency
    latency_runs: int = 100
    latency_warmup: int = 20
    latency_batch32_runs: int = 3
    latency_seq: int = 128
    seeds: int = 3

    def key(self, teacher_kind: str) -> str:
        blob = json.dumps({"sizes": dataclasses.asdict(self), "teacher": teacher_kind, "v": SCHEMA_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


FULL = BenchSizes()
QUICK = BenchSizes(
    name="quick", vocab_size=1024, corpus_max_bytes=400_000,
    teacher=dict(d_model=128, n_layers=4, n_heads=4, d_ff=512),
    student=dict(d_model=32, n_layers=2, n_heads=4, d_ff=128),
    max_len=48, batch_size=32, mlm_steps=30, mlm_batch=16, mlm_seq=48, ft_steps=60, ft_lr=1e-3,
    student_steps=40, ternary_steps=20, gd_steps=15, eval_every=10, etd_eval_every=5, ternary_reference_shape=None,
    train_subset=4000, dev_subset=256, proxy_train=300, proxy_dev=128,
    layermap_evals=3, layermap_proxy_steps=8, layermap_proxy_ft_steps=8, nas_supernet_steps=15,
    nas_latency_samples=8, nas_evals=3,
    latency_runs=10, latency_warmup=2, latency_batch32_runs=1, seeds=1,
)
TEST = BenchSizes(
    name="test", vocab_size=300, corpus_max_bytes=60_000,
    teacher=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64),
    student=dict(d_model=16, n_layers=1, n_heads=2, d_ff=32),
    max_len=24, batch_size=8, mlm_steps=3, mlm_batch=4, mlm_seq=24, ft_steps=4, student_steps=4, ternary_steps=4, gd_steps=2,
    eval_every=2, etd_eval_every=2, ternary_reference_shape=None, train_subset=64, dev_subset=32, proxy_train=32,
    proxy_dev=16, layermap_evals=2, layermap_proxy_steps=2, layermap_proxy_ft_steps=2,
    nas_supernet_steps=2, nas_latency_samples=4, nas_evals=2, latency_runs=2,
    latency_warmup=1, latency_batch32_runs=1, latency_seq=32, seeds=1,
)
PROFILES = {"full": FULL, "quick": QUICK, "test": TEST}
