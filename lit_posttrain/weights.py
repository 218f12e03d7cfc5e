"""The policy's weights as a rollout engine takes them: whole (gathered from every rank under
FSDP2) and, under LoRA, merged (base weight plus the adapters' product). The one place both engines
get them from: `HFEngine`'s merged sampling copy and `VLLMEngine`'s weight push."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor shard (FSDP2) is gathered from every rank (a collective)."""
    return t.full_tensor() if isinstance(t, DTensor) else t.detach()


def lora_layers(policy: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """peft's LoRA layers of `policy` by module name (none for a plain model)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in policy.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A LoRA layer's base weight plus its active adapters' scaled product, whole, in the base
    weight's dtype. The product is taken in float32 (peft does the same on CPU, where bf16 matmuls
    are slow) and added before rounding, so a bf16 base loses nothing more than one rounding."""
    weight = full_tensor(layer.get_base_layer().weight)
    merged = weight.float()
    for adapter in (a for a in layer.active_adapters if a in layer.lora_A):
        delta = full_tensor(layer.lora_B[adapter].weight).float() @ full_tensor(layer.lora_A[adapter].weight).float()
        merged = merged + layer.scaling[adapter] * (delta.T if layer.fan_in_fan_out else delta)
    return merged.to(weight.dtype)


def full_weights(policy: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The policy's weights under their Hugging Face checkpoint names, whole (gathered under FSDP2).
    A peft policy's LoRA layers give their merged weight."""
    if not hasattr(policy, "peft_config"):
        return [(name, full_tensor(t)) for name, t in policy.state_dict().items()]
    base = policy.get_base_model()
    lora = {f"{name}.base_layer.weight": layer for name, layer in lora_layers(base).items()}
    weights = []
    for name, t in base.state_dict().items():
        if ".lora_" in name:
            continue
        weights.append((name.replace(".base_layer.", "."), merged_weight(lora[name]) if name in lora else full_tensor(t)))
    return weights
