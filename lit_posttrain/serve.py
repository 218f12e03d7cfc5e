"""Start the vLLM server that `VLLMServerEngine` samples from, for a model, on chosen cores or GPUs:

    python -m lit_posttrain.serve builtin:smollm2-135m-instruct --port 8000 --cores 1
    python -m lit_posttrain.serve Qwen/Qwen2.5-0.5B-Instruct --gpus 1 --max-model-len 4096

It resolves the model as the trainer does (built-in sources, Hugging Face folders), checks that
vLLM can serve it, and runs vLLM's OpenAI-compatible server with what the engine relies on:
log-probs of the sampling distribution (`--logprobs-mode processed_logprobs`, as the in-process
engines report them), whole prefills (the CPU build's seeded sampler fails on split ones), prefix
caching (a group's completions share their prompt), and its development routes
(`VLLM_SERVER_DEV_MODE=1`: `/collective_rpc`, through which the trainer pushes weights). Anything
after `--` goes to vLLM as it is. `--print` shows the command and its environment instead.
The server then runs until stopped (Ctrl-C, `kill`); the trainer does not start or stop it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lit_posttrain.models import resolve_model_source
from lit_posttrain.precision import resolve_dtype


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lit_posttrain.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model source, as the trainer's `model:` (builtin:..., a folder, a Hub id in the local cache)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=None, help="longest prompt + completion (default: the model's, at most 2048)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (bf16 where the hardware runs it natively)")
    parser.add_argument("--cores", default=None, help="CPU: the cores the server's threads are pinned to, as vLLM reads them ('1', '2-3', '0,2'); default: not pinned")
    parser.add_argument("--gpus", default=None, help="GPU: the devices it runs on (CUDA_VISIBLE_DEVICES, e.g. '1'); default: every visible one")
    parser.add_argument("--memory-fraction", type=float, default=None, help="GPU: share of its memory (default 0.9); CPU: share of RAM for the KV cache (default 0.05)")
    parser.add_argument("--compile", action="store_true", help="compile graphs (slower start-up, faster decoding; default eager)")
    parser.add_argument("--print", action="store_true", help="print the command and its environment, do not start it")
    argv = sys.argv[1:] if argv is None else argv
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    args.vllm_args = vllm_args  # after --: passed to vLLM's server as they are
    return args


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """vLLM's server command for `args`, and the environment variables it needs."""
    from transformers import AutoConfig

    from lit_posttrain.rollout import vllm_checks as checks

    platform = checks.vllm_platform()
    folder = resolve_model_source(args.model)
    config = AutoConfig.from_pretrained(folder)
    checks.check_servable(folder, config, platform)
    dtype = resolve_dtype(args.dtype)
    max_model_len = args.max_model_len or min(getattr(config, "max_position_embeddings", 2048) or 2048, 2048)
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
        "--served-model-name", args.model, "--dtype", str(dtype).removeprefix("torch."),
        "--max-model-len", str(max_model_len), "--logprobs-mode", "processed_logprobs",
        "--no-enable-chunked-prefill", "--enable-prefix-caching", "--seed", "0",
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    if not args.compile:
        command.append("--enforce-eager")
    if platform == "cpu":
        memory = checks.memory_kwargs(platform, args.memory_fraction, config, dtype, max_model_len)
        command += ["--kv-cache-memory-bytes", str(memory["kv_cache_memory_bytes"])]
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.cores or "nobind"
    else:
        command += ["--gpu-memory-utilization", str(args.memory_fraction or 0.9)]
        if args.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = args.gpus
    return command + args.vllm_args, env


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command, env = server_command(args)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)
    if args.print:
        print(shown)
        return
    print(f"lit_posttrain.serve: {shown}", flush=True)
    os.execve(command[0], command, {**os.environ, **env})  # the server takes this process: signals reach it


def start(
    model: str, port: int, *options: str, log: Path, timeout_s: float = 300, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen:
    """`python -m lit_posttrain.serve MODEL --port PORT *options` in a process of its own (its output
    to `log`), returned once it answers on 127.0.0.1: for scripts and tests that start their own.
    Stop it with `.terminate()`."""
    command = [sys.executable, "-m", "lit_posttrain.serve", model, "--port", str(port), *options]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError(f"the vLLM server did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
