"""VLLMServerEngine against a real vLLM server in its own process (`python -m lit_posttrain.serve`
on localhost, started once for the module: ~50 s): the engine conformance test, weights that
follow training, GRPO through the CLI equal to the in-process engine step for step, the serve
command's flags, and a server that is not there (its other faults, against a stand-in server:
tests/test_server_faults.py)."""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import (  # the conformance test, run here against the server  # noqa: F401
    ATOL,
    PROMPTS,
    needs_vllm,
    test_a_batch_whose_prefill_exceeds_one_engine_step,
    test_completion_stops_at_the_first_eos,
    test_determinism_under_a_seed_and_training_state_untouched,
    test_greedy_is_the_argmax,
    test_per_prompt_seeds_make_samples_independent_of_the_batch,
    test_sampler_logp_equals_a_teacher_forced_forward_pass,
    test_select_and_concat_round_trip,
    test_shapes_groups_and_masks,
    test_top_k_and_top_p_sample_only_from_the_kept_tokens,
)

from lit_posttrain import serve
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout.engine import EngineUnavailable

pytestmark = [needs_vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BUILTIN = "builtin:smollm2-135m-instruct"
ATOL["VLLMServerEngine"] = ATOL["VLLMEngine"]  # the same kernels, in another process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    # float32 as the module below, on every CPU (`auto` is bf16 where the CPU has native bf16).
    process = serve.start(
        BUILTIN, port, "--max-model-len", "256", "--dtype", "float32", log=tmp_path_factory.mktemp("server") / "server.log"
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def engine_and_module(server):
    from lit_posttrain.rollout.server import VLLMServerEngine

    module = PostTrainingModule(model=BUILTIN, dtype="float32")
    module.configure_model()
    engine = VLLMServerEngine(url=server, temperature=1.0, max_new_tokens=12)
    engine.setup(module.policy, module.tokenizer)
    yield engine, module
    engine.close()


def test_the_server_samples_from_the_weights_of_the_last_push(engine_and_module):
    """Every weight moved, the tied embeddings and output head included (vLLM's in-place reload
    updates a tied head only from its own name: a push that stored the shared tensor once left
    the server's head at the old weights, 1.6 nats off)."""
    engine, module = engine_and_module
    before = {name: p.detach().clone() for name, p in module.policy.named_parameters()}
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            for p in module.policy.parameters():
                p.add_(0.01 * torch.randn_like(p))
        engine.sync_weights(module.policy)
        rollout = engine.generate(PROMPTS, n=4, seed=[1, 2, 3])
        with torch.no_grad():
            logp_BT = module.policy_logp(rollout.tokens_BT, rollout.attention_BT)
    finally:
        with torch.no_grad():
            for name, p in module.policy.named_parameters():
                p.copy_(before[name])
        engine.sync_weights(module.policy)
    assert torch.allclose(rollout.logp_BT[rollout.mask_BT], logp_BT[rollout.mask_BT], atol=ATOL["VLLMServerEngine"])
    with torch.no_grad():
        start_BT = module.policy_logp(rollout.tokens_BT, rollout.attention_BT)
    assert (rollout.logp_BT - start_BT)[rollout.mask_BT].abs().max() > 20 * ATOL["VLLMServerEngine"], "not the old weights"
    assert engine.syncs == 3  # at setup, the moved weights, the restored ones


def test_no_server_at_the_address_is_said_at_setup():
    from lit_posttrain.rollout.server import VLLMServerEngine

    module = PostTrainingModule(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    engine = VLLMServerEngine(url=f"http://127.0.0.1:{_free_port()}", timeout_s=5)
    with pytest.raises(EngineUnavailable, match=r"no answer from the vLLM server at http://127\.0\.0\.1:\d+ .*lit_posttrain\.serve"):
        engine.setup(module.policy, module.tokenizer)


def _per_step(run: Path, key: str) -> dict[int, float]:
    (metrics,) = run.glob("runs/lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def _fit_with_both_engines(server: str, root: Path, *extra: str) -> dict[str, Path]:
    """GRPO of configs/grpo.yaml for 3 steps through the CLI, with vLLM in the trainer's process and
    with the server: the two runs' folders."""
    cli = str(Path(sys.executable).parent / "lit-posttrain")
    common = [
        "fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--model.init_args.dtype", "float32", "--trainer.precision", "32-true",
        "--trainer.max_steps", "3", "--trainer.callbacks", "[]", "--data.batch_size", "2", "--model.init_args.group_size", "4",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "runs", *extra,
    ]  # fmt: skip
    engines = {
        "in_process": ["--config", str(ROOT / "configs" / "engines" / "vllm.yaml")],
        "server": ["--config", str(ROOT / "configs" / "engines" / "vllm_server.yaml"), "--model.init_args.engine.init_args.url", server],
    }
    for name, args in engines.items():
        (root / name).mkdir()
        result = subprocess.run([cli, *common, *args], cwd=root / name, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    return {name: root / name for name in engines}


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_grpo_through_the_cli_equals_the_in_process_engine_step_for_step(server, tmp_path):
    """The same seeds give the same samples in the server as in the trainer's own vLLM, and the
    weights pushed after each step keep them equal: the same rewards and losses at every step."""
    runs = _fit_with_both_engines(server, tmp_path)
    for key in ("train/reward", "train/loss", "train/completion_length"):
        expected, got = _per_step(runs["in_process"], key), _per_step(runs["server"], key)
        assert sorted(got) == sorted(expected) == [0, 1, 2], key
        assert all(got[s] == pytest.approx(expected[s], abs=1e-4) for s in range(3)), (key, got, expected)
    # After every optimizer step the server's log-probs of what it sampled are the trainer's.
    gap = _per_step(runs["server"], "train/sampler_abs_diff")
    assert sorted(gap) == [0, 1, 2] and all(0 <= g < ATOL["VLLMServerEngine"] for g in gap.values()), gap


def test_the_serve_command_sets_what_the_engine_relies_on():
    args = serve.parse_args([BUILTIN, "--port", "9", "--cores", "1", "--", "--max-num-seqs", "8"])
    command, env = serve.server_command(args)
    assert env == {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_OMP_THREADS_BIND": "1"}  # /collective_rpc; pinned to core 1
    joined = " ".join(command)
    for flag in ("--logprobs-mode processed_logprobs", "--no-enable-chunked-prefill", "--enable-prefix-caching", "--port 9", "--enforce-eager"):
        assert flag in joined, flag
    assert command[-2:] == ["--max-num-seqs", "8"], "what follows -- goes to vLLM as it is"
    with pytest.raises(ValueError, match="head_dim 16"):  # vLLM's CPU attention cannot serve the tiny test model
        serve.server_command(serve.parse_args(["tiny-random-llama"]))


@pytest.mark.long
def test_samples_drawn_ahead_are_the_same_from_the_server_as_in_process(server, tmp_path):
    """`rollouts.max_staleness: 1` through the CLI: the in-process engine drawing in a worker thread
    and the server give the same steps, each batch after the first trained on samples drawn by the
    weights of the step before (`train/staleness` 1)."""
    runs = _fit_with_both_engines(server, tmp_path, "--model.init_args.rollouts.max_staleness", "1")
    for key in ("train/reward", "train/loss", "train/completion_length", "train/sampler_abs_diff"):
        expected, got = _per_step(runs["in_process"], key), _per_step(runs["server"], key)
        assert sorted(got) == sorted(expected) == [0, 1, 2], key
        assert all(got[s] == pytest.approx(expected[s], abs=1e-4) for s in range(3)), (key, got, expected)
    for name, run in runs.items():
        assert _per_step(run, "train/staleness") == {0: 0.0, 1: 1.0, 2: 1.0}, name
