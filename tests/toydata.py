"""A tiny in-memory batch source with the training loop's contract (batches are a function of the step)."""

import torch


class ToyData:
    def __init__(self, vocab=512, seq_len=32, batch_size=8, seed=0, n_tokens=20000, nan_at=None):
        g = torch.Generator().manual_seed(1234)
        # a learnable stream: noisy repetition of a short pattern
        base = torch.randint(0, vocab, (97,), generator=g)
        self.tok = base.repeat(n_tokens // 97 + 1)[:n_tokens]
        noise = torch.rand(n_tokens, generator=g) < 0.1
        self.tok[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=g)
        self.T, self.B, self.seed, self.nan_at = seq_len, batch_size, seed, nan_at

    def train_batch(self, step):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tok) - self.T - 1, (self.B,), generator=g)
        x = torch.stack([self.tok[s:s + self.T] for s in starts])
        y = torch.stack([self.tok[s + 1:s + self.T + 1] for s in starts])
        batch = {"input_ids": x, "labels": y}
        if self.nan_at is not None and step >= self.nan_at:
            batch["poison"] = torch.ones(self.B)
        return batch

    def val_batches(self):
        return [{k: v for k, v in self.train_batch(10**6 + i).items() if k != "poison"} for i in range(2)]


def poisonable_loss(model, batch):
    """Model loss that turns NaN when the batch carries a 'poison' entry (to test divergence handling)."""
    batch = dict(batch)
    poison = batch.pop("poison", None)
    loss = model(**batch).loss
    if poison is not None:
        loss = loss * float("nan")
    return loss
