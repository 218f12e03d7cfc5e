"""FSDP2 for the policy: sharding it over the data-parallel ranks, telling a sharded model apart,
and gathering its full state dict back for the export (the weights a rollout engine takes:
`lit_posttrain.weights`)."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` holds FSDP2 shards (DTensor weights). Its forward passes then gather weights
    from every rank: all ranks must run the same forward passes, or the run deadlocks."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_policy(policy: torch.nn.Module, mesh, lora: bool, compute_dtype: torch.dtype | None = None) -> None:
    """FSDP2 in place: every decoder layer, then the rest of the model, sharded over the
    data-parallel ranks of `mesh`. Under LoRA the inner transformers model is sharded, not peft's
    wrapper: sharding the wrapper leaves the embedding's weight a DTensor inside an unsharded call
    (`aten.embedding` then sees mixed Tensor and DTensor arguments).

    `compute_dtype` (bf16 under `bf16-mixed`): FSDP2's mixed precision, the sharded weights and
    the optimizer's state kept in their own dtype (float32 masters), gathered for the forward and
    backward in `compute_dtype`, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"tensor_parallel_size={mesh['tensor_parallel'].size()}: lit_posttrain shards with FSDP2 only; "
            "set ModelParallelStrategy(tensor_parallel_size=1)"
        )
    mesh = mesh["data_parallel"] if "data_parallel" in mesh.mesh_dim_names else mesh
    inner = policy.base_model.model if lora else policy
    # transformers names the blocks that must not be split across devices: one FSDP unit each,
    # so that only one block's full weights exist at a time.
    blocks = set(getattr(inner, "_no_split_modules", None) or [])
    policy_kwargs = {} if compute_dtype is None else {"mp_policy": MixedPrecisionPolicy(compute_dtype, torch.float32)}
    for module in inner.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, **policy_kwargs)
    fully_shard(inner, mesh=mesh, **policy_kwargs)


def full_state_dict(policy: torch.nn.Module, rank: int) -> dict | None:
    """The sharded policy's full weights on CPU on rank 0, None elsewhere: a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if rank == 0 else None
