"""The forgetting study: in a regime where SFT measurably forgets, how much task accuracy each
method buys per unit of forgetting, measured along the run, not only at its end.

    .venv/bin/python benchmarks/forgetting.py                      # the full study (benchmarks/FORGETTING.md)
    .venv/bin/python benchmarks/forgetting.py --skip-existing      # resume an interrupted one
    .venv/bin/python benchmarks/forgetting.py --methods sft grpo --seeds 0 --steps 20 --out runs/forget_small
    .venv/bin/python benchmarks/forgetting.py --smoke --out /tmp/forget    # tiny random model, a minute

Every run is `lit-posttrain fit` in a subprocess with the method's shipped config and, the same for
all, what the study holds equal: the starting model, full fine-tuning or LoRA (`--lora`), one
learning rate, the task and its held-out split, `--steps` optimizer steps of `--batch-size`
prompts, the generation limit and the seed (which also seeds the data order). Every `--every`
steps (and before the first and after the last) each run measures:
- held-out greedy accuracy on the first `--eval-examples` examples of the task (Evaluation);
- all 328 items of the built-in general-knowledge (GK) set, each item's right or wrong kept for the
  paired tests (ForgettingProbes `history_file`);
- KL to the starting model both ways, along the starting model's continuations of `--kl-prompts`
  GK questions (outside the task) and of `--task-kl-prompts` held-out prompts of the task itself:
  the forward one there, KL(start || policy), is what "RL's Razor" found to predict forgetting;
- the process's resident memory every step (MemoryMonitor).

The methods (METHODS): `sft` on the task's demonstrations (German: "Die Antwort ist 17."), which
is also the over-trained teacher `opd` distils from on-policy into the untouched model;
`sft_english`, SFT on the same answers in English ("The answer is 17."), the style control: how
much of SFT's drop is the answers' foreign form; `self_sft`, SFT on the model's own sampled
answers that the verifier accepts, resampled every step (GRPO's config with the `Reward`
advantage: no baseline, a rejected sample adds nothing); `grpo`; `hpt`; with --methods, `otr`
and `sept`. The measurement before training is made by the seed's first run and read by the others
(`baseline_cache`). `--frontier sft=1e-5,3e-5 grpo=1e-5` adds learning-rate arms (`sft@1e-05`:
the method at that rate, measured every `--frontier-every` steps), run first within each seed after
any teacher: `--frontier opd=1e-5 --methods sft` distils at 1e-5 from the `sft` model trained at `--lr`.

Time: 5 methods x 3 seeds x 24 steps took 84.6 minutes on a 2-core AMD EPYC with AVX512-BF16
(bf16 weights, 4-6.5 minutes a run, 2026-12-02); 4 methods x 3 seeds (sft, sft_english, self_sft,
grpo) 87.6 minutes on a 2-core AMD EPYC with AVX2 only (float32, 4.8-9.3 minutes a run,
2026-12-03). The default six methods take about 18 runs' time; choose --methods and --seeds to fit.

Written to --out: `runs/<method>/seed<S>/` (output.log, metrics.csv, forgetting_history.json,
the teacher's model, and result.json, written when the run has finished: --skip-existing reuses it
when the command is unchanged); `items/`, every finished run's per-item results (each GK item's
right or wrong and NLL at every checkpoint, the curves, memory, times: a few tens of KB a run, to
commit), from which benchmarks/forgetting_report.py writes, here or again later from `items/`
alone: `report.md` (tables, item-clustered tests, matched accuracy, the KL-forgetting fits, every
test corrected for their number), `checkpoints.csv` (one row per run and checkpoint),
`frontier.png`, `curves.png` and `memory.png`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from compare_report import Run, dtype_args, run_in_order, write_atomically

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lit_posttrain, when run from a checkout that is not installed
PROBE_SET = "general_knowledge"
CURVES = (  # logged metric -> the study's name for it, measured at every checkpoint
    ("eval/accuracy", "task_accuracy"),
    (f"forget/{PROBE_SET}/accuracy", "gk_accuracy"),
    (f"forget/{PROBE_SET}/nll", "gk_nll"),
    ("forget/kl", "probe_kl"),
    ("forget/forward_kl", "probe_forward_kl"),
    ("forget/task_kl", "task_kl"),
    ("forget/task_forward_kl", "task_forward_kl"),
)


@dataclass(frozen=True)
class Method:
    config: str
    extra_args: tuple[str, ...] = ()
    teacher: str | None = None  # the method whose final model (same seed) teaches this one
    default: bool = True
    note: str = ""
    demonstration: str | None = None  # its own demonstrations' style (None: the study's --demonstration)
    offline: bool = False  # trains on the starting model's verified samples, drawn once per seed (offline self-SFT)
    lr: float | None = None  # its own learning rate (None: the study's --lr): an arm of the learning-rate frontier
    every: int | None = None  # its own measurement cadence (None: the study's --every)


OFFLINE_SAMPLES = 8  # samples a training prompt for offline self-SFT, as many as the online form draws a step
REWARD_ADVANTAGE = "lit_posttrain.losses.advantages.Reward"
METHODS = {  # in run order: a teacher before its student
    "sft": Method("configs/sft.yaml", note="SFT on the task's demonstrations; also `opd`'s teacher"),
    "self_sft": Method(
        "configs/grpo.yaml", ("--model.init_args.loss.advantage", REWARD_ADVANTAGE),
        note="GRPO's config with the `Reward` advantage: SFT on its own accepted samples, resampled every step",
    ),  # fmt: skip
    "sft_english": Method(
        "configs/sft.yaml", demonstration="The answer is {answer}.",
        note="SFT on the same answers written in English, the model's own language: the style control",
    ),  # fmt: skip
    "offline_self_sft": Method(
        "configs/sft.yaml", default=False, offline=True,
        note=f"SFT on the starting model's own right answers, sampled once ({OFFLINE_SAMPLES} a training prompt) before training",
    ),  # fmt: skip
    "grpo": Method("configs/grpo.yaml"),
    "hpt": Method("configs/hpt.yaml"),
    "opd": Method("configs/opd.yaml", teacher="sft", note="on-policy distillation from the same seed's final `sft` model"),
    "otr": Method("configs/otr.yaml", default=False),
    "sept": Method("configs/sept.yaml", default=False),
}


def lr_arms(specs: list[str], every: int) -> dict[str, Method]:
    """The learning-rate frontier's arms, `METHOD=LR[,LR...]` each: `sft=1e-5,3e-5` gives
    `sft@1e-05` and `sft@3e-05`, the method at that rate, measured every `every` steps."""
    arms = {}
    for spec in specs:
        method, _, rates = spec.partition("=")
        if method not in METHODS or not rates:
            raise ValueError(f"--frontier {spec!r}: expected METHOD=LR[,LR...] with METHOD one of {', '.join(METHODS)}")
        if METHODS[method].offline:
            raise ValueError(f"--frontier {spec!r}: {method} trains on samples drawn once for the study's --lr; give it that rate")
        for rate in rates.split(","):
            try:
                lr = float(rate)
            except ValueError:
                raise ValueError(f"--frontier {spec!r}: {rate!r} is not a learning rate") from None
            if not lr > 0:
                raise ValueError(f"--frontier {spec!r}: learning rates must be positive, got {rate}")
            base = METHODS[method]
            note = f"{method} at learning rate {lr:g}, measured every {every} steps" + (f" ({base.note})" if base.note else "")
            arms[f"{method}@{lr:g}"] = Method(
                base.config, base.extra_args, teacher=base.teacher, default=False, note=note, demonstration=base.demonstration, lr=lr, every=every
            )  # fmt: skip
    return arms


# The demonstrations' style: a reply the model never writes by itself (it answers in English, and
# mostly wrong), as a much larger teacher's would be. With the bare answer ("{answer}") full
# fine-tuning learned the task and the GK probe did not fall (benchmarks/FORGETTING.md, pilots).
GERMAN = "Die Antwort ist {answer}."

PROFILES = {
    "full": dict(
        model="builtin:smollm2-135m-instruct", dtype="auto", lora=False, lr=1e-4, warmup_steps=4, seeds=[0, 1, 2], steps=24,
        batch_size=8, every=8, max_new_tokens=12, eval_examples=100, kl_prompts=16, task_kl_prompts=16, probe_items=None,
        demonstration=GERMAN,
    ),
    "smoke": dict(
        model="tiny-random-llama", dtype="float32", lora=False, lr=1e-3, warmup_steps=1, seeds=[0], steps=4, batch_size=4, every=2,
        max_new_tokens=4, eval_examples=8, kl_prompts=2, task_kl_prompts=2, probe_items=16, demonstration=GERMAN,
    ),
}
OPTIONS = {
    "model": "starting model source (README, 'Choosing the model')",
    "dtype": "weight dtype; auto: bfloat16 where the hardware runs it natively (training in bf16-mixed there, float32 masters for full fine-tuning), else float32; float32: float32 throughout (precision 32-true)",
    "lora": "train LoRA r16 adapters instead of every weight",
    "lr": "the learning rate of every method",
    "warmup_steps": "linear warm-up steps of every method (the configs differ: SFT's has 5, the others none)",
    "seeds": "one run of every method per seed; the seed also sets the data order",
    "steps": "optimizer steps per run",
    "batch_size": "prompts per optimizer step",
    "every": "measure every this many steps (and before the first and after the last)",
    "max_new_tokens": "generation limit, in training and evaluation alike",
    "eval_examples": "held-out task examples evaluated greedily at every checkpoint",
    "kl_prompts": "GK questions the KL to the start is measured along",
    "task_kl_prompts": "held-out task prompts the KL to the start is measured along",
    "probe_items": "GK items probed (default: all 328)",
    "demonstration": "the demonstrations' style, {a} {op} {b} {answer} filled in; '{answer}': the bare answer",
}


@dataclass(frozen=True)
class Settings:
    model: str
    dtype: str
    lora: bool
    lr: float
    warmup_steps: int
    seeds: list[int]
    steps: int
    batch_size: int
    every: int
    max_new_tokens: int
    eval_examples: int
    kl_prompts: int
    task_kl_prompts: int
    probe_items: int | None
    demonstration: str


TASK = {"max_operand": 20, "num_train": 320, "num_eval": 100}
VERIFIER = {"class_path": "lit_posttrain.rewards.NumericMatch", "init_args": {"extract": "last"}}


def offline_task_config(settings: Settings, seed: int, out: Path) -> Path:
    """Offline self-SFT's task for `seed`: the starting model's verified samples of the training
    prompts, drawn once (benchmarks/self_samples.py); reused when already drawn."""
    from self_samples import write_offline_task

    from lit_posttrain.data.arithmetic import Arithmetic
    from lit_posttrain.models import resolve_model_source
    from lit_posttrain.precision import resolve_dtype
    from lit_posttrain.rewards import NumericMatch

    folder = out / "offline" / f"seed{seed}"
    if (folder / "task.yaml").is_file() and (folder / "samples.json").is_file():
        return folder / "task.yaml"
    task = Arithmetic(**TASK, verifier=NumericMatch(extract="last"))
    print(f"offline self-SFT, seed {seed}: the starting model samples the {TASK['num_train']} training prompts x {OFFLINE_SAMPLES}...", flush=True)
    path = write_offline_task(task, resolve_model_source(settings.model), resolve_dtype(settings.dtype), folder, OFFLINE_SAMPLES, settings.max_new_tokens, seed)
    print(f"  {json.loads((folder / 'samples.json').read_text())}", flush=True)
    return path


def task_config(demonstration: str, out: Path, name: str = "task") -> Path:
    """The study's task: the RL configs' sums of two numbers 0..20 with their one-shot prompt, the
    demonstrations in `demonstration`'s style, and a verifier that reads the last number of the
    reply: it scores the demonstrations' style and the model's own alike."""
    data = {
        "task": {"class_path": "lit_posttrain.data.arithmetic.Arithmetic", "init_args": {**TASK, "demonstration": demonstration, "verifier": VERIFIER}},
        "max_prompt_tokens": 512,  # the tiny model's character tokenizer makes the one-shot prompt long
        "max_completion_tokens": 32,
    }  # fmt: skip
    path = out / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, yaml.safe_dump({"data": data}, sort_keys=False))
    return path


def run_command(settings: Settings, method: str, task: Path, seed: int, run_dir: Path, teacher: Path | None, export: bool,
                baselines: Path, methods: dict[str, Method] = METHODS) -> list[str]:  # fmt: skip
    spec = methods[method]
    lr, every = spec.lr or settings.lr, spec.every or settings.every
    engine = {"class_path": "lit_posttrain.rollout.HFEngine", "init_args": {"max_new_tokens": settings.max_new_tokens}}
    probes = ["builtin:general_knowledge"]
    command = [
        sys.executable, "-m", "lit_posttrain.cli", "fit",
        "--config", str(ROOT / spec.config), "--config", str(task),
        "--seed_everything", str(seed), "--data.seed", str(seed),
        "--model.init_args.model", settings.model, *dtype_args(settings.dtype),
        "--model.init_args.engine", json.dumps(engine), "--model.init_args.optim.lr", str(lr),
        "--model.init_args.optim.warmup_steps", str(settings.warmup_steps),
        "--data.batch_size", str(settings.batch_size), "--trainer.max_steps", str(settings.steps),
        "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.logger.init_args.name", "", "--trainer.logger.init_args.version", "",
        "--trainer.callbacks", "[]",
        "--trainer.callbacks+", "lit_posttrain.callbacks.Evaluation", "--trainer.callbacks.every_n_steps", str(every),
        "--trainer.callbacks.max_examples", str(settings.eval_examples),
        "--trainer.callbacks.baseline_cache", str(baselines / "evaluation.json"),
        "--trainer.callbacks+", "lit_posttrain.callbacks.ForgettingProbes", "--trainer.callbacks.every_n_steps", str(every),
        "--trainer.callbacks.probe_sets", json.dumps(probes), "--trainer.callbacks.max_items", json.dumps(settings.probe_items),
        "--trainer.callbacks.kl_prompts", str(settings.kl_prompts), "--trainer.callbacks.task_kl_prompts", str(settings.task_kl_prompts),
        "--trainer.callbacks.history_file", str(run_dir / "forgetting_history.json"),
        "--trainer.callbacks.baseline_cache", str(baselines / "forgetting.json"),
        "--trainer.callbacks+", "lit_posttrain.callbacks.MemoryMonitor",
        *spec.extra_args,
    ]  # fmt: skip
    if settings.lora:
        command += ["--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save=true"]
    else:
        command += ["--model.init_args.lora", "null"]
    command += ["--export_to", str(run_dir / "model")] if export else ["--export", "false"]
    if teacher is not None:
        command += ["--model.init_args.teacher", str(teacher)]
    return command


def read_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """`metric -> [(step, value)]` in logged order, from the CSV logger's file."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("step", "epoch") and value:
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def summarise_run(run_dir: Path, wall_s: float) -> dict:
    """One run's curves (per checkpoint), per-item GK results, memory and time."""
    series = read_metrics(run_dir / "metrics.csv")
    history = json.loads((run_dir / "forgetting_history.json").read_text())
    steps = [entry["step"] for entry in history]
    curves: dict[str, list[float | None]] = {"step": steps}
    for metric, name in CURVES:
        by_step = dict(series.get(metric, []))
        curves[name] = [by_step.get(step) for step in steps]
    output = (run_dir / "output.log").read_text()
    summary = re.search(r"Run summary: \d+ optimizer steps in (\d+) s", output)

    def total(*prefixes: str) -> float:
        return sum(v for key, points in series.items() if key.startswith(prefixes) for _, v in points)

    measure_s = total("eval/time_s", "time/forget_")
    return {
        "curves": curves,
        "gk_items": [[bool(x) for x in entry[f"forget/{PROBE_SET}/per_example"]] for entry in history],
        # The right option's per-token NLL, item by item (4 decimals: ample for differences of 0.01).
        "gk_nll_items": [[round(x, 4) for x in entry.get(f"forget/{PROBE_SET}/per_example_nll", [])] for entry in history],
        "memory_gib": series.get("memory/rss_gib", []),
        "wall_s": wall_s,
        "fit_s": float(summary.group(1)) if summary else None,
        "measure_s": measure_s,
        "probe_s": total("time/forget_"),
        "teacher_used": "tokens/teacher" in series,
    }


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 4 steps, 1 seed: the test's settings")
    defaults = [name for name, spec in METHODS.items() if spec.default]
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), default=defaults, help=f"methods to run (default: {' '.join(defaults)})")
    parser.add_argument("--frontier", nargs="+", default=[], metavar="METHOD=LR[,LR...]",
                        help="learning-rate arms, run before --methods within each seed (after a teacher among them): e.g. sft=1e-5,3e-5 grpo=1e-5")  # fmt: skip
    parser.add_argument("--frontier-every", type=int, default=4, help="the frontier arms' measurement cadence, in steps (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="output folder (default: runs/forgetting)")
    parser.add_argument("--skip-existing", action="store_true", help="reuse every finished run whose command is unchanged")
    parser.add_argument("--export-models", action="store_true",
                        help="keep every run's final model in its folder (model/; teachers always), to score again later, e.g. under other answer framings")  # fmt: skip
    for name, value in PROFILES["full"].items():
        help_text = f"{OPTIONS[name]} (default {value}; --smoke: {PROFILES['smoke'][name]})"
        if isinstance(value, bool):
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(value, list):
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, nargs="+", help=help_text)
        else:
            kind = int if value is None else type(value)
            parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)
    args = parser.parse_args(argv)
    try:
        args.arms = lr_arms(args.frontier, args.frontier_every)
    except ValueError as error:
        parser.error(str(error))
    if not args.methods and not args.arms:
        parser.error("nothing to run: give --methods, --frontier or both")
    if args.frontier_every < 1:
        parser.error(f"--frontier-every must be at least 1, got {args.frontier_every}")
    profile = PROFILES["smoke" if args.smoke else "full"]
    settings = Settings(**{name: getattr(args, name) if getattr(args, name) is not None else value for name, value in profile.items()})
    for method, spec in (METHODS | args.arms).items():
        if (method in args.methods or method in args.arms) and spec.teacher and spec.teacher not in args.methods:
            parser.error(f"{method}'s teacher is the {spec.teacher} model of the same seed (at the study's --lr): add {spec.teacher} "
                         "to --methods (with --skip-existing a finished one is reused)")  # fmt: skip
    counts = {k: v for k, v in vars(settings).items() if type(v) is int and k not in ("kl_prompts", "warmup_steps")}
    too_small = {k: v for k, v in counts.items() if v < 1}
    if too_small or settings.kl_prompts < 0 or settings.warmup_steps < 0 or settings.lr <= 0:
        parser.error(f"every count must be at least 1 (kl_prompts at least 0) and lr positive, got {too_small or vars(settings)}")
    return args, settings


def main(argv: list[str] | None = None) -> int:
    from forgetting_report import write_items, write_report

    from lit_posttrain.callbacks.cadence import digest

    args, settings = parse_args(argv)
    out = args.out.resolve()
    task = task_config(settings.demonstration, out)
    # A method with demonstrations of its own style gets its own task file; nothing measured at
    # the start depends on demonstrations, so the start is the study task's (one baseline a seed).
    specs = METHODS | args.arms
    tasks = {m: task_config(spec.demonstration, out, f"task_{m.split('@')[0]}") if spec.demonstration else task for m, spec in specs.items()}
    teachers = {spec.teacher for spec in METHODS.values()}
    # Teachers first (a distilling arm needs its teacher's model), then the frontier's arms.
    methods = [m for m in METHODS if m in args.methods and m in teachers] + list(args.arms)
    methods += [m for m in METHODS if m in args.methods and m not in teachers]
    runs = []
    for seed in settings.seeds:  # seed by seed: an interrupted study has whole seeds done
        start = {k: v for k, v in vars(settings).items() if k not in ("seeds", "steps", "batch_size", "lr", "warmup_steps", "every", "lora", "demonstration")}
        baselines = out / "baselines" / f"seed{seed}" / digest([start, task.read_text()])
        for method in methods:
            run_dir = out / "runs" / method / f"seed{seed}"
            teacher = specs[method].teacher
            teacher_model = out / "runs" / teacher / f"seed{seed}" / "model" if teacher else None
            export = method in teachers or args.export_models
            method_task = offline_task_config(settings, seed, out) if specs[method].offline else tasks[method]
            command = run_command(settings, method, method_task, seed, run_dir, teacher_model, export, baselines, specs)
            runs.append(Run("arithmetic", method, seed, run_dir, command))
    command_line = shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else [__file__, *argv])])
    print(f"{len(runs)} runs into {out}", flush=True)

    def measured(result: dict) -> str:
        curves = result["curves"]
        return (
            f"task accuracy {curves['task_accuracy'][0]:.3f} -> {curves['task_accuracy'][-1]:.3f}, "
            f"GK {curves['gk_accuracy'][0]:.3f} -> {curves['gk_accuracy'][-1]:.3f}"
        )

    missing = run_in_order(
        runs, args.skip_existing, summarise_run, teacher_of=lambda method: specs[method].teacher,
        label=lambda run: f"{run.method} seed {run.seed}", measured=measured,
        after_each=lambda: (write_items(runs, out / "items", settings, command_line, specs), write_report(runs, out, settings, command_line, specs)),
    )  # fmt: skip
    print(f"report: {out / 'report.md'}; per checkpoint: {out / 'checkpoints.csv'}; charts: frontier.png, curves.png, memory.png in {out}")
    print(f"per-item results, the report's whole input: {out / 'items'} (rebuild: benchmarks/forgetting_report.py {out / 'items'})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
