"""Writing a trained policy as a Hugging Face folder, never half-written."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lit_posttrain.atomic import recover_folder, replace_folder, sibling
from lit_posttrain.sharding import full_state_dict, is_sharded


def save_hf_folder(policy: torch.nn.Module, tokenizer, folder: str | Path, merge_lora: bool = False) -> Path:
    """Write `policy` and `tokenizer` to `folder`. A peft policy is written merged into a full model
    when `merge_lora`, else as an adapter folder (which transformers also loads when peft is
    installed). Written to a temporary sibling and swapped in (`atomic.replace_folder`): a kill at
    any moment leaves the previous export or the new one under the final name, whole."""
    folder = Path(folder)
    recover_folder(folder)  # an earlier export killed mid-swap, where the swap is two renames
    tmp = sibling(folder, ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge_lora:
        # Merge a copy: merging in place would change the live model (and in bf16 drift it).
        policy = copy.deepcopy(policy).merge_and_unload()
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_folder(tmp, folder)
    return folder


def export_policy(
    policy: torch.nn.Module, tokenizer, folder: str | Path, *, rank: int, unsharded: Callable[[], torch.nn.Module],
    merge_lora: bool = False,
) -> Path:  # fmt: skip
    """`save_hf_folder` from rank 0 only. A policy sharded with FSDP2 is gathered first into a fresh
    unsharded copy (`unsharded()` builds it): a collective, so every rank must call this."""
    if is_sharded(policy):
        state = full_state_dict(policy, rank)
        if state is not None:  # rank 0
            policy = unsharded()
            policy.load_state_dict(state)
    if rank != 0:
        return Path(folder)
    return save_hf_folder(policy, tokenizer, folder, merge_lora=merge_lora)
