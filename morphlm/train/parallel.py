"""Data parallelism for the one training loop: DDP and FSDP2 under torchrun.

The model never imports this module. ``fit`` calls :func:`init_distributed` (a no-op outside torchrun),
wraps the model with :func:`wrap_model`, and reads/writes full (unsharded) state dicts through
``torch.distributed.checkpoint.state_dict`` so that checkpoints are the same files whatever the
parallelism. Backend: NCCL on CUDA, gloo on CPU (used by the tests).

Seeds: every rank uses the same ``seed`` for initialisation (identical replicas) and for data (each
rank slices the same global batch); dropout is reseeded per step with ``seed + 1_000_003·rank + step``
so ranks draw different masks and a resumed run draws the same ones.

Expert parallelism (``expert_parallel`` N > 1, expert_parallel.py): :func:`wrap_model` first shards every expert
bank over N ranks; DDP then ignores the expert weights (their gradients are finished by
expert_parallel.finish_expert_grads) and syncs buffers only at the start, FSDP2 shards everything but them. The
state-dict functions here gather the expert shards and cut them again, so checkpoints stay the single-process
files.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from . import expert_parallel as ep_mod


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group if the environment asks for one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        # leave the group before the interpreter tears down: a gloo group still alive at exit can abort the
        # process ("terminate called without an active exception") after the work is done
        atexit.register(_leave_group)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def _leave_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, mode: str, info: DistInfo, device: torch.device,
               expert_parallel: int = 1) -> nn.Module:
    """Apply DDP or FSDP2 (per-block sharding, then the root). ``mode`` is none|ddp|fsdp. ``expert_parallel`` N > 1
    first shards the experts over groups of N ranks (expert_parallel.py), which the wrapper then leaves alone."""
    if mode == "none" or not info.enabled:
        ep_mod.check_expert_parallel(getattr(model, "config", None), expert_parallel, info.world_size, mode)
        return model
    ignored: set[nn.Parameter] = set()
    if expert_parallel > 1:
        ep_mod.check_expert_parallel(model.config, expert_parallel, info.world_size, mode)
        ignored = set(ep_mod.shard_experts(model, expert_parallel, info.rank, info.world_size).params())
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        if not ignored:
            return DDP(model, device_ids=ids)
        names = [name for name, p in model.named_parameters() if p in ignored]
        DDP._set_params_and_buffers_to_ignore_for_model(model, names)
        # every rank holds the same routing buffers (global loads); a broadcast would reset the load counts
        return DDP(model, device_ids=ids, forward_sync_buffers=False)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block, ignored_params=ignored or None)
        fully_shard(model, ignored_params=ignored or None)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}; choose none, ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (FSDP2 shards in place: same object)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded, CPU state dict with clean names (no ``module.``/``_orig_mod.``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    raw = unwrap(model)
    state = get_model_state_dict(raw, options=opts)
    ep = ep_mod.of(raw)
    if ep is not None:  # every rank gathers (a collective); the ranks that hold a state dict keep the full tensors
        for name, p in ep.names(raw).items():
            full = ep.gather(p.detach()).cpu()
            if name in state:
                state[name] = full
    return state


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    raw = unwrap(model)
    osd = get_optimizer_state_dict(raw, optimizer, options=opts)
    ep = ep_mod.of(raw)
    if ep is not None:  # the expert shards' moments, gathered like the weights (step counts are scalars)
        for name, p in ep.names(raw).items():
            for key, value in sorted(optimizer.state.get(p, {}).items()):
                if torch.is_tensor(value) and value.dim() > 0:
                    full = ep.gather(value).cpu()
                    if name in osd.get("state", {}):  # (ranks other than 0 get an empty state dict)
                        osd["state"][name][key] = full
        if "param_groups" in osd:
            order = [n for n, _ in raw.named_parameters()]
            osd["param_groups"] = ep_mod.merge_param_groups(osd["param_groups"], order)
    return osd


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full (unsharded, FQN-keyed) optimizer state into ``optimizer``.

    Done by hand rather than with ``set_optimizer_state_dict``: each tensor of a sharded (DTensor)
    parameter is cut with ``distribute_tensor`` using that parameter's own mesh and placements. (With
    torch 2.13 on gloo, ``set_optimizer_state_dict`` and a scattering ``distribute_tensor`` both left wrong
    values in some FSDP2 shards on rank 1; every rank reads the full state from disk, so no collective is needed.)
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(unwrap(model).named_parameters())
    ep = ep_mod.of(unwrap(model))
    experts = set(ep.params()) if ep is not None else set()
    saved_groups = state["param_groups"]
    if ep is not None:  # the saved decay group holds the experts; this optimizer keeps them apart
        saved_groups = ep_mod.split_param_groups(saved_groups, set(ep.names(unwrap(model))))
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(f"saved optimizer has {len(saved_groups)} parameter groups, this one "
                         f"{len(optimizer.param_groups)}: the model or optimizer settings changed since the save")
    for group, saved in zip(optimizer.param_groups, saved_groups):
        for key, value in saved.items():
            if key != "params":
                group[key] = value
        on_device = group.get("fused") or group.get("capturable")
        for fqn in saved["params"]:
            if fqn not in params:
                raise ValueError(f"saved optimizer state names parameter {fqn!r} that this model lacks")
            p = params[fqn]
            entry = {}
            # one key order on every rank: a loaded state's order is arbitrary per process (the file's index), and
            # the full-state gather of the next save runs its collectives in this order (out of step, FSDP2
            # shards of exp_avg and exp_avg_sq would be swapped in the saved file)
            for key, value in sorted(state["state"].get(fqn, {}).items()):
                if key == "step":
                    value = value.to(p.device if on_device else "cpu", torch.float32)
                elif p in experts and value.dim() > 0:  # the full tensor on disk: this rank's shard
                    value = ep.local_slice(value).clone().to(p.device)
                elif isinstance(p, DTensor):
                    value = distribute_tensor(value.to(p.device_mesh.device_type), p.device_mesh, p.placements,
                                               src_data_rank=None)  # every rank holds the full tensor: no collective
                else:
                    value = value.to(p.device)
                entry[key] = value
            if entry:
                optimizer.state[p] = entry
