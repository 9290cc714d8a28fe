"""Growth masks: MSG's masked structure as part of the model (Yao et al., "Masked Structural Growth for 2x
Faster Language Model Pre-training", ICLR 2024, arXiv:2305.02869, §3).

A model grown with masked structural growth multiplies every piece of *new* structure by a mask m that ramps
from 0 to 1 during training, so at m = 0 it computes exactly the source model's function whatever the new
weights are. That makes the masks part of the function, so they live in the model (and in its checkpoint),
not in a training callback: ``ModelConfig.msg_ramp_steps`` (not None) makes :class:`TransformerLM` own a
:class:`GrowthMasks` module whose buffers (saved in model.safetensors by the normal save path) say

* ``residual`` (d_model,): which residual-stream dimensions are new;
* ``heads`` (n_layers, n_heads·head_dim): which input rows of each layer's attention output projection belong
  to new query heads; ``neurons`` (n_layers, d_ff): which FFN neurons (fc2 inputs) are new;
* ``layers`` (n_layers,): which layers are new;
* ``value``: the current mask m, and ``step``: how many training steps of the ramp have run.

How the masks act (the model's own hooks on its submodules, installed only where something is new):

* a new layer: ``h ← lerp(h, Block(h), m) = (1-m)·h + m·Block(h)``, the identity at m = 0;
* new residual dimensions: embeddings, output projections and fc2 outputs are multiplied by c = [1 … 1, m … m];
  every LayerNorm/RMSNorm computes its statistics with weights c (mean Σcᵢxᵢ/Σcᵢ, variance / mean square
  likewise) and multiplies its output by c; the classifier's input is masked the same way. At m = 0 the
  statistics are exactly the source's over the old dimensions. (The public MSG code rescales an RMSNorm by
  √(Σc/D) instead, exact for RMSNorm without eps only; the weighted statistics are a reconstruction that is
  also exact for LayerNorm.)
* new query heads / FFN neurons: the inputs of the output projection / fc2 are multiplied by the mask.

The ramp: the training loop calls ``TransformerLM.on_train_step_begin()`` at the start of every optimizer step;
the masks then take m = min(step / ramp_steps, 1) (1 at once for ramp_steps = 0) and count the step. At m >= 1
every hook returns the module's own output, so the model computes the plain grown model bit for bit; a
checkpoint records that as ``value`` = 1 (``TransformerLM.remove_growth_masks()`` turns it into a plain
checkpoint without the masks). While the ramp runs under ``torch.compile`` each new m recompiles.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .config import ModelConfig
from .norms import LayerNorm, RMSNorm

FLAG_BUFFERS = ("residual", "heads", "neurons", "layers")


def masked_norm(module: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """LayerNorm/RMSNorm of x (…, D) with statistics weighted by c (D,) and the output multiplied by c."""
    dtype = x.dtype
    xf, w = x.float(), c.float()
    total = w.sum()
    if isinstance(module, RMSNorm):
        ms = (xf.square() * w).sum(-1, keepdim=True) / total
        y = module.weight * (xf * torch.rsqrt(ms + module.eps)).to(dtype)
    else:
        mu = (xf * w).sum(-1, keepdim=True) / total
        var = ((xf - mu).square() * w).sum(-1, keepdim=True) / total
        y = ((xf - mu) * torch.rsqrt(var + module.eps)).to(dtype) * module.weight
        if getattr(module, "bias", None) is not None:
            y = y + module.bias
    return y * c.to(y.dtype)


class GrowthMasks(nn.Module):
    """The MSG masks of one grown :class:`~morphlm.model.transformer.TransformerLM` (see the module docstring).

    Built empty (nothing new, m = 0) from the config; :meth:`set_flags` (the grow verb) or loading a checkpoint
    fills the flags, and the hooks are (re)installed on the owning model wherever a flag is set."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ramp_steps = int(cfg.msg_ramp_steps or 0)
        L = cfg.n_layers
        self.register_buffer("residual", torch.zeros(cfg.d_model, dtype=torch.bool))
        self.register_buffer("heads", torch.zeros(L, cfg.n_heads * cfg.head_dim, dtype=torch.bool))
        self.register_buffer("neurons", torch.zeros(L, cfg.d_ff, dtype=torch.bool))
        self.register_buffer("layers", torch.zeros(L, dtype=torch.bool))
        self.register_buffer("value", torch.zeros((), dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # host mirrors of value/step (read every forward/step without a device sync) and the vectors cache
        self._m = 0.0
        self._step = 0
        self._cache: dict[tuple, torch.Tensor] = {}
        self._handles: list = []
        self._owner: list[nn.Module] = []  # the TransformerLM (a list: not registered as a submodule)
        self._sig = self._signature()  # built empty: nothing to hook until the buffers are written

    def _signature(self) -> tuple:
        """Identity and version counter of every buffer: changes whenever anything writes them (a checkpoint
        loader copying tensors in, ``.to()``, :meth:`set_flags`), so :meth:`sync` notices without a device sync."""
        return tuple((id(b), b._version) for b in self._buffers.values())

    def sync(self) -> None:
        """Re-read the host mirrors and reinstall the hooks if the buffers were written since the last look."""
        if self._sig != self._signature():
            self._m = float(self.value)
            self._step = int(self.step)
            self._install()

    @property
    def mask(self) -> float:
        self.sync()
        return self._m

    # ------------------------------------------------------------------ structure
    def attach(self, model: nn.Module) -> None:
        self._owner[:] = [model]
        self._sig = ()  # hook whatever the buffers say at the next sync

    def set_flags(self, residual=None, heads=None, neurons=None, layers=None) -> None:
        """Which units are new (bool tensors shaped like the buffers; None: nothing new of that kind)."""
        with torch.no_grad():
            for name, flags in (("residual", residual), ("heads", heads), ("neurons", neurons), ("layers", layers)):
                buf = getattr(self, name)
                if flags is None:
                    buf.zero_()
                    continue
                flags = torch.as_tensor(flags, dtype=torch.bool)
                if flags.shape != buf.shape:
                    raise ValueError(f"growth mask flags {name!r} have shape {tuple(flags.shape)}, the model "
                                     f"needs {tuple(buf.shape)}")
                buf.copy_(flags)
        self._install()

    def _install(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache.clear()
        self._sig = self._signature()
        if not self._owner:
            return
        m = self._owner[0]
        add = self._handles.append
        if bool(self.residual.any()):
            for name in ("tok_emb", "pos_emb", "seg_emb"):
                if getattr(m, name, None) is not None:
                    add(getattr(m, name).register_forward_hook(functools.partial(self._out_hook, "D")))
            for mod in m.modules():
                if isinstance(mod, (LayerNorm, RMSNorm)):
                    add(mod.register_forward_hook(self._norm_hook))
            for block in m.blocks:
                add(block.attn.proj.register_forward_hook(functools.partial(self._out_hook, "D")))
                add(block.mlp.fc2.register_forward_hook(functools.partial(self._out_hook, "D")))
            if getattr(m, "classifier", None) is not None:
                add(m.classifier.register_forward_pre_hook(functools.partial(self._in_hook, "D")))
        for k, block in enumerate(m.blocks):
            if bool(self.heads[k].any()):
                add(block.attn.proj.register_forward_pre_hook(functools.partial(self._in_hook, ("heads", k))))
            if bool(self.neurons[k].any()):
                add(block.mlp.fc2.register_forward_pre_hook(functools.partial(self._in_hook, ("neurons", k))))
        for k in torch.nonzero(self.layers).flatten().tolist():
            add(m.blocks[k].register_forward_hook(self._block_hook))

    def detach(self) -> None:
        """Remove every hook (the owner then computes the plain grown model whatever m is)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._owner.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.sync()

    # ------------------------------------------------------------------ hooks
    def _flags(self, key) -> torch.Tensor:
        if key == "D":
            return self.residual
        kind, k = key
        return getattr(self, kind)[k]

    def _vec(self, key, like: torch.Tensor) -> torch.Tensor:
        ck = (key, like.device, like.dtype, self._m)
        v = self._cache.get(ck)
        if v is None:
            v = torch.where(self._flags(key), torch.tensor(self._m), torch.tensor(1.0)).to(like.device, like.dtype)
            self._cache[ck] = v
        return v

    def _out_hook(self, key, module, args, out):
        return None if self._m >= 1 else out * self._vec(key, out)

    def _in_hook(self, key, module, args):
        return None if self._m >= 1 else (args[0] * self._vec(key, args[0]), *args[1:])

    def _norm_hook(self, module, args, out):
        if self._m >= 1:
            return None
        return masked_norm(module, args[0], self._vec("D", args[0].float()))

    def _block_hook(self, module, args, out):
        if self._m >= 1:
            return None
        h_out, scores = out
        return torch.lerp(args[0], h_out, self._m), scores  # exactly args[0] at mask 0

    # ------------------------------------------------------------------ the ramp
    def set_mask(self, value: float) -> None:
        self.sync()
        self._m = float(min(max(value, 0.0), 1.0))
        self.value.fill_(self._m)
        self._sig = self._signature()  # our own write: the mirrors are current
        self._cache.clear()

    def value_at(self, step: int) -> float:
        if self.ramp_steps == 0:
            return 1.0
        return min(max(step / self.ramp_steps, 0.0), 1.0)

    def advance(self) -> None:
        """One training step begins: m = value_at(steps so far), then count this step."""
        self.set_mask(self.value_at(self._step))
        self._step += 1
        self.step.fill_(self._step)
        self._sig = self._signature()

    @property
    def done(self) -> bool:
        return self.mask >= 1

    def extra_repr(self) -> str:
        return f"ramp_steps={self.ramp_steps}, mask={self._m:g}, step={self._step}"
