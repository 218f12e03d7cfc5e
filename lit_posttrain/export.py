"""Writing a trained policy as a Hugging Face folder, never half-written."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import tempfile
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


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict, on the CPU: a file, or a distributed-checkpoint folder
    (FSDP2's, `configs/strategies/fsdp_*.yaml`) whose shards are gathered into one state here."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=True)
    meta = path / "meta.pt"  # what Lightning writes beside the shards: all but the weights and optimizer state
    if not meta.is_file():
        raise ValueError(f"{path} is a folder but not a distributed checkpoint: it has no meta.pt")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    checkpoint = torch.load(meta, map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "whole.pt")
        checkpoint["state_dict"] = torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=True)["state_dict"]
    return checkpoint


def export_checkpoint(checkpoint_path: str | Path, folder: str | Path, merge_lora: bool | None = None) -> Path:
    """Write the policy of a lit-posttrain checkpoint (`lit-posttrain export CKPT OUT`) as a Hugging
    Face folder with its tokenizer: the method is built from the checkpoint's own configuration
    (its `model:` source, LoRA settings, dtype), its trained weights loaded, and the policy
    written as at the end of a run. With LoRA: merged into a full model when `merge_lora` (default:
    the run's `lora.merge_on_save`), else a peft adapter folder."""
    from lightning.pytorch.cli import instantiate_module

    import lit_posttrain.methods  # noqa: F401  (the shipped methods: a checkpoint names one of them)
    from lit_posttrain.methods.base import PostTrainingModule

    checkpoint = load_checkpoint(checkpoint_path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.get("_class_path")
    if class_path is None or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path}: not a checkpoint of a lit-posttrain run (no method class_path in its hyper_parameters)")
    # Only methods already imported are built: a checkpoint must not import code of its choosing.
    module_name, name = class_path.rsplit(".", 1)
    cls = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, PostTrainingModule)):
        raise ValueError(
            f"{checkpoint_path}: its method {class_path} is not one of lit_posttrain's; export it from Python after "
            "importing its module: `import your_module; from lit_posttrain.export import export_checkpoint`"
        )
    hparams.pop("_instantiator", None)
    module = instantiate_module(cls, hparams)
    module.configure_model()
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    if merge_lora is not None and module.lora is not None:
        module.lora = dataclasses.replace(module.lora, merge_on_save=merge_lora)
    return module.export_hf(folder)
