"""Reward calls in worker processes (`ProcessScorer`): in parallel, a hung or dead worker killed and
replaced while the step goes on, a reward that cannot load refused with its reason, and a GRPO run
through the CLI that gets the thread scorer's rewards."""

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.data.task import Example
from lit_posttrain.rewards import MathVerifier, ProcessScorer, ThreadScorer
from lit_posttrain.rewards.functions import TRLReward, Verified

TINY_GRPO = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_grpo.yaml")

MODULE = '''
import os, time
from pathlib import Path

def behave(prompts, completions, **kwargs):
    text = completions[0]
    if text == "hang":
        time.sleep(120)
    if text == "die":
        os._exit(3)
    if text == "raise":
        raise ValueError("a bug in the reward")
    return [float(len(text))]

def worker_pid(prompts, completions, **kwargs):
    return [float(os.getpid())]

def pid_score(completion, answer):
    return float(os.getpid())

def rendezvous(prompts, completions, folder, **kwargs):
    """Mark this process as started, then wait until two processes have: two calls at once."""
    Path(folder[0], str(os.getpid())).touch()
    for _ in range(600):
        seen = len(list(Path(folder[0]).iterdir()))
        if seen >= 2:
            return [float(seen)]
        time.sleep(0.05)
    return [float(seen)]
'''


@pytest.fixture
def scorer_rewards(tmp_path, monkeypatch):
    (tmp_path / "scorer_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    monkeypatch.chdir(tmp_path)


def items(*texts: str, **metadata) -> list[tuple[str, Example]]:
    return [(text, Example([{"role": "user", "content": "?"}], answer="2", metadata=metadata)) for text in texts]


def part(function: str) -> TRLReward:
    return TRLReward(f"scorer_rewards.{function}", conversational=False)


def test_calls_run_at_once_in_worker_processes(scorer_rewards, tmp_path):
    (tmp_path / "started").mkdir()
    scorer = ProcessScorer(timeout_s=60, workers=2)
    try:
        # Each call returns only once two processes have entered it: 2.0 everywhere says two
        # calls ran at the same time, in two processes other than this one.
        scores = scorer.score([part("rendezvous"), part("worker_pid")], items("a", "bb", "ccc", folder=str(tmp_path / "started")))
        assert scores[0::2] == [2.0, 2.0, 2.0]
        pids = {int(s) for s in scores[1::2]}
        assert os.getpid() not in pids and pids <= {worker.proc.pid for worker in scorer._workers}
        assert (scorer.failures.errors, scorer.failures.timeouts) == (0, 0)
    finally:
        scorer.close()


def test_a_hung_or_dead_worker_is_replaced_and_the_other_calls_go_on(scorer_rewards):
    scorer, parts = ProcessScorer(timeout_s=2.0, workers=2), [part("behave")]
    try:
        scores = scorer.score(parts, items("ok", "hang", "die", "raise", "fine"))
        assert scores == [2.0, 0.0, 0.0, 0.0, 4.0]
        assert (scorer.failures.errors, scorer.failures.timeouts) == (2, 1)  # the death and the raise; the hang
        workers = list(scorer._workers)
        assert len(workers) == 2
        assert scorer.score(parts, items("again")) == [5.0]
        # The same workers serve the next step of the same reward: no call failed in it.
        assert [w.proc.pid for w in scorer._workers] == [w.proc.pid for w in workers]
        assert all(w.proc.is_alive() for w in workers)
    finally:
        scorer.close()
    assert not any(w.proc.is_alive() for w in workers), "close() stops the workers"


def test_same_scores_as_the_thread_scorer(scorer_rewards):
    parts, calls = [part("behave"), Verified(MathVerifier())], items("\\boxed{2}", "3", "x = 2")
    processes = ProcessScorer(workers=2)
    try:
        assert processes.score(parts, calls) == ThreadScorer().score(parts, calls) == [9.0, 1.0, 1.0, 0.0, 5.0, 1.0]
    finally:
        processes.close()


def test_math_verifier_scores_in_place_inside_a_worker(scorer_rewards):
    """A scoring worker is itself a bounded process: MathVerifier must not start a second one."""
    import scorer_rewards as module  # a light module: the worker imports it to unpickle the function

    verifier = MathVerifier(_score_fn=module.pid_score)
    scorer = ProcessScorer(workers=1)
    try:
        (pid,) = scorer.score([Verified(verifier)], items("1"))
        assert int(pid) == scorer._workers[0].proc.pid
        assert verifier._proc is None, "the trainer's copy started no worker of its own"
    finally:
        scorer.close()


def test_a_reward_a_worker_cannot_load_stops_with_the_reason(monkeypatch):
    ghost = types.ModuleType("ghost_rewards")  # importable here, not in a fresh process
    ghost.score = lambda prompts, completions, **kwargs: [1.0]
    ghost.score.__module__, ghost.score.__qualname__ = "ghost_rewards", "score"
    monkeypatch.setitem(sys.modules, "ghost_rewards", ghost)
    scorer = ProcessScorer(workers=1)
    with pytest.raises(RuntimeError, match=r"could not load the reward: ModuleNotFoundError: No module named 'ghost_rewards'.*importable"):
        scorer.score([TRLReward("ghost_rewards.score")], items("1"))
    assert scorer._workers == []


def test_grpo_trains_with_rewards_scored_in_processes(scorer_rewards, tmp_path):
    def rewards(scorer: dict | None) -> list[str]:
        extra = ["--model.init_args.scorer", json.dumps(scorer)] if scorer else []
        cli = LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", "--export", "false", *extra])
        with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
            return [r["train/reward"] for r in csv.DictReader(f) if r.get("train/reward")]

    in_processes = rewards({"class_path": "lit_posttrain.rewards.ProcessScorer", "init_args": {"workers": 2}})
    assert len(in_processes) == 2
    assert in_processes == rewards(None)


@pytest.mark.benchmark
def test_the_scoring_benchmark_runs(tmp_path):
    out = tmp_path / "scoring.csv"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reward_scoring.py"
    subprocess.run([sys.executable, str(script), "--completions", "4", "--repeats", "1", "--out", str(out)], check=True, timeout=600)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["reward"], r["scorer"]) for r in rows] == [
        (reward, scorer) for reward in ("math-verify", "exact match") for scorer in ("threads (4)", "processes (1)", "processes (2)")
    ]
