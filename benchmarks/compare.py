"""Every method from the same starting model on the same budget, over several seeds: held-out
accuracy, forgetting and cost side by side, in one command.

    .venv/bin/python benchmarks/compare.py                                  # the full default (below)
    .venv/bin/python benchmarks/compare.py --skip-existing                  # resume an interrupted one
    .venv/bin/python benchmarks/compare.py --methods sft grpo --seeds 0 --steps 10 --out runs/cmp_small
    .venv/bin/python benchmarks/compare.py --tasks arithmetic gsm8k=my_gsm8k_data.yaml
    .venv/bin/python benchmarks/compare.py --smoke --out /tmp/cmp           # tiny random model, a minute or two

Every run is `lit-posttrain fit` in a subprocess, with the method's shipped config and, the same
for all: the starting model (LoRA r16 as the configs have it), the task and its held-out split,
`--steps` optimizer steps of `--batch-size` prompts, the generation limit, and the seed (which
also seeds the data order). What stays each method's own is what its config chose: learning rate,
group size, K, temperatures (configs/sft.yaml's own task, 2-digit sums, is replaced like the
others' by the comparison's). OPD distils twice: `opd` from the GRPO model of the same seed and
task, `opd_sft` from the SFT model (the distillation study's comparison: does the student keep an
SFT teacher's score while forgetting less?). SePT offline is SePT with
`RolloutRefresh(every_n_steps: null)` (every training prompt sampled once, before training, at the
starting temperature). The configs' own Evaluation callbacks are replaced by
callbacks/evaluation.yaml and callbacks/forgetting.yaml at `every_n_steps: null`: measured once
before training and once after it; SePT online's also at the sampling temperatures
SWEPT_TEMPERATURES (its claim is against the untrained model at its best temperature). Every run
of a task and seed starts from the same model, so the measurement before training is made by the
seed's first run and read by the others (the callbacks' `baseline_cache`, under
<out>/baselines/; a fingerprint checks that the start is the same).

A task other than the built-in arithmetic is a YAML file with a `data:` section (as in README,
"Choosing the data"), named on the command line as NAME=FILE; it is passed to every run as a
second `--config`, so paths inside it are read from the current directory. SFT, OTR and HPT need
demonstrations in it.

Written to --out: `runs/<task>/<method>/seed<S>/` (the run's logs and charts, `output.log`, the
exported model, and `result.json`, written atomically when the run has finished: --skip-existing
reuses it when the run's command is unchanged), `results.csv` (one row per run), `summary.csv`
(one row per task and method: mean, std, min, max over seeds), `RESULTS.md` (machine, command and
tables) and `comparison_<task>.png`.

Time. The full default is 21 runs (7 methods x 3 seeds) of 16 steps of 8 prompts, each measured
before and after training on 48 held-out examples (greedy and 4 samples), 64 general-knowledge
items and 8 KL prompts; the script prints the time left after every run. On a 2-core AMD EPYC with
AVX2 and no native bf16 (float32 weights), nothing else running: 59.5 minutes on 2026-12-01 with
the start read from the cache (before it, every run measuring the start itself: 59 minutes on
2026-11-24, 63.6 on the morning of 2026-12-01); `opd_sft`'s 3 runs add 11. On the AMX-BF16
machine of benchmarks/README.md, whose GRPO step is 2.5 s, the same command should take well under
that (not measured).
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
from compare_report import Run, cell, dtype_args, run_in_order, write_atomically, write_charts, write_tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lit_posttrain, when run from a checkout that is not installed
PROBE_SET = "general_knowledge"  # the set callbacks/forgetting.yaml probes


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a shipped config and what this comparison adds to it."""

    config: str
    extra_args: tuple[str, ...] = ()
    teacher: str | None = None  # the method whose model (same task and seed) teaches this one
    evaluation_args: tuple[str, ...] = ()  # settings of this method's Evaluation callback
    default: bool = True  # run unless --methods names others


# SePT's claim is against the untrained model at its best temperature: SePT online's runs also
# evaluate at these (before training: the untrained model; after: SePT's).
SWEPT_TEMPERATURES = (0.25, 0.5, 0.75)

METHODS = {  # in run order: a teacher before its students
    "sft": Method("configs/sft.yaml"),
    "grpo": Method("configs/grpo.yaml"),
    "opd": Method("configs/opd.yaml", teacher="grpo"),
    # The distillation study's comparison, an SFT teacher; named in --methods to run it (3 more
    # runs, about 11 minutes here: the default stays as close to the hour as it can).
    "opd_sft": Method("configs/opd.yaml", teacher="sft", default=False),
    "otr": Method("configs/otr.yaml"),
    "sept_online": Method("configs/sept.yaml", evaluation_args=("--trainer.callbacks.temperatures", json.dumps(SWEPT_TEMPERATURES))),
    "sept_offline": Method(
        "configs/sept.yaml",
        ("--model.init_args.rollouts", json.dumps({"every_n_steps": None})),
    ),
    "hpt": Method("configs/hpt.yaml"),
}

# The two budgets. Explicit options override either; the smoke profile is what the test runs.
PROFILES = {
    "full": dict(
        model="builtin:smollm2-135m-instruct", dtype="auto", seeds=[0, 1, 2], steps=16, batch_size=8, max_new_tokens=8,
        eval_examples=48, probe_items=64, kl_prompts=8, num_train=320, num_eval=100,
    ),
    "smoke": dict(
        model="tiny-random-llama", dtype="float32", seeds=[0], steps=2, batch_size=4, max_new_tokens=4,
        eval_examples=8, probe_items=8, kl_prompts=2, num_train=16, num_eval=8,
    ),
}


OPTIONS = {  # what each budget setting means, for --help
    "model": "starting model source (README, 'Choosing the model')",
    "dtype": "weight dtype; auto: bfloat16 where the hardware runs it natively (training in bf16-mixed there, float32 masters for full fine-tuning), else float32; float32: float32 throughout (precision 32-true)",
    "seeds": "one run of every method per seed; the seed also sets the data order",
    "steps": "optimizer steps per run",
    "batch_size": "prompts per optimizer step",
    "max_new_tokens": "generation limit, in training and evaluation alike",
    "eval_examples": "held-out examples evaluated (greedy and pass@k) before and after training",
    "probe_items": "general-knowledge items probed, evenly spaced over the set's topics",
    "kl_prompts": "probe questions the KL to the starting model is measured along",
    "num_train": "training problems of the built-in arithmetic task",
    "num_eval": "held-out problems of the built-in arithmetic task (the first --eval-examples are evaluated)",
}


@dataclass(frozen=True)
class Settings:
    model: str
    dtype: str
    seeds: list[int]
    steps: int
    batch_size: int
    max_new_tokens: int
    eval_examples: int
    probe_items: int
    kl_prompts: int
    num_train: int
    num_eval: int


# --- one run -------------------------------------------------------------------------------------


def run_command(
    settings: Settings, method: str, task_config: Path, probes: Path, seed: int, run_dir: Path, teacher: Path | None,
    merge: bool, baselines: Path,
) -> list[str]:  # fmt: skip
    from lit_posttrain.callbacks.cadence import digest

    spec = METHODS[method]
    # Every method of a task and seed starts from the same model: the first run measures it before
    # training and the others read that (the files' fingerprints check it is the same start).
    # Another Evaluation setting (SePT's temperatures) is another measurement, in its own file.
    evaluation_cache = baselines / (f"evaluation-{digest(spec.evaluation_args)}.json" if spec.evaluation_args else "evaluation.json")
    engine = {"class_path": "lit_posttrain.rollout.HFEngine", "init_args": {"max_new_tokens": settings.max_new_tokens}}
    command = [
        sys.executable, "-m", "lit_posttrain.cli", "fit",
        "--config", str(ROOT / spec.config), "--config", str(task_config),
        "--seed_everything", str(seed), "--data.seed", str(seed),
        "--model.init_args.model", settings.model, *dtype_args(settings.dtype),
        # One generation limit for every method, in training and in evaluation alike.
        "--model.init_args.engine", json.dumps(engine),
        # A student needs its teacher as a full model; the others keep only their small adapters.
        f"--model.init_args.lora.merge_on_save={str(merge).lower()}",
        "--data.batch_size", str(settings.batch_size), "--trainer.max_steps", str(settings.steps),
        "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.logger.init_args.name", "", "--trainer.logger.init_args.version", "",
        # Replace the configs' own Evaluation (each at its own cadence): measure before and after only.
        "--trainer.callbacks", "[]",
        "--trainer.callbacks+", str(ROOT / "callbacks/evaluation.yaml"), "--trainer.callbacks.every_n_steps", "null",
        "--trainer.callbacks.max_examples", str(settings.eval_examples), *spec.evaluation_args,
        "--trainer.callbacks.baseline_cache", str(evaluation_cache),
        "--trainer.callbacks+", str(ROOT / "callbacks/forgetting.yaml"), "--trainer.callbacks.every_n_steps", "null",
        "--trainer.callbacks.probe_sets", json.dumps([str(probes)]), "--trainer.callbacks.kl_prompts", str(settings.kl_prompts),
        "--trainer.callbacks.baseline_cache", str(baselines / "forgetting.json"),
        *spec.extra_args,
        "--export_to", str(run_dir / "model"),
    ]  # fmt: skip
    if teacher is not None:
        command += ["--model.init_args.teacher", str(teacher)]
    return command


def read_series(metrics_csv: Path) -> dict[str, list[float]]:
    """`metric -> values in logged order` from the CSV logger's file."""
    series: dict[str, list[float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("step", "epoch") and value:
                    series.setdefault(key, []).append(float(value))
    return series


def summarise_run(series: dict[str, list[float]], wall_s: float, output: str) -> dict[str, float | None]:
    """The comparison's numbers for one run, from its metrics.csv and its printed run summary."""

    def first(key: str) -> float | None:
        return series[key][0] if key in series else None

    def last(key: str) -> float | None:
        return series[key][-1] if key in series else None

    def total(*keys: str) -> float | None:
        present = [sum(series[k]) for k in keys if k in series]
        return sum(present) if present else None

    probe = f"forget/{PROBE_SET}"
    result: dict[str, float | None] = {
        "steps": float(len(series.get("train/loss", []))),
        "accuracy_start": first("eval/accuracy"),
        "accuracy_end": last("eval/accuracy"),
        "right_to_wrong": last("eval/right_to_wrong"),
        "wrong_to_right": last("eval/wrong_to_right"),
        "kl_end": last("forget/kl"),
        "probe_accuracy_start": first(f"{probe}/accuracy"),
        "probe_accuracy_end": last(f"{probe}/accuracy"),
        "probe_nll_start": first(f"{probe}/nll"),
        "probe_nll_end": last(f"{probe}/nll"),
        "probe_right_to_wrong": last(f"{probe}/right_to_wrong"),
    }
    start, end = result["probe_accuracy_start"], result["probe_accuracy_end"]
    result["probe_accuracy_change"] = end - start if start is not None and end is not None else None
    for key in sorted(k for k in series if k.startswith("eval/pass@")):  # pass@k, and pass@1_T<t> where swept
        result[f"{key.removeprefix('eval/')}_start"], result[f"{key.removeprefix('eval/')}_end"] = first(key), last(key)
    # Tokens through each model's forward passes in training, as the methods log them.
    for kind in ("prompts", "generated", "trained", "teacher", "reference"):
        result[f"tokens_{kind}"] = total(f"tokens/{kind}")
    counted = [result[f"tokens_{kind}"] for kind in ("prompts", "generated", "trained", "teacher", "reference")]
    result["tokens_processed"] = sum(v for v in counted if v is not None)
    # Time: the whole process; fit (from the CLI's run summary, whole seconds); its measuring share.
    summary = re.search(r"Run summary: \d+ optimizer steps in (\d+) s", output)
    fit_s = float(summary.group(1)) if summary else None
    measure_s = total("eval/time_s", "time/forget_kl_s", f"time/forget_{PROBE_SET}_s") or 0.0
    result |= {"wall_s": wall_s, "measure_s": measure_s, "train_s": fit_s - measure_s if fit_s is not None else None}
    return result


def summarise_folder(run_dir: Path, wall_s: float) -> dict[str, float | None]:
    return summarise_run(read_series(run_dir / "metrics.csv"), wall_s, (run_dir / "output.log").read_text())


# --- the command ---------------------------------------------------------------------------------


def task_configs(specs: list[str], settings: Settings, out: Path) -> dict[str, Path]:
    """`name -> data config file`: the built-in arithmetic task is written out, the others are the user's."""
    configs = {}
    for spec in specs:
        if spec == "arithmetic":
            data = {
                "task": {
                    "class_path": "lit_posttrain.data.arithmetic.Arithmetic",
                    # The shipped RL configs' task: sums of two numbers 0..20.
                    "init_args": {"max_operand": 20, "num_train": settings.num_train, "num_eval": settings.num_eval},
                },
                # One limit for every method (sft.yaml and otr.yaml set 128 for the prompt): the
                # tiny model's character tokenizer makes the one-shot prompt ~200 tokens long.
                "max_prompt_tokens": 512,
                "max_completion_tokens": 8,
            }
            path = out / "tasks" / "arithmetic.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, yaml.safe_dump({"data": data}, sort_keys=False))
            configs["arithmetic"] = path
            continue
        name, sep, file = spec.partition("=")
        if not sep or not re.fullmatch(r"[\w.-]+", name) or not file:
            raise SystemExit(f"--tasks: {spec!r} is neither 'arithmetic' nor NAME=FILE (NAME of letters, digits, '_', '.', '-')")
        path = Path(file).resolve()
        if not path.is_file():
            raise SystemExit(f"--tasks {name}: {path} does not exist")
        content = yaml.safe_load(path.read_text())
        if not isinstance(content, dict) or "task" not in (content.get("data") or {}):
            raise SystemExit(f"--tasks {name}: {path} needs a `data:` section with a `task:` (README, 'Choosing the data')")
        configs[name] = path
    return configs


def probe_subset(items: int, out: Path) -> Path:
    """`items` of the built-in general-knowledge set, evenly spaced: the file is sorted by topic, so
    its first items would all be geography. Named like the set, so it is logged under the same name."""
    from lit_posttrain.data.multiple_choice import BUILTIN_PROBES

    lines = BUILTIN_PROBES[PROBE_SET].read_text().splitlines()
    chosen = [lines[i * len(lines) // items] for i in range(items)] if items < len(lines) else lines
    path = out / "probes" / f"{PROBE_SET}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "\n".join(chosen) + "\n")
    return path


def describe(settings: Settings, command_line: str) -> list[str]:
    """What RESULTS.md says the comparison held equal and measured."""
    samples = yaml.safe_load((ROOT / "callbacks" / "evaluation.yaml").read_text())["init_args"]["samples"]
    return [
        f"- Command: `{command_line}`",
        f"- The same for every method: model `{settings.model}` (dtype {settings.dtype}; LoRA r16 as the shipped configs "
        f"have it), {settings.steps} optimizer steps of {settings.batch_size} prompts, at most {settings.max_new_tokens} "
        f"new tokens per completion, seeds {' '.join(map(str, settings.seeds))} (each seeding the data order too).",
        f"- Measured before and after training: greedy accuracy and pass@k ({samples} samples, callbacks/evaluation.yaml) "
        f"on the first {settings.eval_examples} held-out examples; KL(policy || start) per token along the start "
        f"model's continuations of {settings.kl_prompts} probe questions; accuracy on {settings.probe_items} items of "
        "the built-in general-knowledge (GK) set, evenly spaced over its topics, scored by option log-likelihood.",
    ]


def method_notes(methods: list[str]) -> list[str]:
    """RESULTS.md's notes: how each method was run, and what its columns count."""
    notes = []
    for method in methods:
        spec = METHODS[method]
        extra = f" with `{shlex.join(spec.extra_args)}`" if spec.extra_args else ""
        teacher = f"; teacher: the `{spec.teacher}` model of the same task and seed" if spec.teacher else ""
        evaluation = f"; its Evaluation with `{shlex.join(spec.evaluation_args)}`" if spec.evaluation_args else ""
        notes.append(f"- `{method}`: `{spec.config}`{extra}{teacher}{evaluation}.")
    return notes + [
        "- Tokens, summed over the run's training steps as the methods log them (`tokens/*`): generated = sampled "
        "tokens; trained = what the policy's loss forward ran on (prompt + demonstration for SFT-style losses; each "
        "trained group's prompt once + its completions for sampled ones); processed = every forward in training: "
        "prompts prefilled for sampling + generated + trained + the teacher's (OPD) + the reference's (a KL term). "
        "The offline SePT ablation samples every training prompt once before its first step, counted there.",
        "- Right-to-wrong: held-out examples (or GK items) right before training and wrong after it.",
        "- Wall time: the whole `lit-posttrain fit` process (start-up, model load, measurement, training, export). "
        "Training time: `fit` as the CLI's run summary times it (model load, training, export; whole seconds) less the "
        "evaluation and probe time the callbacks log.",
    ]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps, 1 seed: the test's settings")
    defaults = [name for name, spec in METHODS.items() if spec.default]
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=defaults, help=f"methods to run (default: {' '.join(defaults)})")
    parser.add_argument("--tasks", nargs="+", default=["arithmetic"], help="'arithmetic' and/or NAME=FILE, FILE a YAML with a data: section")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare", help="output folder (default: runs/compare)")
    parser.add_argument("--skip-existing", action="store_true", help="reuse every finished run whose command is unchanged")
    for name, value in PROFILES["full"].items():
        kind = type(value[0]) if isinstance(value, list) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, nargs="+" if isinstance(value, list) else None,
                            help=f"{OPTIONS[name]} (default {value}; --smoke: {PROFILES['smoke'][name]})")  # fmt: skip
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "full"]
    settings = Settings(**{name: getattr(args, name) if getattr(args, name) is not None else value for name, value in profile.items()})
    for method in args.methods:
        teacher = METHODS[method].teacher
        if teacher and teacher not in args.methods:
            parser.error(f"{method}'s teacher is the {teacher} model of the same seed: add {teacher} to --methods "
                         "(with --skip-existing a finished one is reused)")  # fmt: skip
    too_small = {name: value for name, value in vars(settings).items() if isinstance(value, int) and value < 1}
    if too_small:
        parser.error(f"every count must be at least 1, got {too_small}")
    return args, settings


def main(argv: list[str] | None = None) -> int:
    from lit_posttrain.callbacks.cadence import digest

    args, settings = parse_args(argv)
    out = args.out.resolve()
    tasks = task_configs(args.tasks, settings, out)
    probes = probe_subset(settings.probe_items, out)
    methods = [m for m in METHODS if m in args.methods]  # run order: teachers first
    # Whether or not its student runs this time: a resumed comparison that adds it reuses the run.
    teachers = {spec.teacher for spec in METHODS.values()}
    runs = []
    for task, config in tasks.items():
        for seed in settings.seeds:  # seed by seed: an interrupted comparison has whole seeds done
            for method in methods:
                run_dir = out / "runs" / task / method / f"seed{seed}"
                teacher = METHODS[method].teacher
                teacher_model = out / "runs" / task / teacher / f"seed{seed}" / "model" if teacher else None
                # Named by what decides the start's measurement, so that a comparison with other settings in
                # the same --out measures its own (the files' fingerprints would refuse the old ones).
                start = {k: v for k, v in vars(settings).items() if k not in ("seeds", "steps", "batch_size")}
                baselines = out / "baselines" / task / f"seed{seed}" / digest([start, config.read_text()])
                command = run_command(
                    settings, method, config, probes, seed, run_dir, teacher_model, merge=method in teachers, baselines=baselines
                )
                runs.append(Run(task, method, seed, run_dir, command))
    command_line = shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else [__file__, *argv])])
    setup, notes = describe(settings, command_line), method_notes(methods)
    print(f"{len(runs)} runs into {out}", flush=True)

    def measured(result: dict) -> str:
        shown = {k: cell([v], 3) if v is not None else "-" for k, v in result.items()}
        return f"accuracy {shown['accuracy_start']} -> {shown['accuracy_end']}, KL {shown['kl_end']}"

    missing = run_in_order(
        runs, args.skip_existing, summarise_folder, teacher_of=lambda method: METHODS[method].teacher,
        label=lambda run: f"{run.task} {run.method} seed {run.seed}", measured=measured,
        after_each=lambda: write_tables(runs, out, setup, notes),
    )  # fmt: skip
    for path in write_charts(runs, out):
        print(f"chart: {path}")
    print(f"table: {out / 'RESULTS.md'}; per run: {out / 'results.csv'}; over seeds: {out / 'summary.csv'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
