"""Expert parallelism under torchrun: each rank holds E/N of every MoE layer's experts (and of every UniPool pool),
tokens travel to the ranks that own their experts and back by all-to-all, everything else stays data-parallel
(DDP or FSDP2, parallel.py). The all-to-all dispatch of GShard (Lepikhin et al. 2020, arXiv 2006.16668, §2.2-§3)
and Switch Transformer (Fedus et al. 2021, arXiv 2101.03961, §2.2), here dropless and deterministic.

Layout. The W processes form W/N expert-parallel (EP) groups of N consecutive ranks; EP rank j of a group owns
experts [j·E/N, (j+1)·E/N) of every expert bank (w1, w2 cut along dim 0). Ranks with the same EP rank in
different groups hold the same shard (its "replicas"). N must divide E (every bank) and W.

Dispatch (:class:`ExpertDispatcher`, set as ``MoEFFN.dispatcher``; the model calls it, never imports it). The
layer sorts its (token, expert) assignments by expert as without expert parallelism, so the rows bound for each
EP rank are contiguous and in expert order. Per layer and forward: one all-to-all of the counts (E/N per peer),
one ``all_to_all_single`` of the rows (uneven splits), the local experts on the received rows regrouped expert
by expert (source ranks in rank order inside each expert), the inverse regrouping, one ``all_to_all_single``
back (the autograd backward of each is the reverse exchange, :class:`_AllToAll`), and one all-reduce of the E
counts so the balancing losses, the loss-free bias and the load statistics see the global load. gloo (torch
2.13) implements ``all_to_all_single`` with uneven splits on CPU, so no all-gather stand-in is needed: a rank
sends and receives only the rows of its own assignments — k·T·d values each way per layer, forward and backward
— where an all-gather of the tokens would move W·T·d and compute nothing less.

Exactness. Each row meets the same expert weights as in one process and the combine runs in the layer, per
token, in slot order, so outputs equal the single-process ones up to matmul blocking (~1e-7). Gradients: the
backward all-to-all brings every rank's contribution to the owner's expert weights (a sum over the EP group);
DDP/FSDP2 average the other parameters over all W ranks, so :func:`finish_expert_grads` all-reduces expert
gradients over the replicas and divides by W — the gradient of the mean loss, as in one process. The global
gradient norm (:func:`clip_grad_norm`) counts each shard's squares once. Switch's f_i and UniPool's f̄ come from
the global counts (detached), P_i from the rank's tokens; averaged over ranks that is f_global·P_global, the
single-process loss of the whole data-parallel micro-batch (W ranks × micro-batch m = one process with
micro-batch W·m). The loss-free bias counts the global loads, so every rank keeps the same bias; DDP syncs
buffers once at the start and not before every forward (a per-forward broadcast of rank 0's buffers would
overwrite the other ranks' load counts mid-step). With a capacity factor each rank caps its own micro-batch (as
under plain DDP).

Checkpoints gather the shards (:meth:`ExpertParallel.gather`, called by parallel.full_model_state and
parallel.full_optimizer_state), so model.safetensors and the optimizer state are the single-process files;
loading cuts the local shard again (:meth:`ExpertParallel.local_slice`): a run resumes on another world size or
expert-parallel size. After a finished fit() the model holds its full experts again (:func:`unshard_experts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


class ExpertParallelError(ValueError):
    """An expert-parallel setting that cannot run (names the setting and the fix)."""


def check_expert_parallel(cfg, size: int, world: int | None = None, parallel: str = "ddp") -> None:
    """Refuse an expert-parallel size that cannot shard ``cfg``'s experts over ``world`` processes."""
    if size == 1:
        return
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    experts = int(getattr(cfg, "moe_experts", 0) or 0)
    if experts == 0:
        raise ExpertParallelError(f"expert_parallel={size} shards mixture-of-experts layers, but the model has dense "
                                  f"FFNs (moe_experts=0): drop --expert-parallel or train an MoE model")
    banks = {"moe_experts": experts}
    if cfg.moe_pool:
        banks = {"moe_pool_size": cfg.pool_size}  # every layer's experts live in the pools
    for name, n in banks.items():
        if n % size:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            raise ExpertParallelError(f"expert_parallel={size} does not divide the {n} experts ({name}={n}): each "
                                      f"rank must own the same number of experts; pick an expert-parallel size in "
                                      f"{divisors} or change {name}")
    if world < size or world % size:
        raise ExpertParallelError(f"expert_parallel={size} needs a multiple of {size} processes, this run has {world}: "
                                  f"launch with torchrun --nproc-per-node {size} (or a multiple), or drop "
                                  f"--expert-parallel")
    if parallel not in ("ddp", "fsdp"):
        raise ExpertParallelError(f"expert_parallel={size} shards the experts and keeps the other parameters "
                                  f"data-parallel: pass --parallel ddp or --parallel fsdp (got {parallel!r})")


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with uneven splits; the backward sends the gradients the opposite way."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class ExpertDispatcher:
    """What an MoE layer calls under expert parallelism (see the module docstring)."""

    def __init__(self, group, size: int, rank: int) -> None:
        self.group, self.size, self.rank = group, size, rank

    def global_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """(E,) assignments per expert summed over every rank (all data-parallel replicas)."""
        total = counts.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def run(self, bank: nn.Module, xs: torch.Tensor, counts: torch.Tensor, impl: str) -> torch.Tensor:
        """xs (S, d) sorted by expert with ``counts`` (E,) rows per expert -> (S, d): each row through its expert,
        on the rank that owns it."""
        n, local = self.size, counts.numel() // self.size
        sent = counts.view(n, local)  # (peer, its expert) rows this rank sends
        got = torch.empty_like(sent)
        dist.all_to_all_single(got, sent.contiguous(), group=self.group)  # (source, my expert)
        send_splits, recv_splits = sent.sum(1).tolist(), got.sum(1).tolist()
        xr = _AllToAll.apply(xs, recv_splits, send_splits, self.group)  # (R, d) by source, then expert
        # regroup expert-major (sources in rank order inside an expert): perm[i] = received row of sorted row i
        starts = (torch.cumsum(got.reshape(-1), 0) - got.reshape(-1)).view(n, local)
        lens = got.t().reshape(-1)  # (expert, source) order
        new_starts = torch.cumsum(lens, 0) - lens
        perm = (torch.arange(int(lens.sum()), device=xs.device)
                + torch.repeat_interleave(starts.t().reshape(-1) - new_starts, lens))
        ys = bank(xr.index_select(0, perm), got.sum(0), impl)  # (R, d) expert-major
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        return _AllToAll.apply(ys.index_select(0, inv), send_splits, recv_splits, self.group)


@dataclass
class ExpertParallel:
    """The sharding of one model: ``size`` N, this rank's ``rank`` in its EP group, the EP ``group`` and the
    ``replicas`` group (same shard in other EP groups; None when N = W), ``world`` W, and ``full`` {local
    parameter: full number of experts} of every sharded parameter."""

    size: int
    rank: int
    world: int
    group: object
    replicas: object | None
    full: dict[nn.Parameter, int] = field(default_factory=dict)

    def params(self) -> list[nn.Parameter]:
        return list(self.full)

    def names(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """{fully qualified name in ``model``: parameter} of the sharded parameters."""
        return {name: p for name, p in model.named_parameters() if p in self.full}

    def local_slice(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's shard (dim 0) of a full expert tensor."""
        local = tensor.shape[0] // self.size
        return tensor.narrow(0, self.rank * local, local)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The full expert tensor from every EP rank's shard (a collective of the EP group)."""
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, 0)


def expert_banks(model: nn.Module) -> list[nn.Module]:
    """Every expert bank of the model once (a UniPool pool's bank is shared by its layers)."""
    from ..model.moe import ExpertBank

    return [m for m in model.modules() if isinstance(m, ExpertBank)]


def cut_experts(model: nn.Module, ep: ExpertParallel) -> None:
    """Replace every bank's w1/w2 by this rank's shard (new parameters, recorded in ``ep.full``) and record the
    sharding as ``model.expert_parallel``; no communication."""
    for bank in expert_banks(model):
        for name in ("w1", "w2"):
            full = getattr(bank, name)
            local = nn.Parameter(ep.local_slice(full.detach()).clone(), requires_grad=full.requires_grad)
            setattr(bank, name, local)
            ep.full[local] = full.shape[0]
    model.expert_parallel = ep


def shard_experts(model: nn.Module, size: int, rank: int, world: int) -> ExpertParallel:
    """Keep only this rank's experts in every bank of ``model`` (full weights in, as every rank built or loaded
    them), set each MoE layer's dispatcher and record the sharding as ``model.expert_parallel``. All ranks call it
    (it creates process groups)."""
    from ..model.moe import MoEFFN

    groups = [dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(world // size)]
    replicas = None
    if world > size:
        reps = [dist.new_group(list(range(j, world, size))) for j in range(size)]
        replicas = reps[rank % size]
    ep = ExpertParallel(size=size, rank=rank % size, world=world, group=groups[rank // size], replicas=replicas)
    cut_experts(model, ep)
    dispatcher = ExpertDispatcher(ep.group, size, ep.rank)
    for layer in model.modules():
        if isinstance(layer, MoEFFN):
            layer.dispatcher = dispatcher
    return ep


def of(model: nn.Module) -> ExpertParallel | None:
    """The expert-parallel sharding of a (plain) model, or None."""
    return getattr(model, "expert_parallel", None)


def num_parameters(model: nn.Module) -> int:
    """The model's parameter count with every expert shard counted in full (what one process holds)."""
    ep = of(model)
    return sum(p.numel() * (ep.size if ep is not None and p in ep.full else 1) for p in model.parameters())


@torch.no_grad()
def finish_expert_grads(model: nn.Module) -> None:
    """After the backward of a step: expert gradients summed over the replicas, divided by W (the mean over every
    rank's loss, as DDP/FSDP2 give the other parameters)."""
    ep = of(model)
    if ep is None:
        return
    for p in ep.params():
        if p.grad is None:
            continue
        if ep.replicas is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=ep.replicas)
        p.grad.div_(ep.world)


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float, model: nn.Module) -> torch.Tensor:
    """Clip the global gradient norm of ``params`` (the model's, sharded experts included) to ``max_norm`` and
    return the norm: the other parameters' norm as torch computes it (an FSDP2 DTensor norm made full) and each
    expert shard's squares summed once over the EP group."""
    ep = of(model)
    experts = set(ep.params()) if ep is not None else set()
    rest = [p for p in params if p not in experts and p.grad is not None]
    mine = [p for p in params if p in experts and p.grad is not None]
    if rest:
        norm = torch.nn.utils.get_total_norm([p.grad for p in rest])
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        sq = norm.float().square()
    else:
        sq = torch.zeros(())
    if ep is not None:
        local = torch.stack([p.grad.float().square().sum() for p in mine]).sum() if mine else torch.zeros(())
        local = local.to(sq.device)
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=ep.group)
        sq = sq + local
    total = sq.sqrt()
    if max_norm != float("inf"):
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))  # torch's clip_grad_norm_ rule
        for p in rest + mine:
            p.grad.mul_(coef)
    return total


@torch.no_grad()
def unshard_experts(model: nn.Module) -> None:
    """Undo :func:`shard_experts` at the end of a run: every bank gets its full experts back (gathered from the
    EP group; all ranks call it) and the layers dispatch locally again, so the trained model is usable in the
    process that trained it."""
    from ..model.moe import MoEFFN

    ep = of(model)
    if ep is None:
        return
    for bank in expert_banks(model):
        for name in ("w1", "w2"):
            local = getattr(bank, name)
            setattr(bank, name, nn.Parameter(ep.gather(local.detach()), requires_grad=local.requires_grad))
    for layer in model.modules():
        if isinstance(layer, MoEFFN):
            layer.dispatcher = None
    del model.expert_parallel


def merge_param_groups(groups: list[dict], order: list[str]) -> list[dict]:
    """Saved optimizer groups as one process has them: the ``expert_parallel`` group's parameters (FQNs) go back
    into the group with the same weight decay, in the model's parameter order."""
    shards = [g for g in groups if g.get("expert_parallel")]
    rest = [g for g in groups if not g.get("expert_parallel")]
    rank = {name: i for i, name in enumerate(order)}
    for g in shards:
        home = next(h for h in rest if h["weight_decay"] == g["weight_decay"])
        home["params"] = sorted([*home["params"], *g["params"]], key=rank.__getitem__)
    return rest


def split_param_groups(groups: list[dict], expert_names: set[str]) -> list[dict]:
    """The inverse of :func:`merge_param_groups` for loading: the expert parameters of saved groups (one
    process's layout) as a trailing ``expert_parallel`` group with the hyperparameters of the group they were in."""
    out, experts = [], None
    for g in groups:
        mine = [n for n in g["params"] if n in expert_names]
        out.append({**g, "params": [n for n in g["params"] if n not in expert_names]})
        if mine:
            experts = {**g, "params": mine, "expert_parallel": True}
    return [g for g in out if g["params"]] + ([experts] if experts is not None else [])
