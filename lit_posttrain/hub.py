"""Models from the Hugging Face hub as local folders: downloaded once into the hub's cache, then
read from there by everything that loads the model (the policy, the reference, vLLM, exports), so
that a hub id is served like any folder and a `revision` pins every one of them to one commit."""

from __future__ import annotations

from pathlib import Path

# What a causal LM's folder needs: configs, weights, tokenizer files, chat templates, remote code.
FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py"]


def hub_folder(repo_id: str, revision: str | None = None) -> str:
    """The local snapshot of `repo_id` at `revision` (a branch, tag or commit; default its main
    branch), downloaded into the hub cache unless it is there; with `HF_HUB_OFFLINE=1` the cached
    one. Repositories without safetensors weights get their PyTorch `.bin` files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from lit_posttrain.models import ModelSourceError  # (imported here: models imports this module)

    name = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=FILES)
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=[*FILES, "*.bin"])
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ModelSourceError(
            f"hub model {name!r}: not in the local hub cache and could not be downloaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}); on a machine without a network, download it elsewhere into the hub cache "
            "or pass a local folder"
        ) from None
    if not (Path(folder) / "config.json").is_file():
        raise ModelSourceError(f"hub model {name!r} has no config.json: not a transformers model")
    return folder
