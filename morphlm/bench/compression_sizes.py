"""The compression benchmark's sizes: every knob in one dataclass, and the named profiles ``full`` (the
committed run), ``quick`` (a smoke test of the whole pipeline) and ``test`` (seconds, for the test suite)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

SCHEMA_VERSION = 2

# the fields the teacher pipeline reads: its checkpoints are cached under a key of these alone, so changing a
# student-side knob (steps, losses, searches) never retrains the teacher
TEACHER_FIELDS = ("vocab_size", "corpus_glob", "corpus_max_bytes", "teacher", "max_len", "batch_size", "dropout",
                  "mlm_steps", "mlm_batch", "mlm_seq", "mlm_lr", "ft_steps", "ft_lr", "train_subset", "dev_subset",
                  "proxy_dev", "teacher_precision")


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
    teacher_precision: str = "bf16"  # teacher fine-tuning under bf16 autocast (fp32 weights and optimizer)
    precision: str = "bf16"  # every student run (same for all arms, so the comparison is unchanged; 1.7-2x on
    # this CPU with AVX-512 BF16); dev accuracy, latency and sizes are measured in fp32
    # students
    student_steps: int = 400  # every 4-layer student arm, in task steps (same batches); dev curves of the
    # TinyBERT recipe from teacher-layer slices with the MiniLM teacher still rose past step 200 (probed)
    student_lr: float = 1e-3
    distill_lr: float = 1e-3
    ternary_lr: float = 2e-4
    augment_subset: int = 1000  # --augment: train examples augmented (originals + variants = the train set)
    augment_n: int = 8  # --augment: variants per example (paper: 20 for SST-2)
    ternary_steps: int = 80  # QAT of the teacher-size model (its steps cost ~4x a student's)
    gd_steps: int = 1000  # TinyBERT general distillation (extra compute, once, shared by seeds); its budget in
    # tokens is gd_steps x batch_size x max_len (reported as gd_tokens)
    gd_sources: tuple = ("books", "wikitext-2", "sst2")  # unlabelled text of general distillation (SST-2: train
    # sentences without labels, never dev)
    gd_corpus_tokens: int | None = None  # cap of the unlabelled corpus (None: all of it)
    lightmbert_gd_steps: int | None = 300  # a teacher-WIDTH student costs ~4x a 4L/d64 step (None: gd_steps)
    # task distillation: the intermediate stage's share of student_steps; the prediction stage gets the rest
    td_intermediate_frac: float = 0.25
    # intermediate losses (DistillConfig): attention as raw score MSE (TinyBERT) | row-centred MSE | KL
    att_loss: str = "kl"
    head_map: str = "mean"
    hid_loss: str = "normalized"
    att_weight: float = 1.0
    hid_weight: float = 1.0
    emb_weight: float = 1.0
    # a compute saving is measured only against a reference whose dev accuracy rises this far above the
    # majority-class rate at some logged point; otherwise it is reported as not measurable
    learn_margin: float = 0.05
    eval_every: int = 20
    etd_eval_every: int = 20  # ETD's steps-to-reach resolution (each dev eval costs ~1 student step)
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
        """Hash of every knob (+ teacher kind, schema): the per-arm results depend on all of them."""
        blob = json.dumps({"sizes": dataclasses.asdict(self), "teacher": teacher_kind, "v": SCHEMA_VERSION},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def teacher_key(self, teacher_kind: str) -> str:
        """Hash of the knobs the teacher pipeline reads (:data:`TEACHER_FIELDS`): its cached checkpoints survive
        changes of every other knob."""
        d = dataclasses.asdict(self)
        blob = json.dumps({"teacher_sizes": {k: d[k] for k in TEACHER_FIELDS}, "teacher": teacher_kind},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


FULL = BenchSizes()
QUICK = BenchSizes(
    name="quick", vocab_size=1024, corpus_max_bytes=400_000,
    teacher=dict(d_model=128, n_layers=4, n_heads=4, d_ff=512),
    student=dict(d_model=32, n_layers=2, n_heads=4, d_ff=128),
    max_len=48, batch_size=32, mlm_steps=30, mlm_batch=16, mlm_seq=48, ft_steps=60, ft_lr=1e-3,
    student_steps=40, ternary_steps=20, gd_steps=15, gd_sources=("wikitext-2",), gd_corpus_tokens=400_000,
    lightmbert_gd_steps=None, eval_every=10, etd_eval_every=5, ternary_reference_shape=None,
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
    gd_sources=("wikitext-2",), gd_corpus_tokens=60_000, lightmbert_gd_steps=None,
    eval_every=2, etd_eval_every=2, ternary_reference_shape=None, train_subset=64, dev_subset=32, proxy_train=32,
    proxy_dev=16, layermap_evals=2, layermap_proxy_steps=2, layermap_proxy_ft_steps=2,
    nas_supernet_steps=2, nas_latency_samples=4, nas_evals=2, latency_runs=2,
    latency_warmup=1, latency_batch32_runs=1, latency_seq=32, seeds=1,
)
PROFILES = {"full": FULL, "quick": QUICK, "test": TEST}
