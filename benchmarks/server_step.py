"""A GRPO step sampling from a vLLM server in its own process, against vLLM in the trainer's process,
each with sampling drawn ahead of training (`rollouts.max_staleness`) or not.

    .venv/bin/python benchmarks/server_step.py [--steps 3] [--warmup 1] [--settings short ppo long]
        [--server-staleness 0 1 2] [--in-process-staleness 0 1] [--out runs/server_step]

Three settings: `configs/grpo.yaml` as shipped (LoRA, 8 prompts x 8 samples of arithmetic answers
of ~3 tokens after one-shot prompts of ~70); the same with 4 PPO epochs per rollout batch (four
optimizer steps on each batch's samples: the training-heavy case); and GRPO on
`lit_posttrain.data.running_sum.RunningSum` sums of 8 two-digit numbers worked a line at a time
(answers of ~110 tokens, `max_new_tokens` 160: the generation-heavy case). On a machine of N cores
the in-process engine and the trainer share all N threads; with the server, the server is pinned
to the last core (`lit_posttrain.serve --cores`) and the trainer to the others.

With max_staleness 0 the trainer waits for each batch's samples; with k >= 1 the next batch's are
drawn while this one trains (by a worker thread: for the in-process engine on the trainer's own
cores, for the server on its core), so a step takes about max(generation, training) + push instead
of their sum. Timed as benchmarks/throughput.py times every method (median step after the warm-up
steps, a step being one rollout batch, and before the last k, which have nothing left to draw
ahead; the server's start-up is not in any step); `generation` is
the sampling's own time, beside the training when drawn ahead, and `wait` what the trainer waited
for it. The peak memory is the trainer's process alone: the server's is its own.

Writes server_step.md and server_step.csv to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from pathlib import Path

from compare_report import write_csv
from throughput import MODEL, ROOT, markdown_table, matmul_peak, non_embedding_params, run_cli, summarise

from lit_posttrain import serve

SETTINGS = {
    "short": ("short answers (arithmetic, ~3 tokens)", []),
    "ppo": ("short answers, 4 PPO epochs a batch", ["--model.init_args.ppo_epochs", "4"]),
    "long": ("long answers (running sums, ~110 tokens)", [
        "--data.task", "lit_posttrain.data.running_sum.RunningSum", "--data.task.init_args.terms", "8",
        "--data.task.init_args.digits", "2", "--data.task.init_args.num_eval", "8",
        "--model.init_args.engine.init_args.max_new_tokens", "160",
    ]),
}  # fmt: skip
COLUMNS = [
    ("setting", "setting", "{}"), ("engine", "engine", "{}"), ("max_staleness", "max_staleness", "{}"),
    ("trainer threads", "trainer_threads", "{}"), ("step (s)", "step_s", "{:.2f}"),
    ("generation (s)", "generation_s", "{:.2f}"), ("wait (s)", "wait_s", "{:.2f}"), ("training (s)", "training_s", "{:.2f}"),
    ("weight push (s)", "sync_s", "{:.2f}"), ("mean completion", "completion_length", "{:.1f}"),
    ("generation tokens/s", "generation_tokens_per_s", "{:.0f}"), ("peak RSS trainer (GiB)", "peak_rss_process_gib", "{:.2f}"),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed GRPO steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="GRPO steps run first and not timed")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "server_step", help="folder for the tables")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="which settings to run")
    parser.add_argument("--server-staleness", nargs="+", type=int, default=[0, 1, 2], help="max_staleness values run with the server")
    parser.add_argument("--in-process-staleness", nargs="+", type=int, default=[0, 1], help="max_staleness values run in process")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from lit_posttrain.models import resolve_model_source
    from lit_posttrain.precision import resolve_dtype

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("server_step.py needs at least 2 cores: one for the server, the rest for the trainer")
    dtype = resolve_dtype("auto")
    peak, params = matmul_peak(dtype), non_embedding_params(resolve_model_source(MODEL))
    config = ROOT / "configs" / "grpo.yaml"
    rows = []

    def timed(setting: str, engine: str, k: int, threads: int, overrides: list[str], name: str) -> None:
        # A step is one rollout batch: with several optimizer steps a batch, max_steps counts them all.
        epochs = int(overrides[overrides.index("--model.init_args.ppo_epochs") + 1]) if "--model.init_args.ppo_epochs" in overrides else 1
        # The last k batches have nothing left to draw ahead (the run ends): k more are run, untimed.
        overrides = [*overrides, "--model.init_args.rollouts.max_staleness", str(k),
                     "--trainer.max_steps", str((args.warmup + args.steps + k) * epochs)]  # fmt: skip
        run = run_cli(f"{name}_k{k}", config, overrides, args.out, args.warmup, args.steps + k, threads)
        summary = summarise(dataclasses.replace(run, steps=run.steps[: args.steps]), params, peak)
        training_s = summary["loss_forward_s"] + summary["backward_step_s"]
        rows.append({"setting": setting, "engine": engine, "max_staleness": k, "trainer_threads": threads, "training_s": training_s, **summary})

    for key in args.settings:
        setting, extra = SETTINGS[key]
        vllm = ["--config", str(ROOT / "configs" / "engines" / "vllm.yaml"), *extra]
        for k in args.in_process_staleness:
            timed(setting, "VLLMEngine (in process)", k, len(cores), vllm, f"{key}_in_process")

        port = free_port()
        server = serve.start(
            MODEL, port, "--cores", str(cores[-1]), "--max-model-len", "512",
            log=args.out / f"{key}_server.log", preexec_fn=lambda: os.sched_setaffinity(0, {cores[-1]}),
        )  # fmt: skip
        try:
            served = [*vllm, "--config", str(ROOT / "configs" / "engines" / "vllm_server.yaml"),
                      "--model.init_args.engine.init_args.url", f"http://127.0.0.1:{port}"]  # fmt: skip
            os.sched_setaffinity(0, set(cores[:-1]))  # the trainer's process inherits the rest
            try:
                for k in args.server_staleness:
                    timed(setting, "VLLMServerEngine (server on 1 core)", k, len(cores) - 1, served, f"{key}_server")
            finally:
                os.sched_setaffinity(0, set(cores))
        finally:
            server.terminate()
            server.wait(timeout=60)

    header = (
        f"machine: {len(cores)} cores, {str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s; model: {MODEL}; "
        f"configs/grpo.yaml (LoRA, 8 prompts x 8 samples); median of {args.steps} rollout batches after {args.warmup} warm-up"
    )
    report = "\n\n".join([header, markdown_table(rows, COLUMNS)]) + "\n"
    write_csv(args.out / "server_step.csv", list(rows[0]), rows)
    (args.out / "server_step.md").write_text(report)
    print("\n" + report + f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
