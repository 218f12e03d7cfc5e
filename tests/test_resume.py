"""Kill a run at any step, resume from its last checkpoint, and the rest of the run is the run that
was never interrupted: the same losses and rewards step by step, the same final weights."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lit-posttrain")


def _run(tmp_path: Path, name: str, steps: int, *extra: str) -> subprocess.CompletedProcess:
    args = [
        CLI, "fit", "--config", str(ROOT / "configs" / "tiny_grpo.yaml"), "--trainer.max_steps", str(steps),
        "--trainer.logger.init_args.name", name, "--export_to", str(tmp_path / name / "model"),
        "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(tmp_path / name / "checkpoints"),
        "--trainer.callbacks.every_n_train_steps", "1", "--trainer.callbacks.save_last", "true",
        "--trainer.callbacks.save_top_k", "2", "--trainer.callbacks.monitor", "step", "--trainer.callbacks.mode", "max",
        "--trainer.enable_checkpointing", "true", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "helpers"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _per_step(run_dir: Path, key: str) -> dict[int, float]:
    values = {}
    for metrics in sorted(run_dir.glob("version_*/metrics.csv")):
        with open(metrics) as f:
            values |= {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}
    return values


STEPS = 6


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """tiny_grpo.yaml's run of `STEPS` steps, never stopped: what the interrupted ones must equal."""
    return _whole(tmp_path_factory.mktemp("uninterrupted"))


def _whole(folder: Path, *extra: str) -> Path:
    """`folder`, with the uninterrupted run of `STEPS` steps (`whole`) under settings `extra` in it."""
    whole = _run(folder, "whole", STEPS, *extra)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return folder


def _uninterrupted_for(extra: list[str], tmp_path: Path, request) -> Path:
    """The folder with the uninterrupted run (`whole`) for settings `extra`: the module's for the
    default settings, else one run here."""
    return _whole(tmp_path, *extra) if extra else request.getfixturevalue("uninterrupted")


def _assert_same_steps(expected_dir: Path, got_dir: Path) -> None:
    for key in ("train/loss", "train/reward"):
        expected, got = _per_step(expected_dir, key), _per_step(got_dir, key)
        assert sorted(got) == sorted(expected) == list(range(STEPS)), key
        for step in range(STEPS):
            assert got[step] == pytest.approx(expected[step], abs=1e-6), (key, step)


@pytest.mark.parametrize(
    ("kill_at", "extra"),
    [
        (3, []),  # mid-epoch: 64 prompts, 8 a step
        # epoch boundary (16 prompts: 2 steps an epoch), and reused rollouts that must survive the kill
        pytest.param(2, ["--data.task.init_args.num_train", "16", "--model.init_args.rollouts.every_n_steps", "3"], marks=pytest.mark.long),
    ],
    ids=["mid_epoch", "epoch_boundary_reused_rollouts"],
)  # fmt: skip
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, kill_at, extra, request):
    steps = STEPS
    tmp_path = _uninterrupted_for(extra, tmp_path, request)

    killed = _run(tmp_path, "killed", steps, *extra, "--trainer.callbacks+", "crash.KillAtStep",
                  "--trainer.callbacks.step", str(kill_at))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.exists() and not (tmp_path / "killed" / "model").exists()
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == kill_at

    resumed = _run(tmp_path, "killed", steps, *extra, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_steps(tmp_path / "runs" / "whole", tmp_path / "runs" / "killed")
    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    kept = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in kept and len(kept) == 3, kept  # save_top_k: 2, plus last


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_a_lora_checkpoint_holds_the_adapters_not_the_base_and_resumes_exactly(tmp_path):
    """A LoRA run's checkpoint keeps the adapters and the optimizer's state; the frozen base is
    rebuilt from the model source on resume, and the resumed run ends as the uninterrupted one."""
    lora = ["--model.init_args.lora", "{}"]
    whole = _run(tmp_path, "whole", 4, *lora)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(tmp_path, "killed", 4, *lora, "--trainer.callbacks+", "crash.KillAtStep", "--trainer.callbacks.step", "2")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"]), sorted(checkpoint["state_dict"])[:3]
    resumed = _run(tmp_path, "killed", 4, *lora, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key in ("train/loss", "train/reward"):
        expected, got = _per_step(tmp_path / "runs" / "whole", key), _per_step(tmp_path / "runs" / "killed", key)
        assert sorted(got) == sorted(expected) == list(range(4)), key
        assert all(got[step] == pytest.approx(expected[step], abs=1e-6) for step in range(4)), key
    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_kill_in_the_middle_of_a_rollout_batch_resumes_exactly(tmp_path):
    """GRPO taking 2 epochs x 2 mini-batches = 4 optimizer steps per rollout batch, killed just
    before step 5, the second of the second batch: checkpoints are written between batches, so it
    resumes from step 4, samples that batch again with the same seed, and ends as the
    uninterrupted run (losses and rewards of every batch, final weights)."""
    extra = ["--model.init_args.ppo_epochs", "2", "--model.init_args.mini_batches", "2"]
    steps = 8
    whole = _run(tmp_path, "whole", steps, *extra)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(tmp_path, "killed", steps, *extra, "--trainer.callbacks+", "crash.KillAtOptimizerStep", "--trainer.callbacks.step", "5")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 4
    resumed = _run(tmp_path, "killed", steps, *extra, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key in ("train/loss", "train/reward", "train/clip_fraction"):
        expected, got = _per_step(tmp_path / "runs" / "whole", key), _per_step(tmp_path / "runs" / "killed", key)
        assert sorted(got) == sorted(expected) == [0, 1], key  # logged once per rollout batch
        for step in expected:
            assert got[step] == pytest.approx(expected[step], abs=1e-6), (key, step)
    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_a_kill_inside_a_checkpoint_write_resumes_from_the_one_before(tmp_path):
    """Killed while `last.ckpt` is being rewritten after step 3: it is still step 2's, whole, and
    the run resumed from it is the run that was never interrupted."""
    steps = 5
    whole = _run(tmp_path, "whole", steps)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Only last.ckpt is kept (save_top_k 0, set on the ModelCheckpoint before the next callback is
    # added): the kill lands inside its rewrite.
    killed = _run(tmp_path, "killed", steps, "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks+",
                  "crash.KillInsideCheckpointWrite", "--trainer.callbacks.step", "3")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 2
    resumed = _run(tmp_path, "killed", steps, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _per_step(tmp_path / "runs" / "whole", "train/loss"), _per_step(tmp_path / "runs" / "killed", "train/loss")
    assert sorted(got) == sorted(expected) == list(range(steps))
    assert all(got[s] == pytest.approx(expected[s], abs=1e-6) for s in range(steps)), (got, expected)
    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _measuring(history_file: Path) -> list[str]:
    evaluation = {"class_path": "lit_posttrain.callbacks.Evaluation", "init_args": {"every_n_steps": 2, "max_examples": 8}}
    probes = {
        "class_path": "lit_posttrain.callbacks.ForgettingProbes",
        "init_args": {"every_n_steps": 2, "kl_prompts": 3, "kl_max_new_tokens": 6, "max_items": 16, "history_file": str(history_file)},
    }
    return ["--trainer.callbacks+", json.dumps(evaluation), "--trainer.callbacks+", json.dumps(probes)]


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if not k.startswith("time/")} for entry in history]


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_a_resumed_runs_measurements_equal_the_uninterrupted_runs(tmp_path):
    """Evaluation and ForgettingProbes every 2 steps, killed when step 3 starts, resumed. Before
    their state went into checkpoints, the resumed run measured again at step 3, sampled the KL's
    continuations from the trained policy instead of the starting model, and counted flips against
    its own first measurement: its numbers were not the uninterrupted run's."""
    steps = 6
    whole = _run(tmp_path, "whole", steps, *_measuring(tmp_path / "whole.json"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(tmp_path, "killed", steps, *_measuring(tmp_path / "killed.json"), "--trainer.callbacks+",
                  "crash.KillAtStep", "--trainer.callbacks.step", "3")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(tmp_path, "killed", steps, *_measuring(tmp_path / "killed.json"),
                   "--ckpt_path", str(tmp_path / "killed" / "checkpoints" / "last.ckpt"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key in ("eval/accuracy", "eval/completion_length", "eval/right_to_wrong", "eval/wrong_to_right", "forget/kl",
                "forget/forward_kl", "forget/general_knowledge/nll", "forget/general_knowledge/right_to_wrong"):  # fmt: skip
        expected, got = _per_step(tmp_path / "runs" / "whole", key), _per_step(tmp_path / "runs" / "killed", key)
        assert sorted(got) == sorted(expected) == [0, 2, 4, 6], (key, sorted(got))
        for step in expected:
            assert got[step] == pytest.approx(expected[step], abs=1e-6), (key, step)
    assert expected[6] > 0, "the KL moved: the comparison means something"
    whole_history, killed_history = (_untimed(json.loads((tmp_path / f"{n}.json").read_text())) for n in ("whole", "killed"))
    assert [e["step"] for e in killed_history] == [0, 2, 4, 6]
    for got, expected in zip(killed_history, whole_history, strict=True):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == (value if isinstance(value, list) else pytest.approx(value, abs=1e-6)), (got["step"], key)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(uninterrupted):
    folder = uninterrupted
    stopped = _run(folder, "stopped", STEPS, "--trainer.callbacks+", "crash.KillAtStep", "--trainer.callbacks.step", "2",
                   "--trainer.callbacks.sig", str(int(signal.SIGTERM)))  # fmt: skip
    saved = list((folder / "runs" / "stopped").rglob("sigterm.ckpt"))
    assert len(saved) == 1, stopped.stderr[-3000:]
    # Lightning finishes the step in progress when the signal arrives, then stops.
    assert torch.load(saved[0], weights_only=True, map_location="cpu")["global_step"] == 3
    resumed = _run(folder, "stopped", STEPS, "--ckpt_path", str(saved[0]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_steps(folder / "runs" / "whole", folder / "runs" / "stopped")


@pytest.mark.parametrize(
    ("fail_at", "extra"),
    [(3, []), pytest.param(2, ["--data.task.init_args.num_train", "16"], marks=pytest.mark.long)],  # 16 prompts: 2 steps an epoch
    ids=["mid_epoch", "first_step_of_an_epoch"],
)
def test_a_rollout_engine_that_stops_answering_stops_the_run_with_a_checkpoint_that_resumes_exactly(tmp_path, fail_at, extra, request):
    """The engine fails at the start of a step (as VLLMServerEngine does when its server is gone):
    the run stops saying why, with a checkpoint of the steps before it, and the resumed run takes
    that step again from its start: the same losses and rewards as the run never stopped."""
    folder = _uninterrupted_for(extra, tmp_path, request)
    failed = _run(folder, "engine_failed", STEPS, *extra, "--trainer.callbacks+", "crash.EngineFailsAtStep",
                  "--trainer.callbacks.step", str(fail_at))  # fmt: skip
    assert failed.returncode != 0
    assert "the server stopped answering" in failed.stderr and "the rollout engine stopped answering: checkpoint saved" in failed.stderr
    (saved,) = (folder / "runs" / "engine_failed").rglob("engine_unavailable.ckpt")
    assert torch.load(saved, weights_only=True, map_location="cpu")["global_step"] == fail_at
    assert not (folder / "engine_failed" / "model").exists(), "a stopped run exports nothing"
    resumed = _run(folder, "engine_failed", STEPS, *extra, "--ckpt_path", str(saved))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_steps(folder / "runs" / "whole", folder / "runs" / "engine_failed")


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_otr_resumes_exactly_too(tmp_path):
    # OTR draws its own random candidates every step: they are seeded by the run and the step.
    otr = ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.k", "16"]
    whole = _run(tmp_path, "whole", 4, *otr)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(tmp_path, "killed", 4, *otr, "--trainer.callbacks+", "crash.KillAtStep", "--trainer.callbacks.step", "2")
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(tmp_path, "killed", 4, *otr, "--ckpt_path", str(tmp_path / "killed" / "checkpoints" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _per_step(tmp_path / "runs" / "whole", "train/loss"), _per_step(tmp_path / "runs" / "killed", "train/loss")
    assert sorted(got) == sorted(expected) == [0, 1, 2, 3]
    assert all(got[s] == pytest.approx(expected[s], abs=1e-6) for s in range(4)), (got, expected)
