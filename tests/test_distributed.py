"""Two CPU processes under DDP and under FSDP2 train to the same weights, with the same losses, as
one process on the same global batch; every method runs sharded.

Each run goes through the real CLI, whose launcher starts the second process; runs with the same
strategy share one launch (`tests/helpers/fit_many.py`), as process start-up is most of their time.
"""

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_posttrain.export import export_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "ddp": ["--trainer.strategy", "ddp"],
    "fsdp": ["--config", str(ROOT / "configs" / "strategies" / "fsdp_cpu2.yaml")],
}


def _read_run(workdir: Path) -> tuple[dict, list[float]]:
    """The exported weights of a run in `workdir` and the logged loss of each step."""
    (metrics,) = workdir.glob("runs/lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    return load_file(workdir / "model" / "model.safetensors"), losses


def _args(workdir: Path, config: str, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / config), "--export_to", str(workdir / "model"), *extra]


def _launch(command: list[str], cwd: Path) -> None:
    # One thread per process: two processes on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _fit_many(root: Path, runs: dict[str, tuple[str, list[str]]]) -> dict[str, tuple[dict, list[float]]]:
    """Several runs (name: config and arguments, all with the same strategy and device count) in
    one launch of `tests/helpers/fit_many.py`: the processes start once for all of them."""
    _launch([sys.executable, *_fit_many_script(root, runs)], root)
    return {name: _read_run(root / name) for name in runs}


def _fit_many_script(root: Path, runs: dict[str, tuple[str, list[str]]]) -> list[str]:
    """`tests/helpers/fit_many.py` and its RUNS.json (written under `root`) for `runs`."""
    root.mkdir(parents=True, exist_ok=True)
    spec = [[str(root / name), _args(root / name, config, *extra)] for name, (config, extra) in runs.items()]
    (root / "runs.json").write_text(json.dumps(spec))
    return [str(ROOT / "tests" / "helpers" / "fit_many.py"), str(root / "runs.json")]


def _train_args(global_batch: int, devices: int, *extra: str) -> list[str]:
    return [
        "--data.batch_size", str(global_batch // devices), "--data.shuffle", "false", "--trainer.max_steps", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--seed_everything", "3",
        "--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save", "true", *extra,
    ]  # fmt: skip


CONFIGS = {
    "sft": ("tiny.yaml", []),
    "grpo": ("tiny_grpo.yaml", ["--data.task.init_args.num_train", "32"]),
    # Each process draws its own share of the next batch while this one trains (HFEngine's merged
    # LoRA copy; a sharded policy would be sampled in place, which drawing ahead refuses).
    "grpo_ahead": ("tiny_grpo.yaml", ["--data.task.init_args.num_train", "32", "--model.init_args.rollouts.max_staleness", "1"]),
}
NOT_SHARDED = {"grpo_ahead"}
# Weights agree to float32 noise, which Adam at lr 1e-2 grows step by step: measured 5.9e-6 for
# grpo, 1.2e-5 for grpo_ahead (the same samples on one process and two, step by step; its later
# batches train on other samples than grpo's, and after one step the gap is grpo's 5.2e-6).
ATOL = {"grpo_ahead": 3e-5}


def _configs(strategy: str | None) -> dict[str, tuple[str, list[str]]]:
    """The configs run under `strategy` (None: one process)."""
    return {m: c for m, c in CONFIGS.items() if not (strategy == "fsdp" and m in NOT_SHARDED)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every config trained on one process, and on two under each strategy: one launch each."""
    done = {}

    def get(devices: int, strategy: str | None = None):
        key = (devices, strategy)
        if key not in done:
            root = tmp_path_factory.mktemp(f"{devices}-{strategy}")
            extra = STRATEGIES[strategy] if strategy else []
            done[key] = _fit_many(root, {m: (config, _train_args(8, devices, *extra, *more)) for m, (config, more) in _configs(strategy).items()})
        return done[key]

    return get


@pytest.mark.parametrize(
    ("method", "strategy"), [(m, s) for m in CONFIGS for s in STRATEGIES if m in _configs(s)]
)
def test_two_processes_match_one(method, strategy, runs, tiny_model_dir):
    one, one_losses = runs(1)[method]
    two, two_losses = runs(2, strategy)[method]
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in one), "training moved the weights"
    for name in one:
        assert torch.allclose(one[name], two[name], atol=ATOL.get(method, 1e-5)), name
    # Logged losses are global (the mean over ranks of each rank's share of the global mean).
    assert len(one_losses) == 3
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-6)


EVALUATION = {
    # 3 held-out prompts, one per call: rank 0 makes two calls, rank 1 one and a throw-away one.
    "class_path": "lit_posttrain.callbacks.Evaluation",
    "init_args": {"every_n_steps": 1, "batch_size": 1, "samples": 2, "k": [1]},
}
FORGETTING = {"class_path": "lit_posttrain.callbacks.ForgettingProbes", "init_args": {"kl_prompts": 2, "max_items": 4}}
METHODS = {
    "sft": ["--model.class_path", "lit_posttrain.methods.sft.SFT"],
    # Rollouts reused for 2 steps: a rank with no stale prompt joins the others' sampling.
    "grpo": ["--model.init_args.rollouts.every_n_steps", "2"],
    "opd": ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", "tiny-random-llama:1"],
    "otr": ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.k", "64"],
    "sept": ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "0.6"],
    "hpt": ["--model.class_path", "lit_posttrain.methods.hpt.HPT"],
}


# Every method sharded; under DDP the methods the comparison above does not cover that log
# metrics of their own (a metric logged on one rank and not another would hang the run).
EVERY_METHOD = {"fsdp": list(METHODS), "ddp": ["opd", "hpt"]}


@pytest.fixture(scope="module")
def every_method_runs(tmp_path_factory):
    done = {}

    def get(strategy: str):
        if strategy not in done:
            common = [
                *STRATEGIES[strategy], "--data.batch_size", "2", "--data.task.init_args.num_eval", "3",
                "--trainer.max_steps", "2", "--trainer.callbacks+", json.dumps(EVALUATION),
                "--trainer.callbacks+", json.dumps(FORGETTING),
            ]  # fmt: skip
            runs = {method: ("tiny_grpo.yaml", [*common, *METHODS[method]]) for method in EVERY_METHOD[strategy]}
            done[strategy] = _fit_many(tmp_path_factory.mktemp(f"every-{strategy}"), runs)
        return done[strategy]

    return get


# Sharded, the methods run in the default run's comparison (SFT, GRPO) and in CI's long run all of them.
@pytest.mark.parametrize(
    ("strategy", "method"),
    [pytest.param(s, m, marks=[pytest.mark.long] if s == "fsdp" else []) for s, methods in EVERY_METHOD.items() for m in methods],
)
def test_every_method_trains_on_two_processes(strategy, method, every_method_runs, tiny_model_dir):
    """Full fine-tuning with evaluation, forgetting probes and uneven shares: the run finishes (under
    FSDP a rank that skipped a forward pass would hang it), losses are finite, every weight moves.
    A strategy's methods run one after another in the same two processes."""
    weights, losses = every_method_runs(strategy)[method]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert all(not torch.equal(start[k], weights[k]) for k in start), "every weight trains in full fine-tuning"


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_sharded_run_killed_inside_a_checkpoint_write_resumes_exactly(tmp_path):
    """Killed inside the rewrite of `last.ckpt` at step 2 (every rank's shards written, Lightning's
    metadata file not), resumed from `last.ckpt` (still step 1's, a folder of shards) to step
    3: the same losses and weights as the run that was never stopped. Lightning's own strategy
    rewrites a checkpoint folder in place, and a kill there mixed one step's metadata with another's
    shards; `AtomicModelParallelStrategy` swaps the folder in once it is whole."""
    common = [
        *STRATEGIES["fsdp"], "--data.batch_size", "4", "--seed_everything", "3",
        "--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save", "true",
    ]  # fmt: skip
    checkpoints = tmp_path / "checkpoints"
    killed_args = [
        "--trainer.max_steps", "3", "--trainer.enable_checkpointing", "true", "--trainer.callbacks+",
        "lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath", str(checkpoints),
        "--trainer.callbacks.save_last", "true", "--trainer.callbacks.every_n_train_steps", "1",
        "--trainer.callbacks.save_top_k", "0",  # only last.ckpt: the kill lands in its rewrite
        "--trainer.callbacks+", "crash.KillInsideCheckpointWrite", "--trainer.callbacks.step", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests" / "helpers")}
    (tmp_path / "killed").mkdir()
    command = [str(Path(sys.executable).parent / "lit-posttrain"), *_args(tmp_path / "killed", "tiny_grpo.yaml", *common, *killed_args)]
    killed = subprocess.run(command, cwd=tmp_path / "killed", env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = checkpoints / "last.ckpt"
    assert last.is_dir() and torch.load(last / "meta.pt", weights_only=True)["global_step"] == 1
    whole_checkpoints = [
        "--trainer.enable_checkpointing", "true", "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(tmp_path / "whole_checkpoints"), "--trainer.callbacks.save_last", "true",
        "--trainer.callbacks.save_top_k", "0",
    ]  # fmt: skip
    done = _fit_many(tmp_path / "after", {
        "whole": ("tiny_grpo.yaml", [*common, "--trainer.max_steps", "3", *whole_checkpoints]),
        "rest": ("tiny_grpo.yaml", [*common, "--trainer.max_steps", "3", "--ckpt_path", str(last)]),
    })  # fmt: skip
    (whole, whole_losses), (resumed, resumed_losses) = done["whole"], done["rest"]
    assert resumed_losses == pytest.approx(whole_losses[1:], rel=1e-5, abs=1e-7)
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    # `lit-posttrain export` gathers a sharded checkpoint's folder of shards into the run's own model.
    exported = export_checkpoint(tmp_path / "whole_checkpoints" / "last.ckpt", tmp_path / "exported")
    weights = load_file(exported / "model.safetensors")
    assert weights.keys() == whole.keys() and all(torch.equal(weights[k], whole[k]) for k in whole)


# --- several nodes: two "nodes" of one process each, on this machine -----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_on_nodes(root: Path, strategy: str, node_env) -> dict[str, tuple[dict, list[float]]]:
    """Every config trained on two nodes of one process each (both on this machine, one workdir
    as a shared filesystem), each node's process started with the command and environment
    `node_env(rank, port, script)` gives, the two at once; one launch for all configs, as `_fit_many`."""
    nodes_args = ["--trainer.devices", "1", "--trainer.num_nodes", "2"]
    runs = {m: (config, [*_train_args(8, 2, *STRATEGIES[strategy], *more), *nodes_args]) for m, (config, more) in _configs(strategy).items()}
    port, script = _free_port(), _fit_many_script(root, runs)
    nodes = []
    for rank in (0, 1):
        command, env = node_env(rank, port, script)
        with (root / f"node{rank}.log").open("w") as log:  # the child keeps its own copy of the descriptor
            nodes.append(subprocess.Popen(command, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=log, stderr=subprocess.STDOUT))
    for rank, node in enumerate(nodes):
        try:
            node.wait(timeout=600)
        finally:
            if node.poll() is None:
                for other in nodes:
                    other.kill()
        assert node.returncode == 0, f"node {rank}:\n" + (root / f"node{rank}.log").read_text()[-3000:]
    return {m: _read_run(root / m) for m in runs}


def _torchrun(rank: int, port: int, script: list[str]) -> tuple[list[str], dict]:
    """torchrun's static rendezvous at node 0's address, as on two machines (`--node-rank`)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    return [*torchrun, "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), *script], {}


def _slurm(rank: int, port: int, script: list[str]) -> tuple[list[str], dict]:
    """What `srun` sets for task `rank` of a 2-node job of one task a node (Lightning's
    SLURMEnvironment reads these; MASTER_PORT as an sbatch script exports it)."""
    env = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit_posttrain", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank), "MASTER_PORT": str(port),
    }  # fmt: skip
    return [sys.executable, *script], env


LAUNCHERS = {"torchrun": _torchrun, "slurm": _slurm}


@pytest.mark.parametrize(
    ("launcher", "strategy"),
    [pytest.param(launcher, strategy, marks=pytest.mark.long) for launcher, strategy in [("torchrun", "ddp"), ("torchrun", "fsdp"), ("slurm", "ddp")]],
)
def test_two_nodes_match_one_process(launcher, strategy, runs, tmp_path):
    """Two nodes of one process each give the weights and losses of one process on the same global
    batch, launched as on a cluster: torchrun on each node, or SLURM's task variables."""
    nodes = _fit_on_nodes(tmp_path, strategy, LAUNCHERS[launcher])
    for method, (two, two_losses) in nodes.items():
        one, one_losses = runs(1)[method]
        for name in one:
            assert torch.allclose(one[name], two[name], atol=ATOL.get(method, 1e-5)), (method, name)
        assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-6), method
