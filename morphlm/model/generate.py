"""Sampling from a causal TransformerLM, with a KV cache.

With the cache (the default wherever :func:`~morphlm.model.transformer.kv_cache_unsupported` allows it) the prompt
runs once (prefill) and every new token runs alone against the cached keys and values of the tokens before it;
without it every new token reruns the whole prefix. Both give the same tokens (greedy decoding is tested equal
token for token). The cached path keeps prompt + new tokens inside the model's context: a prompt that leaves no room
for ``max_new_tokens`` is cut to its last tokens (logged), and a request of ``max_new_tokens`` >= the context is a
:class:`GenerationError`. The uncached path (``use_cache=False``, or a model the cache does not serve, which is
logged) keeps the old behaviour: each step reads the last ``max_seq_len`` tokens.
"""

from __future__ import annotations

import logging
import time

import torch

from .attention import KVCache, KVCacheFullError
from .transformer import TransformerLM, kv_cache_unsupported

log = logging.getLogger(__name__)

__all__ = ["GenerationError", "KVCacheFullError", "generate", "fit_prompt", "measure_kv_speedup"]


class GenerationError(ValueError):
    """A generation request the model cannot serve; the message says what to change."""


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """The next token (B, 1) from last-position logits (B, V): argmax when temperature <= 0, else top-k sampling."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def fit_prompt(n_prompt: int, max_new_tokens: int, context: int) -> int:
    """How many of a prompt's last tokens the cached path keeps so that prompt + ``max_new_tokens`` fit the model's
    ``context`` (all of them when they fit). Raises :class:`GenerationError` when ``max_new_tokens`` alone leaves
    no room for one prompt token."""
    if max_new_tokens >= context:
        raise GenerationError(f"max_new_tokens={max_new_tokens} does not fit the KV cache: the model's context "
                              f"(max_seq_len) is {context} tokens, prompt included; ask for at most {context - 1} "
                              f"new tokens (or call generate with use_cache=False, which slides over the last "
                              f"max_seq_len tokens)")
    return min(n_prompt, context - max_new_tokens)


@torch.no_grad()
def generate(
    model: TransformerLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = 50,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` sampled tokens; greedy when temperature == 0.
    Returns the whole prompt followed by the new tokens (stops early once every row emitted ``eos_id``).
    ``use_cache``: decode with a KV cache where the model supports one (see the module docstring)."""
    cfg = model.config
    if cfg.head != "lm":
        raise ValueError(f"generate needs a causal LM (head='lm'); this model has head={cfg.head!r}")
    if use_cache:
        why = kv_cache_unsupported(cfg)
        if why is None and model.gmap is not None:
            why = "it reads G-MAP memory"
        if why is not None:
            log.info("generating without a KV cache: %s", why)
            use_cache = False
    was_training = model.training
    model.eval()
    try:
        if use_cache:
            return _generate_cached(model, input_ids, max_new_tokens, temperature, top_k, generator, eos_id)
        ids = input_ids
        for _ in range(max_new_tokens):
            ctx = ids[:, -cfg.max_seq_len:]
            nxt = _pick(model(ctx).logits[:, -1, :], temperature, top_k, generator)
            ids = torch.cat([ids, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return ids
    finally:
        model.train(was_training)


def _generate_cached(model, input_ids, max_new_tokens, temperature, top_k, generator, eos_id) -> torch.Tensor:
    ctx_len = model.config.max_seq_len
    if max_new_tokens <= 0:
        return input_ids
    keep = fit_prompt(input_ids.shape[1], max_new_tokens, ctx_len)
    if keep < input_ids.shape[1]:
        log.warning("the prompt of %d tokens does not fit the model's context of %d tokens with %d new tokens: "
                    "generating from its last %d tokens", input_ids.shape[1], ctx_len, max_new_tokens, keep)
    if keep == 0:
        raise GenerationError("the prompt is empty; pass at least one token (e.g. the tokenizer's bos or eos id)")
    cache = KVCache(len(model.blocks), keep + max_new_tokens - 1)
    logits = model(input_ids[:, -keep:], kv_cache=cache).logits[:, -1, :]
    ids = input_ids
    for step in range(max_new_tokens):
        nxt = _pick(logits, temperature, top_k, generator)
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
        if step + 1 < max_new_tokens:
            logits = model(nxt, kv_cache=cache).logits[:, -1, :]
    return ids


def measure_kv_speedup(model: TransformerLM, input_ids: torch.Tensor, max_new_tokens: int) -> dict[str, float | bool]:
    """Greedy decoding of ``max_new_tokens`` after ``input_ids`` (B, T), timed with and without the KV cache.
    Returns ``cached_tok_s`` and ``uncached_tok_s`` (new tokens per second, the prefill included),
    ``kv_cache_speedup`` (their ratio) and ``same_tokens`` (whether both produced the same tokens)."""
    why = kv_cache_unsupported(model.config)
    if why is not None:
        raise GenerationError(f"this model cannot decode with a KV cache ({why}); there is no speedup to measure")
    out, rates = {}, {}
    for name, cached in (("uncached", False), ("cached", True)):
        start = time.perf_counter()
        out[name] = generate(model, input_ids, max_new_tokens, temperature=0, use_cache=cached)
        if out[name].is_cuda:
            torch.cuda.synchronize(out[name].device)
        elapsed = time.perf_counter() - start
        rates[name] = (out[name].shape[1] - input_ids.shape[1]) * input_ids.shape[0] / max(elapsed, 1e-9)
    return {"cached_tok_s": rates["cached"], "uncached_tok_s": rates["uncached"],
            "kv_cache_speedup": rates["cached"] / max(rates["uncached"], 1e-9),
            "same_tokens": bool(torch.equal(out["cached"], out["uncached"]))}
