"""The throughput benchmark's measurements: the synthetic token source, one timed window through morphlm's
``fit()`` and one through the plain loop an HF user writes, and the HF model built from the native one.
The protocol is described in :mod:`morphlm.bench.throughput`."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any, Callable

import torch

from ..model import ModelConfig, TransformerLM
from ..train.loop import TrainArgs, fit

# The same AdamW hyperparameters on both sides: TrainArgs' defaults.
_TA = TrainArgs()
OPTIM = dict(lr=_TA.lr, betas=(_TA.beta1, _TA.beta2), eps=_TA.adam_eps, weight_decay=_TA.weight_decay)
DEFAULT_GRAD_CLIP = _TA.grad_clip


def log(msg: str) -> None:
    print(msg, flush=True)


# ============================================================================ data
class SyntheticTokens:
    """Uniformly random tokens in the training loop's data contract.

    A small pool of batches is drawn once, so producing a batch costs nothing inside the timed window;
    ``train_batch(step)`` cycles through the pool (a pure function of the step, as the contract asks).
    The HF loop reads the same tokens through :meth:`hf_batch`.
    """

    def __init__(self, batch: int, seq: int, vocab: int, seed: int = 0, pool: int = 4) -> None:
        g = torch.Generator().manual_seed(seed)
        windows = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(pool)]  # (B, T+1)
        self._native = [{"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous()} for w in windows]
        self._val = [{"input_ids": windows[0][:1, :8].contiguous(), "labels": windows[0][:1, 1:9].contiguous()}]

    def train_batch(self, step: int) -> dict[str, torch.Tensor]:
        return self._native[step % len(self._native)]

    def val_batches(self) -> list[dict[str, torch.Tensor]]:
        return self._val  # one tiny batch; the benchmark stops fit() before it evaluates anyway

    def hf_batch(self, step: int) -> torch.Tensor:
        """(B, T) input ids; HF's causal-LM loss shifts them itself to predict ids[t+1] from ids[:t+1]."""
        return self._native[step % len(self._native)]["input_ids"]


# ============================================================================ timing
class _WindowDone(Exception):
    """Raised from the callback to end fit() once the timed window is complete."""


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class _StepClock:
    """fit() callback: perf_counter at the start of steps warmup .. warmup+timed (only at the two ends on
    CUDA, after a synchronize), then stop fit()."""

    def __init__(self, warmup: int, timed: int, device: torch.device) -> None:
        self.first, self.last = warmup, warmup + timed
        self.sync = _sync_fn(device)
        self.per_step = device.type == "cpu"
        self.stamps: list[float] = []
        self.losses: list[float] = []
        self.loop_tok_per_s: list[float] = []

    def on_step_begin(self, state) -> None:
        if state.step in (self.first, self.last):
            self.sync()
            self.stamps.append(time.perf_counter())
        elif self.per_step and self.first < state.step < self.last:
            self.stamps.append(time.perf_counter())
        if state.step >= self.last:
            raise _WindowDone

    def on_step_end(self, state, record: dict[str, Any]) -> None:
        self.losses.append(float(record["loss"]))
        if self.first < record["step"] <= self.last:
            self.loop_tok_per_s.append(float(record["tok_per_s"]))


def _window_stats(stamps: list[float], timed: int, tokens_per_step: int, losses: list[float]) -> dict[str, Any]:
    """Throughput over the window; ``stamps`` holds its two ends, or the start of every step and the end."""
    total = stamps[-1] - stamps[0]
    out = {
        "tok_per_s": tokens_per_step * timed / total,
        "step_time_s": total / timed,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    if len(stamps) == timed + 1:
        out["step_times_s"] = [round(b - a, 6) for a, b in zip(stamps, stamps[1:])]
    return out


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure_morphlm(model: TransformerLM, data: SyntheticTokens, device: torch.device, *, compile: bool,
                    warmup: int, timed: int, grad_clip: float, micro_batch: int | None = None, seed: int = 0
                    ) -> dict[str, Any]:
    """One measurement through fit(): ``warmup`` discarded steps, then ``timed`` timed ones."""
    clock = _StepClock(warmup, timed, device)
    args = TrainArgs(out_dir=None, max_steps=warmup + timed + 1, warmup_steps=0, schedule="constant",
                     compile=compile, device=str(device), progress=False, micro_batch_size=micro_batch,
                     lr=OPTIM["lr"], beta1=OPTIM["betas"][0], beta2=OPTIM["betas"][1], adam_eps=OPTIM["eps"],
                     weight_decay=OPTIM["weight_decay"], grad_clip=grad_clip, seed=seed,
                     # the HF loop autocasts on CUDA only: fit() must too (its "auto" is bf16 on a bf16-capable CPU)
                     precision="bf16" if device.type == "cuda" else "fp32")
    _reset_memory(device)
    try:
        result = fit(model, None, data, args, [clock])
    except _WindowDone:
        pass
    else:  # fit returned on its own (a SIGINT/SIGTERM raises TrainingInterrupted, a KeyboardInterrupt, instead)
        raise RuntimeError(f"fit() finished at step {result.steps} before the timed window closed")
    tokens = data.train_batch(0)["input_ids"].numel()
    out = _window_stats(clock.stamps, timed, tokens, clock.losses)
    out["loop_tok_per_s"] = statistics.median(clock.loop_tok_per_s) if clock.loop_tok_per_s else None
    out["peak_mem_gib"] = _peak_memory_gib(device)
    return out


def measure_hf(model: torch.nn.Module, runner: torch.nn.Module, data: SyntheticTokens, device: torch.device,
               *, warmup: int, timed: int, grad_clip: float) -> dict[str, Any]:
    """One measurement of the plain loop an HF user writes; ``runner`` is ``model`` or ``torch.compile(model)``.
    (``--variants`` also runs morphlm's model through it, to separate the model's speed from fit's.)"""
    sync = _sync_fn(device)
    _reset_memory(device)
    opt = torch.optim.AdamW(model.parameters(), **OPTIM, **({"fused": True} if device.type == "cuda" else {}))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    model.train()
    stamps: list[float] = []
    losses: list[torch.Tensor] = []
    for step in range(warmup + timed):
        if step == warmup:
            sync()
            stamps.append(time.perf_counter())
        elif step > warmup and device.type == "cpu":
            stamps.append(time.perf_counter())
        x = data.hf_batch(step).to(device, non_blocking=True)
        with autocast():
            loss = runner(input_ids=x, labels=x).loss
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read after the window: no host sync inside it
    sync()
    stamps.append(time.perf_counter())
    out = _window_stats(stamps, timed, data.hf_batch(0).numel(), torch.stack(losses).float().tolist())
    out["peak_mem_gib"] = _peak_memory_gib(device)
    del opt
    return out


# ============================================================================ models
def _direct_hf_config(cfg: ModelConfig):
    """Last resort when morphlm.interop cannot build the HF config: GPT2Config / LlamaConfig by hand,
    with the shapes of ``cfg`` (random weights; throughput does not depend on their values)."""
    import transformers

    if cfg.position == "learned" and cfg.norm == "layernorm" and cfg.activation == "gelu_tanh":
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_embeddings)
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        return transformers.LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
            attention_bias=cfg.bias, mlp_bias=cfg.bias, tie_word_embeddings=cfg.tie_embeddings,
            attention_dropout=cfg.dropout)
    raise ValueError(f"preset {cfg.name!r} is neither GPT-2-style nor LLaMA-style; no HF baseline for it")


def build_hf_model(model: TransformerLM) -> tuple[torch.nn.Module, str]:
    """The HF model with ``model``'s weights (``to_hf_module``), or, if that fails on this transformers
    version, the same shapes with random weights. Returns (model, how it was built)."""
    try:
        from ..interop.hf import to_hf_module

        return to_hf_module(model, attn_implementation="sdpa"), "to_hf_module (same weights)"
    except Exception as exc:  # noqa: BLE001 - fall back, say so in the results
        log(f"  to_hf_module failed ({type(exc).__name__}: {exc}); building the HF model from its config")
        reason = f"{type(exc).__name__}: {exc}"
    import transformers

    try:
        from ..interop.hf import config_to_hf

        hf_cfg, _ = config_to_hf(model.config)
        how = "config_to_hf, random weights"
    except Exception:  # noqa: BLE001
        hf_cfg = _direct_hf_config(model.config)
        how = "hand-built config, random weights"
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa")
    return hf.to(next(model.parameters()).device), f"{how} (to_hf_module failed: {reason})"
