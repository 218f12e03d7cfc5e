"""A GRPO step sampling from a vLLM server in its own process, against vLLM in the trainer's process.

    .venv/bin/python benchmarks/server_step.py [--steps 3] [--warmup 1] [--out runs/server_step]

Two settings, each run with both engines: `configs/grpo.yaml` as shipped (LoRA, 8 prompts x 8
samples of arithmetic answers of ~3 tokens after one-shot prompts of ~70) and the same GRPO on
`lit_posttrain.data.running_sum.RunningSum` sums of 8 two-digit numbers worked a line at a time
(answers of ~110 tokens, `max_new_tokens` 160). On a machine of N
cores the in-process engine and the trainer take turns on all N threads; with the server, the
server is pinned to the last core (`lit_posttrain.serve --cores`) and the trainer to the others,
so each has fewer threads but neither waits for the other's start-up or memory. Nothing overlaps
yet: the trainer waits for each step's samples either way. Timed as benchmarks/throughput.py times
every method (median step and its phases after the warm-up steps; the server's start-up is not in
any step). The peak memory is the trainer's process alone: the server's is its own.

Writes server_step.md and server_step.csv to --out.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from compare_report import write_csv
from throughput import MODEL, ROOT, markdown_table, matmul_peak, non_embedding_params, run_cli, summarise

from lit_posttrain import serve

SETTINGS = {
    "short answers (arithmetic, ~3 tokens)": [],
    "long answers (running sums, ~110 tokens)": [
        "--data.task", "lit_posttrain.data.running_sum.RunningSum", "--data.task.init_args.terms", "8",
        "--data.task.init_args.digits", "2", "--data.task.init_args.num_eval", "8",
        "--model.init_args.engine.init_args.max_new_tokens", "160",
    ],
}  # fmt: skip
COLUMNS = [
    ("setting", "setting", "{}"), ("engine", "engine", "{}"), ("trainer threads", "trainer_threads", "{}"),
    ("step (s)", "step_s", "{:.2f}"), ("generation (s)", "generation_s", "{:.2f}"), ("loss forward (s)", "loss_forward_s", "{:.2f}"),
    ("backward + step (s)", "backward_step_s", "{:.2f}"), ("weight push (s)", "sync_s", "{:.2f}"),
    ("mean completion", "completion_length", "{:.1f}"), ("generation tokens/s", "generation_tokens_per_s", "{:.0f}"),
    ("peak RSS trainer (GiB)", "peak_rss_process_gib", "{:.2f}"),
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
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from lit_posttrain.models import resolve_dtype, resolve_model_source

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("server_step.py needs at least 2 cores: one for the server, the rest for the trainer")
    dtype = resolve_dtype("auto")
    peak, params = matmul_peak(dtype), non_embedding_params(resolve_model_source(MODEL))
    config = ROOT / "configs" / "grpo.yaml"
    rows = []
    for setting, extra in SETTINGS.items():
        name = setting.split()[0]
        vllm = ["--config", str(ROOT / "configs" / "engines" / "vllm.yaml"), *extra]
        run = run_cli(f"{name}_in_process", config, vllm, args.out, args.warmup, args.steps, len(cores))
        rows.append({"setting": setting, "engine": "VLLMEngine (in process)", "trainer_threads": len(cores), **summarise(run, params, peak)})

        port = free_port()
        server = serve.start(
            MODEL, port, "--cores", str(cores[-1]), "--max-model-len", "512",
            log=args.out / f"{name}_server.log", preexec_fn=lambda: os.sched_setaffinity(0, {cores[-1]}),
        )  # fmt: skip
        try:
            served = [*vllm, "--config", str(ROOT / "configs" / "engines" / "vllm_server.yaml"),
                      "--model.init_args.engine.init_args.url", f"http://127.0.0.1:{port}"]  # fmt: skip
            os.sched_setaffinity(0, set(cores[:-1]))  # the trainer's process inherits the rest
            try:
                run = run_cli(f"{name}_server", config, served, args.out, args.warmup, args.steps, len(cores) - 1)
            finally:
                os.sched_setaffinity(0, set(cores))
        finally:
            server.terminate()
            server.wait(timeout=60)
        rows.append({"setting": setting, "engine": "VLLMServerEngine (server on 1 core)", "trainer_threads": len(cores) - 1, **summarise(run, params, peak)})

    header = (
        f"machine: {len(cores)} cores, {str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s; model: {MODEL}; "
        f"configs/grpo.yaml (LoRA, 8 prompts x 8 samples); median of {args.steps} steps after {args.warmup} warm-up"
    )
    report = "\n\n".join([header, markdown_table(rows, COLUMNS)]) + "\n"
    write_csv(args.out / "server_step.csv", list(rows[0]), rows)
    (args.out / "server_step.md").write_text(report)
    print("\n" + report + f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
