"""Sampling from a causal TransformerLM (no KV cache: the demo and eval sizes do not need one)."""

from __future__ import annotations

import torch

from .transformer import TransformerLM


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
) -> torch.Tensor:
    """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` sampled tokens; greedy when temperature == 0."""
    if model.config.head != "lm":
        raise ValueError(f"generate needs a causal LM (head='lm'); this model has head={model.config.head!r}")
    was_training = model.training
    model.eval()
    ids = input_ids
    for _ in range(max_new_tokens):
        ctx = ids[:, -model.config.max_seq_len:]
        logits = model(ctx).logits[:, -1, :].float()  # (B, V)
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
    model.train(was_training)
    return ids
