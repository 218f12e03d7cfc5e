"""Throughput of every method through the real CLI: tokens/s, step time by phase, peak memory, MFU.

    .venv/bin/python benchmarks/throughput.py [--methods sft grpo opd otr sept hpt] [--steps 8]
        [--warmup 1] [--threads N] [--out runs/throughput] [--extra --trainer.precision bf16-mixed]
    .venv/bin/python benchmarks/throughput.py --scaling [--lengths 8 16 32 64] [--group-sizes 2 4 8 16]

Each method runs its shipped config (configs/<method>.yaml; `quickstart` is the quickstart's HPT) as
`lit-posttrain fit` in a process of its own, on the CPU, for `warmup + steps` optimizer steps,
without evaluation callbacks or checkpoints; every number is the median over the `steps` steps
after the warm-up. OPD's config distils from the quickstart's trained model, which may not exist
here: the teacher is the starting model itself (builtin:smollm2-135m-instruct), since only speed
is measured and the teacher's cost does not depend on its weights.

Where the numbers come from:
- Step time and its split. A `StepTimer` callback added to each run records, per step, the time
  from the batch's start to its end, so its window includes sampling (which happens inside
  the training step, `rollouts_for`). Every method logs the phases itself: time/generate_s and time/score_s (the methods
  that sample), time/loss_forward_s, time/backward_step_s (backward and optimizer step) and
  time/sync_s (the rollout engine taking the new weights). "other" is the rest of the step
  (rollout bookkeeping, batching, logging, callbacks).
- Tokens, as every method logs them: tokens/prompts (prefilled for sampling, each prompt once),
  tokens/generated, tokens/trained (what the policy's loss forward ran on: SFT's and OTR's prompt +
  demonstration, each trained group's prompt once + its completions for sampled rows, both for
  HPT) and tokens/teacher (OPD: each prompt once for its group, plus the completions).
- Peak memory: peak RSS of the training process up to the end of its last step (getrusage inside
  it), and over its whole life, which adds the export of the trained model at the end of fit
  (os.wait4 on that process alone).
- MFU: model FLOPs of a step / median step time / the matmul peak measured here before and after
  the runs, the higher of the two (2048^3 GEMMs on the same threads), in the weights' dtype: the
  configs' `dtype: auto`, bf16 where the CPU runs it natively (AVX512-BF16, AMX: the CI machine
  kind), else float32. N counts the parameters that take part in matmuls (not the input
  embedding, a lookup; the tied output head once); attention's own FLOPs are small at these
  lengths and left out:
      generation: 2N * (prompt tokens + generated tokens)   each prompt is prefilled once
      training:   4N * trained tokens                        forward 2N + LoRA backward 2N
      teacher:    2N * teacher tokens                        OPD only, the same model as the policy
  The backward is one more forward because with LoRA only the activations' gradients flow through
  the frozen weights (the adapters' own gradients are negligible); every shipped config trains
  LoRA. The generation and training MFU columns divide each part by its own phases' time.

--scaling: GRPO's step time against completion length and against group size (configs/grpo.yaml,
8 prompts a step), with `skip_zero_advantage: false` so that every row is trained whatever the
rewards: the work is then set by the setting, not by how many groups happen to score alike.
Arithmetic answers stop at EOS after about 3 tokens, so the length sweep swaps the task for
prompts asking for a long story (written to <out>/stories.jsonl), which the model writes until
max_new_tokens; each setting is reported next to the mean completion length it produced. The
group-size sweep keeps the arithmetic task and max_new_tokens 8.

Writes to --out: throughput.md and throughput.csv (or scaling.md, scaling.csv, scaling.png), and
runs/<name>/ per run: the CLI's output (output.log), its metrics.csv and the callback's steps.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from compare_report import write_csv

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"  # every shipped config's policy; OPD's teacher here too
METHODS = ("sft", "grpo", "opd", "otr", "sept", "hpt")
STORY_SUBJECTS = (
    "a lighthouse keeper", "a lost dog", "a dragon who cannot fly", "a robot learning to paint",
    "a city under the sea", "a girl who talks to trees", "a haunted library", "two rival bakers",
    "a journey across the desert", "a clockmaker", "a talking cat", "the last day of summer",
    "a pirate captain", "a mountain village", "a time traveller", "a friendly ghost",
    "a king without a crown", "a storm at sea", "a secret garden", "an old violin",
)  # fmt: skip


# --- inside the training process ------------------------------------------------------------------


class StepTimer(L.Callback):
    """Appends one JSON line per training step to `path`: the whole step's time, sampling included,
    and the process's peak RSS so far.

    Args:
        path: the JSON-lines file to append to.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        record = {
            "step_s": time.perf_counter() - self._start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


# --- the machine and the model --------------------------------------------------------------------


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 0.5, device: str = "cpu") -> float:
    """Sustained GEMM throughput in FLOP/s in `dtype` on `device`: the best of three runs of about
    `seconds` each (sized from one timed product: bf16 without hardware support is ~100x slower)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)

    def timed(repeats: int) -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()  # the products are queued: wait for them
        return time.perf_counter() - start

    timed(1)
    repeats = max(1, round(seconds / timed(1)))
    return max(2 * size**3 * repeats / timed(repeats) for _ in range(3))


def non_embedding_params(folder: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    # The embedding is a lookup, not a matmul; a tied output head is a matmul and counts once.
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding + (embedding if config.tie_word_embeddings else 0)


# --- one run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    steps: list[dict[str, float]]  # per timed step: StepTimer's record and the module's logged metrics
    peak_rss_process_mib: float
    process_s: float  # the whole process: start-up, model loading, every step, export


def run_cli(name: str, config: Path, overrides: list[str], out: Path, warmup: int, steps: int, threads: int | None) -> Run:
    """`lit-posttrain fit --config config ...overrides` in a process of its own, timed by StepTimer."""
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    timer_path, log_path = run_dir / "steps.jsonl", run_dir / "output.log"
    callbacks = [{"class_path": "throughput.StepTimer", "init_args": {"path": str(timer_path)}}]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir), "name": "csv"}}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as export:
        argv = [
            sys.executable, "-m", "lit_posttrain.cli", "fit", "--config", str(config), "--seed_everything", "0",
            # The MFU is against a CPU peak, so the run must be on the CPU too.
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", str(warmup + steps),
            "--trainer.callbacks", json.dumps(callbacks), "--trainer.logger", json.dumps(logger),
            "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--export_to", str(Path(export) / "model"), *overrides,
        ]  # fmt: skip
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        start = time.perf_counter()
        # posix_spawn + wait4 rather than subprocess: wait4 gives this one child's peak RSS, where
        # getrusage(RUSAGE_CHILDREN) would give the largest of every child waited for so far.
        pid = os.posix_spawn(
            sys.executable, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
        )
        os.close(log_fd)
        _, status, usage = os.wait4(pid, 0)
        process_s = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{name}: lit-posttrain fit exited with {code}; the end of {log_path}:\n{tail}")
    timed = [json.loads(line) for line in timer_path.read_text().splitlines()]
    with next(run_dir.rglob("metrics.csv")).open() as f:
        # Every method logs train/loss once per step; the step's other metrics share its row.
        logged = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f) if row.get("train/loss")]
    if len(timed) != warmup + steps or len(logged) != warmup + steps:
        raise RuntimeError(
            f"{name}: expected {warmup + steps} steps, found {len(timed)} in {timer_path} and {len(logged)} "
            f"logged rows in metrics.csv (see {log_path})"
        )
    merged = [{**t, **m} for t, m in zip(timed, logged, strict=True)][warmup:]
    print(f"{name}: {statistics.median(s['step_s'] for s in merged):.2f} s per step, {process_s:.0f} s in all", flush=True)
    return Run(merged, peak_rss_process_mib=usage.ru_maxrss / 1024, process_s=process_s)


def summarise(run: Run, params: int, peak: float) -> dict[str, float | None]:
    """Medians over the timed steps, rates and MFU; None where a method has no such phase."""

    def median(values) -> float:
        return statistics.median(list(values))

    steps = run.steps
    on_policy = "time/generate_s" in steps[0]
    phases = {
        "generation_s": [s.get("time/generate_s", 0.0) for s in steps],
        "scoring_s": [s.get("time/score_s", 0.0) for s in steps],
        "loss_forward_s": [s["time/loss_forward_s"] for s in steps],
        "backward_step_s": [s["time/backward_step_s"] for s in steps],
        "sync_s": [s.get("time/sync_s", 0.0) for s in steps],  # absent from runs logged before it was
        # Waiting for samples drawn ahead (rollouts.max_staleness); their generation ran beside the
        # training then, so `other_s` is not the step's remainder for such runs.
        "wait_s": [s.get("time/wait_s", 0.0) for s in steps],
    }
    other = [s["step_s"] - sum(p[i] for p in phases.values()) for i, s in enumerate(steps)]
    medians = {name: median(values) for name, values in phases.items()}
    if not on_policy:  # SFT and OTR neither sample nor score
        medians.update(generation_s=None, scoring_s=None)
    prompts = median(s.get("tokens/prompts", 0.0) for s in steps)
    generated = median(s.get("tokens/generated", 0.0) for s in steps)
    trained = median(s["tokens/trained"] for s in steps)
    teacher = median(s.get("tokens/teacher", 0.0) for s in steps)
    step_s, generation_s = median(s["step_s"] for s in steps), medians["generation_s"]
    training_s = median(s["time/loss_forward_s"] + s["time/backward_step_s"] for s in steps)
    generation_flops = 2 * params * (prompts + generated)
    training_flops = 4 * params * trained + 2 * params * teacher
    return {
        "steps_timed": len(steps),
        "step_s": step_s,
        **medians,
        "other_s": median(other),
        "prompt_tokens": prompts if on_policy else None,
        "generated_tokens": generated if on_policy else None,
        "trained_tokens": trained,
        "teacher_tokens": teacher or None,
        "generation_tokens_per_s": generated / generation_s if on_policy else None,
        "training_tokens_per_s": trained / training_s,
        "mfu_generation": generation_flops / generation_s / peak if on_policy else None,
        "mfu_training": training_flops / training_s / peak,
        "mfu_step": (generation_flops + training_flops) / step_s / peak,
        "completion_length": median(s["train/completion_length"] for s in steps) if on_policy else None,
        "truncated": median(s["train/truncated"] for s in steps) if on_policy else None,
        "peak_rss_training_gib": max(s["peak_rss_mib"] for s in steps) / 1024,
        "peak_rss_process_gib": run.peak_rss_process_mib / 1024,
        "process_s": run.process_s,
    }


# --- the two modes ----------------------------------------------------------------------------------


def method_runs(args) -> list[tuple[dict, Run]]:
    """Each method's shipped config, labelled by the method."""
    runs = []
    for method in args.methods:
        overrides = (["--model.init_args.teacher", MODEL] if method == "opd" else []) + args.extra
        run = run_cli(method, ROOT / "configs" / f"{method}.yaml", overrides, args.out, args.warmup, args.steps, args.threads)
        runs.append(({"method": method}, run))
    return runs


def scaling_runs(args) -> list[tuple[dict, Run]]:
    """GRPO at each completion length and each group size, labelled by sweep and setting."""
    stories = args.out / "stories.jsonl"
    with stories.open("w") as f:
        for subject in STORY_SUBJECTS:
            for ask in ("Write a long story about {}.", "Tell me a long, detailed tale about {}."):
                # The verifier never matches: rewards are all 0 and do not matter here.
                f.write(json.dumps({"prompt": ask.format(subject), "completion": "-"}) + "\n")
    story_task = {"class_path": "lit_posttrain.data.files.FileTask", "init_args": {"train": str(stories)}}
    every_row = ["--model.init_args.skip_zero_advantage", "false"]
    sweeps = [
        ("completion length", length, ["--data.task", json.dumps(story_task), "--model.init_args.engine.init_args.max_new_tokens", str(length)])
        for length in args.lengths
    ] + [("group size", size, ["--model.init_args.group_size", str(size)]) for size in args.group_sizes]  # fmt: skip
    runs = []
    for sweep, setting, overrides in sweeps:
        name = f"grpo_{sweep.replace(' ', '_')}_{setting}"
        run = run_cli(name, ROOT / "configs" / "grpo.yaml", every_row + overrides + args.extra, args.out, args.warmup, args.steps, args.threads)
        runs.append(({"sweep": sweep, "setting": setting}, run))
    return runs


def plot_scaling(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    sweeps = {
        "completion length": "max_new_tokens (mean completion length below)",
        "group size": "group size G (completions per prompt)",
    }
    lines = {"step_s": "whole step", "generation_s": "generation", "loss_forward_s": "loss forward", "backward_step_s": "backward + step"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (sweep, xlabel) in zip(axes, sweeps.items(), strict=True):
        rows = [r for r in results if r["sweep"] == sweep]
        x = [r["setting"] for r in rows]
        for key, label in lines.items():
            ax.plot(x, [r[key] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        labels = [f"{r['setting']}\n({r['completion_length']:.1f})" if sweep == "completion length" else str(r["setting"]) for r in rows]
        ax.set_xticks(x, labels)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(f"GRPO step time against {sweep}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds per step (median)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- output ---------------------------------------------------------------------------------------

# (header, key, format) per column; None values print as "-".
PHASE_COLUMNS = [
    ("step (s)", "step_s", "{:.3f}"), ("generation (s)", "generation_s", "{:.3f}"), ("scoring (s)", "scoring_s", "{:.3f}"),
    ("loss forward (s)", "loss_forward_s", "{:.3f}"), ("backward + step (s)", "backward_step_s", "{:.3f}"),
    ("weight push (s)", "sync_s", "{:.3f}"), ("other (s)", "other_s", "{:.3f}"),
]  # fmt: skip
RATE_COLUMNS = [
    ("generated tokens", "generated_tokens", "{:.0f}"), ("generation tokens/s", "generation_tokens_per_s", "{:.0f}"),
    ("trained tokens", "trained_tokens", "{:.0f}"), ("training tokens/s", "training_tokens_per_s", "{:.0f}"),
    ("MFU generation", "mfu_generation", "{:.1%}"), ("MFU training", "mfu_training", "{:.1%}"), ("MFU step", "mfu_step", "{:.1%}"),
]  # fmt: skip
MEMORY_COLUMNS = [("peak RSS training (GiB)", "peak_rss_training_gib", "{:.2f}"), ("peak RSS process (GiB)", "peak_rss_process_gib", "{:.2f}")]
SCALING_COLUMNS = [("completion length", "completion_length", "{:.1f}"), ("truncated", "truncated", "{:.0%}")]


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["-" if row[key] is None else fmt.format(row[key]) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, "quickstart"], default=list(METHODS), help="configs/<name>.yaml to run")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps run first and not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "throughput", help="folder for tables, CSV, chart and runs")
    parser.add_argument("--scaling", action="store_true", help="GRPO step time against completion length and group size")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64], help="max_new_tokens settings (--scaling)")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[2, 4, 8, 16], help="group sizes (--scaling)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `lit-posttrain fit` arguments, for every run (last)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from lit_posttrain.models import resolve_model_source
    from lit_posttrain.precision import resolve_dtype

    params = non_embedding_params(resolve_model_source(MODEL))
    # The configs' `dtype: auto`: bf16 where the CPU runs it natively, else float32, whose peak is then the one to beat.
    dtype = resolve_dtype("auto")
    # Measured before and after the runs, never during them; a busy machine only lowers a measured
    # peak, so the higher of the two is the closer.
    peaks = [matmul_peak(dtype)]
    runs = scaling_runs(args) if args.scaling else method_runs(args)
    peaks.append(matmul_peak(dtype))
    peak = max(peaks)
    results = [{**labels, **summarise(run, params, peak)} for labels, run in runs]
    header = (
        f"machine: {torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} "
        f"GFLOP/s (the higher of {peaks[0] / 1e9:.0f} before and {peaks[1] / 1e9:.0f} after the runs); model: {MODEL}, "
        f"{params / 1e6:.1f}M parameters in matmuls, LoRA; median of {args.steps} steps after {args.warmup} warm-up"
        + (f"; every run with `{' '.join(args.extra)}`" if args.extra else "")
    )
    if dtype != torch.bfloat16:
        # Measured too, so that the table says why the runs are not in bf16 (smaller: it is slow here).
        bf16 = matmul_peak(torch.bfloat16, size=1024)
        header += (
            f"\n\nThis CPU has no native bf16 (`dtype: auto` chose {str(dtype).removeprefix('torch.')}): a bf16 matmul runs "
            f"at {bf16 / 1e9:.1f} GFLOP/s here (1024^3 products), {peak / bf16:.0f}x slower; MFU is against the "
            f"{str(dtype).removeprefix('torch.')} peak the runs can reach."
        )
    if any((row[key] or 0) > 1 for row in results for key in ("mfu_generation", "mfu_training", "mfu_step")):
        header += "\n\nAn MFU above 100%: the machine was busier while the peak was measured than in that phase; rerun on an idle machine."
    if args.scaling:
        plot_scaling(results, args.out / "scaling.png")
        keys = [("sweep", "sweep", "{}"), ("setting", "setting", "{}")]
        tables = [markdown_table(results, keys + SCALING_COLUMNS + PHASE_COLUMNS), markdown_table(results, keys + RATE_COLUMNS)]
        name = "scaling"
    else:
        keys = [("method", "method", "{}")]
        tables = [markdown_table(results, keys + PHASE_COLUMNS), markdown_table(results, keys + RATE_COLUMNS + MEMORY_COLUMNS)]
        name = "throughput"
    report = "\n\n".join([header, *tables]) + "\n"
    for row in results:
        row.update(dtype=str(dtype).removeprefix("torch."), matmul_peak_gflops=peak / 1e9, threads=torch.get_num_threads(), matmul_params=params)
    write_csv(args.out / f"{name}.csv", list(results[0]), results)
    (args.out / f"{name}.md").write_text(report)
    print("\n" + report + f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
