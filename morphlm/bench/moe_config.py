"""The MoE benchmark's settings and arms: :class:`MoEBenchConfig` with its profiles (:func:`full_config`,
:func:`quick_config`, :func:`test_config`) and the six arms, each a :class:`~morphlm.model.config.ModelConfig`
built from the one base shape so that every arm spends the same ACTIVE training FLOPs per token on the one ruler
(:mod:`morphlm.train.flops`), up to the differences :func:`flops_match` reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .common import check_run_settings

SCHEMA_VERSION = 1

# arm name -> what it is (the order is the report's order)
ARMS: dict[str, str] = {
    "dense": "dense SwiGLU FFN, width chosen so its active FLOPs per token equal vanilla MoE's (router included)",
    "vanilla": "MoE: 8 experts per layer, top-1, softmax router, Switch aux loss 1e-2 (Fedus et al. 2021, "
               "arXiv 2101.03961)",
    "loss-free": "MoE: 8 experts per layer, top-1, sigmoid scores with loss-free balancing bias u = 1e-3 (Wang et "
                 "al. 2024, arXiv 2408.15664; DeepSeek-V3 gating), no aux loss",
    "unipool": "UniPool: one pool of M = 8L experts shared by all layers, NormRouter per layer, pool loss 1e-2 "
               "(Huang et al. 2026, §3)",
    "unipool-half": "UniPool with a reduced pool M = 4L (half of vanilla's expert parameters), pool loss 1e-2",
    "loopmoe": "LoopMoE: L/R unique MoE blocks run R times with IterAdaLN, experts per layer from capacity "
               "balancing so total and active parameters match vanilla (Chen et al. 2026; rule reconstructed)",
}


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


@dataclass
class MoEBenchConfig:
    """Everything that shapes ``morphlm bench moe``. The profiles below fill it."""

    profile: str = "full"  # full | quick | test
    corpus: str = "shakespeare"
    max_bytes: int | None = None
    val_fraction: float = 0.1  # held-out BOOKS (whole documents), not windows
    vocab_size: int = 2048
    seq_len: int = 256
    batch_size: int = 16
    eval_batches: int = 8
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    experts: int = 8
    expert_d_ff: int = 128
    top_k: int = 1
    aux_coef: float = 1e-2
    pool_coef: float = 1e-2
    bias_update: float = 1e-3
    reduced_pool_size: int | None = None  # None -> half of vanilla's experts: experts * n_layers / 2
    loop_repeats: int = 2
    steps: int = 200
    warmup_steps: int = 10
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    eval_every: int = 25
    precision: str = "auto"  # auto: bf16 autocast on CPUs with native bf16 (fit's rule), else fp32
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] | None = None  # None -> all six
    # the layer benchmark (ours vs Hugging Face's Mixtral experts at identical shapes)
    layer_tokens: int = 4096
    layer_d_model: int = 256
    layer_d_ff: int = 512
    layer_experts: int = 8
    layer_top_k: int = 1
    layer_repeats: int = 5
    # the simulator check: "full" (every held-out config), "quick" (two), "tiny" (one, bf16, 2 steps), "off"
    simulator: str = "full"

    def validate(self) -> None:
        check_run_settings(self, BenchError)
        if self.simulator not in ("full", "quick", "tiny", "off"):
            raise BenchError(f"simulator={self.simulator!r}: choose full, quick, tiny or off")
        if self.top_k > self.experts:
            raise BenchError(f"top_k={self.top_k} is larger than experts={self.experts}; lower top_k")
        if self.n_layers % self.loop_repeats:
            raise BenchError(f"loop_repeats={self.loop_repeats} must divide n_layers={self.n_layers} (LoopMoE runs "
                             f"n_layers/R unique blocks R times); pick a divisor of n_layers")
        if self.reduced_pool is None or self.reduced_pool < self.top_k:
            raise BenchError(f"reduced pool of {self.reduced_pool} experts: it must hold at least top_k={self.top_k} "
                             f"experts; set reduced_pool_size or more experts")
        self.selected_arms()
        for arm in self.selected_arms():
            self.arm_config(arm)  # a ConfigError (e.g. capacity balancing that cannot match) as a BenchError

    @property
    def reduced_pool(self) -> int | None:
        if self.reduced_pool_size is not None:
            return self.reduced_pool_size
        total = self.experts * self.n_layers
        return total // 2 if total >= 2 else None

    def selected_arms(self) -> list[str]:
        """The arms to run: vanilla always runs (every difference is measured against it)."""
        if self.arms is None:
            return list(ARMS)
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise BenchError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
        chosen = set(self.arms) | {"vanilla"}
        return [a for a in ARMS if a in chosen]

    # -- the arms' models ---------------------------------------------------------------------------------------
    def base_fields(self) -> dict[str, Any]:
        from ..model.config import PRESETS

        return {**PRESETS["tiny-llama"], "vocab_size": self.vocab_size, "d_model": self.d_model,
                "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "max_seq_len": self.seq_len}

    def vanilla_config(self):
        from ..model.config import ModelConfig

        return ModelConfig.from_dict({**self.base_fields(), "name": "moe-bench-vanilla", "moe_experts": self.experts,
                                      "moe_expert_d_ff": self.expert_d_ff, "moe_top_k": self.top_k,
                                      "moe_router": "softmax", "moe_balance": "aux", "moe_aux_coef": self.aux_coef})

    def arm_config(self, arm: str):
        """The ModelConfig of ``arm`` (:data:`ARMS`); BenchError naming the setting when it cannot be built."""
        from ..model.config import MOE_DEFAULTS, ConfigError, ModelConfig
        from ..model.loop import balance_loop_capacity
        from ..train.flops import ffn_matmul_params, moe_ffn_matmul_params

        van = self.vanilla_config()
        try:
            if arm == "vanilla":
                return van
            if arm == "dense":
                # dense active FFN weights = the MoE FFN's (router d·E + top-k experts): the nearest integer width
                unit = ffn_matmul_params(van, 1)
                d_ff = max(1, round(moe_ffn_matmul_params(van) / unit))
                return ModelConfig.from_dict({**self.base_fields(), "name": "moe-bench-dense", "d_ff": d_ff})
            if arm == "loss-free":
                return van.replace(name="moe-bench-loss-free", moe_router="sigmoid", moe_balance="loss_free",
                                   moe_aux_coef=MOE_DEFAULTS["moe_aux_coef"], moe_bias_update=self.bias_update)
            if arm in ("unipool", "unipool-half"):
                size = self.experts * self.n_layers if arm == "unipool" else self.reduced_pool
                return van.replace(name=f"moe-bench-{arm}", moe_pool=True, moe_pool_size=size, moe_router="norm",
                                   moe_balance="pool", moe_aux_coef=self.pool_coef)
            if arm == "loopmoe":
                looped, _ = balance_loop_capacity(van, self.loop_repeats)
                return looped.replace(name="moe-bench-loopmoe")
        except ConfigError as exc:
            raise BenchError(f"arm {arm}: {exc}") from exc
        raise BenchError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")

    def train_args(self, seed: int):
        from ..train.optim import TrainArgs

        return TrainArgs(max_steps=self.steps, schedule_steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps,
                         min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, eval_every=self.eval_every,
                         seed=seed, progress=False, device="cpu", precision=self.precision)


def default_corpus() -> str:
    from .growth_config import default_corpus as growth_default

    return growth_default()


def full_config(**changes: Any) -> MoEBenchConfig:
    """The committed run: 6 arms × 3 seeds at d=128, L=4 (4 heads, 2 KV heads, SwiGLU, RMSNorm, RoPE — the UniPool
    recipe's shape family at CPU scale), vocab 2048, context 256, batch 16 (4096 tokens per step), 8 experts of
    width 128 (an expert's weights equal the attention's, so capacity balancing at R = 2 gives LoopMoE exactly
    2·8 + 1 = 17 experts per looped layer), top-1.

    Sizing, measured on this 2-core machine (single-threaded CPU time of one training step, bf16 autocast, batch
    16 × 256 tokens, other work running): dense 0.38 s, vanilla 0.67 s, loss-free 0.60 s, UniPool 0.70 s, reduced
    pool ~0.8 s, LoopMoE 0.80 s — 3.95 s per step of all six arms, ×1.11 for the evaluations (8 held-out batches
    every 24 steps), × 3 seeds, over two single-threaded workers: ≈ 6.6 s of wall time per step. 240 steps
    (≈ 0.98M tokens per run, ~0.43 tokens per vanilla parameter (2.30M): a short-horizon comparison) take
    ≈ 26 min, plus ≈ 3 min for the token store, the layer benchmark and the simulator check: ≈ 29 min, leaving
    ~20% for a busier machine within the 35-minute budget."""
    cfg = MoEBenchConfig(profile="full", corpus=default_corpus(), steps=240, warmup_steps=12, eval_every=24)
    return dataclasses.replace(cfg, **changes)


def quick_config(**changes: Any) -> MoEBenchConfig:
    """One seed at a small size, every arm: a smoke test of the whole pipeline (< 60 s on 2 cores), not a
    measurement."""
    cfg = MoEBenchConfig(profile="quick", corpus=default_corpus(), max_bytes=2_000_000, vocab_size=512, seq_len=64,
                         batch_size=4, eval_batches=2, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         expert_d_ff=64, steps=12, warmup_steps=2, eval_every=6, seeds=[0],
                         layer_tokens=512, layer_d_model=64, layer_d_ff=128, layer_repeats=2, simulator="tiny")
    return dataclasses.replace(cfg, **changes)


def ci_config(**changes: Any) -> MoEBenchConfig:
    """The CI profile (tests/test_bench_moe.py): like --quick, smaller still, on whatever corpus the test gives."""
    cfg = quick_config(profile="test", max_bytes=300_000, vocab_size=300, seq_len=32, batch_size=2, d_model=32,
                       n_heads=2, n_kv_heads=1, expert_d_ff=32, experts=4, steps=4, warmup_steps=1, eval_every=2,
                       eval_batches=1, layer_tokens=128, layer_d_model=32, layer_d_ff=32, layer_experts=4,
                       layer_repeats=1, simulator="off")
    return dataclasses.replace(cfg, **changes)
