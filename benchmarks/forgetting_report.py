"""The analysis of benchmarks/forgetting.py: finished runs in; `checkpoints.csv`, `report.md`,
`curves.png`, `frontier.png` and `memory.png` out. Every number is read from the runs' per-item
results, none is typed in. The report is rebuilt from a folder of them alone (the study writes
one, `items/`; the committed study's is benchmarks/forgetting_items/):

    .venv/bin/python benchmarks/forgetting_report.py benchmarks/forgetting_items --out /tmp/report

Statistics (benchmarks/clustered.py): a GK difference over several seeds is tested with the item
as the unit (sign flips of each item's seed-averaged difference; 95% bootstrap over items), so
neither a start shared by the seeds nor seeds that flip the same items counts as more evidence;
one run alone gets the exact McNemar test (benchmarks/paired.py). Every test of the report's
claims is listed at the end with its Holm-adjusted p (family-wise 5%)."""

from __future__ import annotations

import argparse
import json
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from clustered import ClusteredDifference, clustered_difference, crossing, holm, interpolate
from compare_report import Run, cell, git_revision, machine, write_atomically, write_csv
from paired import PairedDifference, paired_difference

FRAMING_ORDER = ("bare", "english", "german", "any_form", "per_token", "lettered")  # benchmarks/framings.py's
FRAMING_LABELS = {
    "bare": "bare text (the probe)", "english": '"The answer is X."', "german": '"Die Antwort ist X."',
    "any_form": "the three forms' summed probability", "per_token": "bare, per token", "lettered": "lettered A-D",
}  # fmt: skip
KLS = (  # (curve, what it is), the candidates for predicting the GK drop
    ("task_forward_kl", "KL(start || policy) on task prompts (RL's Razor)"),
    ("task_kl", "KL(policy || start) on task prompts"),
    ("probe_forward_kl", "KL(start || policy) on GK questions"),
    ("probe_kl", "KL(policy || start) on GK questions (the probe KL logged by default)"),
)


def gk_topics(items: int) -> list[str] | None:
    """Each probed item's topic, in the probe's order (the first `items` of the built-in set)."""
    from lit_posttrain.data.multiple_choice import BUILTIN_PROBES

    lines = BUILTIN_PROBES["general_knowledge"].read_text().splitlines()
    return [json.loads(line)["topic"] for line in lines[:items]] if items <= len(lines) else None


def done(runs: list[Run]) -> list[Run]:
    return [run for run in runs if run.result is not None]


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in done(runs):
        groups.setdefault(run.method, []).append(run)
    return groups


def gk(run: Run, x: float = -1) -> np.ndarray:
    """A run's per-item GK outcomes at checkpoint `x` (-1: the last; fractional: interpolated)."""
    items_KN = run.result["gk_items"]
    return np.asarray(items_KN[int(x)], dtype=float) if float(x).is_integer() else interpolate(x, items_KN)


def clustered(after: list[np.ndarray], before: list[np.ndarray]) -> ClusteredDifference:
    """`after - before` over the same items, one row per seed, the item the unit (clustered.py)."""
    return clustered_difference(np.stack(after), np.stack(before))


def end_vs_start(run: Run) -> PairedDifference:
    items = run.result["gk_items"]
    return paired_difference(items[0], items[-1])


def checkpoint_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for run in done(runs):
        curves = run.result["curves"]
        for i, step in enumerate(curves["step"]):
            row = {"method": run.method, "seed": run.seed, "step": step}
            row |= {name: values[i] for name, values in curves.items() if name != "step"}
            row["gk_change"] = curves["gk_accuracy"][i] - curves["gk_accuracy"][0]
            rows.append(row)
    return rows


def correlation(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(Pearson r, Spearman rho); nan where a side is constant or there are fewer than 3 points."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    try:
        return statistics.correlation(xs, ys), statistics.correlation(ranks(xs), ranks(ys))
    except statistics.StatisticsError:
        return float("nan"), float("nan")


def rose(run: Run) -> bool:
    """Whether the run's task accuracy rose above its start at some checkpoint: one that never did
    has no accuracy to be matched at."""
    accuracy = run.result["curves"]["task_accuracy"]
    return max(accuracy[1:], default=0.0) > accuracy[0]


def crossing_steps(runs_at: list[tuple[Run, float]]) -> str:
    """The training steps, one per run, of its fractional checkpoints."""
    return " ".join(f"{float(interpolate(x, run.result['curves']['step'])):.1f}" for run, x in runs_at)


def matched_accuracy(groups: dict[str, list[Run]]) -> tuple[float | None, dict[str, list[tuple[int, float]]], list[str]]:
    """The highest task accuracy that every run which improved on its start reached at some
    checkpoint; per method, each such run's (seed, fractional checkpoint) where its accuracy,
    interpolated between checkpoints, first reaches it; and the runs left out, which never rose
    above their start (no accuracy to match them at)."""
    improved, left_out = [], []
    for method, runs in groups.items():
        for run in runs:
            (improved if rose(run) else left_out).append((method, run))
    if not improved:
        return None, {}, [f"{method} seed {run.seed}" for method, run in left_out]
    level = min(max(run.result["curves"]["task_accuracy"][1:]) for _, run in improved)
    matched: dict[str, list[tuple[int, float]]] = {}
    for method, run in improved:
        matched.setdefault(method, []).append((run.seed, crossing(level, run.result["curves"]["task_accuracy"])))
    return level, matched, [f"{method} seed {run.seed}" for method, run in left_out]


def memory_line(run: Run) -> str:
    points = run.result["memory_gib"]
    if not points:
        return f"| {run.method} | {run.seed} | - | - | - | - |"
    values = [v for _, v in points]
    # After the first checkpoint: the first probe loads the reference and the probes' rows.
    settled = [v for step, v in points if step > run.result["curves"]["step"][1]] if len(run.result["curves"]["step"]) > 1 else values
    growth = settled[-1] - settled[0] if len(settled) > 1 else 0.0
    return f"| {run.method} | {run.seed} | {values[0]:.2f} | {max(values):.2f} | {values[-1]:.2f} | {growth:+.3f} |"


def matched_section(groups: dict[str, list[Run]], tests: list, which: str) -> list[str]:
    """The report's section on GK change at matched task accuracy over `groups`, its tests appended
    to `tests`."""
    level, matched, left_out = matched_accuracy(groups)
    if level is None:
        return ["", "## At matched task accuracy", "", "No run rose above its start: there is no accuracy to match the methods at."] if groups else []
    lines = [
        "",
        f"## At matched task accuracy ({level:.3f}: {which})",
        "",
        "Each run where its task accuracy, interpolated linearly between checkpoints, first reaches it; its GK "
        "items interpolated the same way (fractional outcomes)"
        + (f"; left out, never above their start: {', '.join(left_out)}." if left_out else "."),
        "",
        "| method | step (per seed) | GK change [95% CI] | p | detectable |",
        "|---|---|---|---|---|",
    ]
    for method, entries in matched.items():
        by_seed = {run.seed: run for run in groups[method]}
        runs_at = [(by_seed[seed], x) for seed, x in entries]
        test = clustered([gk(run, x) for run, x in runs_at], [gk(run, 0) for run, _ in runs_at])
        tests.append((f"{method}: GK change at matched task accuracy {level:.3f}", test))
        lines.append(f"| {method} | {crossing_steps(runs_at)} | {test.cell()} | {test.p_value:.2g} | {test.detectable:.3f} |")
    return lines


def pairwise_matched_section(arms: dict[str, list[Run]], tests: list, against: str) -> list[str]:
    """Every learning-rate arm against every `against` arm (a method-name prefix: "sft@") at the
    highest task accuracy that the runs of both with a seed in common reached, seeds paired: one
    level per pair, so that an arm that learned little lowers no other pair's level. The
    differences join `tests`."""
    baselines = [m for m in arms if m.startswith(against)]
    rows = []
    for method in [m for m in arms if m not in baselines]:
        for baseline in baselines:
            runs = {m: {run.seed: run for run in arms[m]} for m in (method, baseline)}
            seeds = sorted(set(runs[method]) & set(runs[baseline]))
            pair = [runs[m][s] for m in (method, baseline) for s in seeds]
            if not seeds or not all(map(rose, pair)):
                continue
            level = min(max(run.result["curves"]["task_accuracy"][1:]) for run in pair)
            at = {m: [(runs[m][s], crossing(level, runs[m][s].result["curves"]["task_accuracy"])) for s in seeds] for m in (method, baseline)}
            own = {m: clustered([gk(run, x) for run, x in at[m]], [gk(run, 0) for run, _ in at[m]]) for m in at}
            test = clustered([gk(run, x) for run, x in at[method]], [gk(run, x) for run, x in at[baseline]])
            tests.append((f"{method} against {baseline} at matched task accuracy {level:.3f}", test))
            steps = {m: crossing_steps(at[m]) for m in at}
            rows.append(
                f"| {method} | {baseline} | {' '.join(map(str, seeds))} | {level:.3f} | {steps[method]} / {steps[baseline]} | "
                f"{own[method].cell()} | {own[baseline].cell()} | {test.cell()} | {test.p_value:.2g} |"
            )
    if not rows:
        return []
    return [
        "",
        f"## Learning-rate arms against the `{against}` arms at matched task accuracy",
        "",
        "Each pair at the highest task accuracy that every run of both with a seed in common reached (its own level: "
        "an arm that learned little lowers no other pair's), each run where its accuracy, interpolated between "
        "checkpoints, first reaches it; GK items interpolated the same way; seeds paired, the item the unit.",
        "",
        "| arm | against | seeds | task accuracy matched | step (per seed): arm / against | arm's GK change [95% CI] | "
        "its GK change | GK difference [95% CI] | p |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


MODEL_PATH = re.compile(r"runs/(?P<method>[^/]+)/seed(?P<seed>\d+)/model/?$")


def framed_runs(framings: dict) -> tuple[dict | None, dict[tuple[str, int], dict]]:
    """`framings.json`'s models (benchmarks/framings.py) as the start's framings and, by (method,
    seed), each final model's: a study's exported model lies at `.../runs/<method>/seed<S>/model`."""
    start, by_run = None, {}
    for label, scored in framings.get("models", {}).items():
        if label.startswith("builtin:"):
            start = scored
        elif found := MODEL_PATH.search(label):
            by_run.setdefault((found["method"], int(found["seed"])), scored)
    return start, by_run


def framings_section(groups: dict[str, list[Run]], framings: dict) -> list[str]:
    """The style control's re-scoring of the final models (benchmarks/framings.py), each framing
    against the start's same framing, the seeds that were scored clustered as everywhere else; its
    own family of tests, Holm-corrected within it."""
    start, by_run = framed_runs(framings)
    if start is None or not by_run:
        return []
    names = [f for f in FRAMING_ORDER if f in start]
    scored_rows = []  # (method, seeds scored, their task accuracies, per framing its test or None)
    for method, group in groups.items():
        runs = [run for run in group if (method, run.seed) in by_run]
        if not runs:
            continue
        scored = [by_run[(method, run.seed)] for run in runs]
        tests = [
            clustered([np.asarray(s[name], dtype=float) for s in scored], [np.asarray(start[name], dtype=float)] * len(scored))
            if all(name in s for s in scored) else None
            for name in names
        ]  # fmt: skip
        scored_rows.append((method, [run.seed for run in runs], [run.result["curves"]["task_accuracy"][-1] for run in runs], tests))
    adjusted = iter(holm([test.p_value for *_, tests in scored_rows for test in tests if test is not None]))
    rows = [
        f"| {method} | {' '.join(map(str, seeds))} | {cell(task, 2)} | "
        + " | ".join("-" if test is None else f"{test.difference:+.3f} (p {test.p_value:.2g}, Holm {next(adjusted):.2g})" for test in tests)
        + " |"
        for method, seeds, task, tests in scored_rows
    ]
    return [
        "",
        "## The answers' form: final models scored under other framings",
        "",
        "Each final model that `benchmarks/framings.py` scored (`framings.json` beside the items) on the GK items, "
        "with each option written as another reply: each framing's change against the start's same framing, "
        "the seeds scored clustered by item (p from random sign flips of the items, as above). These tests are their own family, Holm-"
        "corrected among themselves. A drop that holds in every framing is lost knowledge; one that vanishes in "
        "the form the model was trained to answer in is the answers' form.",
        "",
        "| method | seeds scored | task accuracy, end | " + " | ".join(FRAMING_LABELS[f] for f in names) + " |",
        "|---|---|---|" + "---|" * len(names),
        "| start | | | " + " | ".join(f"{np.mean(start[f]):.3f}" for f in names) + " |",
        *rows,
    ]


def markdown(runs: list[Run], settings, command_line: str, methods: dict, provenance: dict | None = None, framings: dict | None = None) -> str:
    groups = by_method(runs)
    first = next(iter(done(runs)), None)
    items = len(first.result["gk_items"][0]) if first else 0
    provenance = provenance or {"machine": machine(), "code": git_revision()}
    tests: list[tuple[str, ClusteredDifference]] = []  # the claims' tests, corrected together at the end
    lines = [
        "# Forgetting study",
        "",
        f"Written by `benchmarks/forgetting_report.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the runs' per-item results.",
        "",
        f"- Command: `{command_line}`",
        f"- The same for every method: model `{settings.model}` (dtype {settings.dtype}, "
        f"{'LoRA r16' if settings.lora else 'full fine-tuning'}), learning rate {settings.lr:g} after {settings.warmup_steps} warm-up steps, {settings.steps} optimizer "
        f"steps of {settings.batch_size} prompts, at most {settings.max_new_tokens} new tokens, seeds "
        f"{' '.join(map(str, settings.seeds))}; measured every {settings.every} steps: greedy accuracy on "
        f"{settings.eval_examples} held-out sums, {items} GK items, KL both ways on {settings.kl_prompts} GK questions "
        f"and {settings.task_kl_prompts} task prompts.",
        *[f"- `{m}`: learning rate {learning_rate_of(m, methods, settings):g}, measured every {getattr(methods[m], 'every', None) or settings.every} steps (an arm of the learning-rate frontier)."
          for m in groups if getattr(methods[m], "lr", None)],  # fmt: skip
        f"- Machine: {provenance['machine']}",
        f"- Code: commit {provenance['code']}",
        "",
        "GK differences over several seeds: after - before over the same items, each item's difference averaged "
        "over the seeds and the item the unit: 95% bootstrap interval over items in brackets, p from random sign "
        "flips of the items (a start shared by the seeds counts once; seeds flipping the same items add no "
        "evidence). `detectable`: the smallest difference these items detect (80% power, two-sided 5%). One run "
        "alone: exact McNemar. Other cells: mean ± std over seeds.",
        "",
        "## At the end of training",
        "",
        "| method | seeds | task accuracy, start | task accuracy, end | GK accuracy, start | GK accuracy, end | "
        "GK change [95% CI] | p | per seed | detectable | NLL of the right option, change | KL(start‖policy) task | "
        "KL(policy‖start) GK | wall (s) | measuring share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, group in groups.items():
        curves = [run.result["curves"] for run in group]
        test = clustered([gk(run) for run in group], [gk(run, 0) for run in group])
        tests.append((f"{method}: GK change, end against start", test))
        share = [run.result["measure_s"] / run.result["fit_s"] for run in group if run.result["fit_s"]]
        nll = [c["gk_nll"][-1] - c["gk_nll"][0] for c in curves if c["gk_nll"][-1] is not None]
        lines.append(
            f"| {method} | {len(group)} | {cell([c['task_accuracy'][0] for c in curves], 3)} | "
            f"{cell([c['task_accuracy'][-1] for c in curves], 3)} | {cell([c['gk_accuracy'][0] for c in curves], 3)} | "
            f"{cell([c['gk_accuracy'][-1] for c in curves], 3)} | {test.cell()} | {test.p_value:.2g} | "
            f"{' '.join(f'{d:+.3f}' for d in test.per_seed)} | {test.detectable:.3f} | {cell(nll, 3)} | "
            f"{cell([c['task_forward_kl'][-1] for c in curves if c['task_forward_kl'][-1] is not None], 3)} | "
            f"{cell([c['probe_kl'][-1] for c in curves if c['probe_kl'][-1] is not None], 3)} | "
            f"{cell([run.result['wall_s'] for run in group], 0)} | {cell(share, 2)} |"
        )
    lines += ["", "Per run, end against start:", "", "| method | seed | GK change [95% CI] | right-to-wrong | wrong-to-right | McNemar p |", "|---|---|---|---|---|---|"]
    for method, group in groups.items():
        for run in group:
            test = end_vs_start(run)
            lines.append(f"| {method} | {run.seed} | {test.cell()} | {test.right_to_wrong} | {test.wrong_to_right} | {test.p_value:.2g} |")

    topics = gk_topics(items) if items else None
    if topics:
        # Sums are what every method trains on: the set's arithmetic items can move with the task
        # itself, so the change is also given without them.
        keep = [i for i, topic in enumerate(topics) if topic != "arithmetic"]
        arithmetic = [i for i in range(items) if i not in set(keep)]
        lines += [
            "",
            f"GK change end against start, split by topic: the {len(arithmetic)} arithmetic items, and the other {len(keep)}.",
            "",
            "| method | arithmetic items [95% CI] | other items [95% CI] | p, other items |",
            "|---|---|---|---|",
        ]
        for method, group in groups.items():
            cells = [clustered([gk(run)[subset] for run in group], [gk(run, 0)[subset] for run in group]) if subset else None
                     for subset in (arithmetic, keep)]  # fmt: skip
            shown = [test.cell() if test else "-" for test in cells]
            lines.append(f"| {method} | {shown[0]} | {shown[1]} | {f'{cells[1].p_value:.2g}' if cells[1] else '-'} |")

    lines += matched_section(groups, tests, "the highest that every run which improved reached")
    arms = {m: g for m, g in groups.items() if getattr(methods.get(m), "lr", None)}
    lines += pairwise_matched_section(arms, tests, against="sft@")

    if "sft" in groups:
        lines += ["", "## Each method against SFT at the end (seeds paired, same items)", "",
                  "| method | GK difference to SFT [95% CI] | p | per seed |", "|---|---|---|---|"]  # fmt: skip
        sft = {run.seed: run for run in groups["sft"]}
        for method, group in groups.items():
            paired_runs = [run for run in group if run.seed in sft]
            if method != "sft" and paired_runs:
                test = clustered([gk(run) for run in paired_runs], [gk(sft[run.seed]) for run in paired_runs])
                tests.append((f"{method} against SFT, GK at the end", test))
                lines.append(f"| {method} | {test.cell()} | {test.p_value:.2g} | {' '.join(f'{d:+.3f}' for d in test.per_seed)} |")

    for method, group in groups.items():
        teacher = methods[method].teacher
        if teacher not in groups:
            continue
        teachers = {run.seed: run for run in groups[teacher]}
        pairs = [(run, teachers[run.seed]) for run in group if run.seed in teachers]
        lines += [
            "",
            f"## Distillation: `{method}` from the over-trained `{teacher}` model",
            "",
            "| seed | task accuracy: start, teacher, student | GK: start, teacher, student | student - teacher GK [95% CI], McNemar p | student - start GK [95% CI], McNemar p |",
            "|---|---|---|---|---|",
        ]
        for run, t in pairs:
            vs_teacher, vs_start = paired_difference(gk(t).tolist(), gk(run).tolist()), end_vs_start(run)
            sc, tc = run.result["curves"], t.result["curves"]
            lines.append(
                f"| {run.seed} | {sc['task_accuracy'][0]:.3f}, {tc['task_accuracy'][-1]:.3f}, {sc['task_accuracy'][-1]:.3f} | "
                f"{sc['gk_accuracy'][0]:.3f}, {tc['gk_accuracy'][-1]:.3f}, {sc['gk_accuracy'][-1]:.3f} | "
                f"{vs_teacher.cell()}, {vs_teacher.p_value:.2g} | {vs_start.cell()}, {vs_start.p_value:.2g} |"
            )
        if pairs:
            test = clustered([gk(run) for run, _ in pairs], [gk(t) for _, t in pairs])
            tests.append((f"{method} student against its {teacher} teacher, GK at the end", test))
            lines.append(f"| all, clustered | | | {test.cell()}, p {test.p_value:.2g} | |")

    lines += framings_section(groups, framings or {})

    rows = [row for row in checkpoint_rows(runs) if row["step"] > 0]
    if len(rows) >= 3:
        lines += [
            "",
            "## Which KL predicts the GK drop",
            "",
            f"Over every checkpoint after the start of every run ({len(rows)} points), and within each method: the "
            "correlation of the GK accuracy change with each KL to the start (negative: more KL, more forgetting). "
            "A correlation over all runs mixes the methods' differences with each method's own course; the "
            "within-method ones say whether the KL tracks forgetting along a run.",
            "",
            "| KL | Pearson r, all | Spearman rho, all | " + " | ".join(f"r within {m}" for m in groups) + " |",
            "|---|---|---|" + "---|" * len(groups),
        ]
        for name, label in KLS:
            points = [(row[name], row["gk_change"]) for row in rows if row[name] is not None]
            if len(points) >= 3:
                r, rho = correlation([x for x, _ in points], [y for _, y in points])
                within = []
                for method in groups:
                    own = [(row[name], row["gk_change"]) for row in rows if row["method"] == method and row[name] is not None]
                    r_own = correlation([x for x, _ in own], [y for _, y in own])[0] if len(own) >= 3 else float("nan")
                    within.append("-" if r_own != r_own else f"{r_own:+.2f}")  # nan: too few points, or a side constant
                lines.append(f"| {label} | {r:+.2f} | {rho:+.2f} | " + " | ".join(within) + " |")

    if tests:
        adjusted = holm([test.p_value for _, test in tests])
        lines += [
            "",
            "## Every test above, corrected for their number",
            "",
            f"{len(tests)} tests of the report's claims (clustered by item). Holm's adjustment keeps the chance of any "
            "false claim among them at 5%: a difference is established where its adjusted p <= 0.05.",
            "",
            "| test | difference [95% CI] | p | Holm-adjusted p | established |",
            "|---|---|---|---|---|",
        ]
        for (label, test), p in zip(tests, adjusted, strict=True):
            lines.append(f"| {label} | {test.cell()} | {test.p_value:.2g} | {p:.2g} | {'yes' if p <= 0.05 else 'no'} |")

    lines += [
        "",
        "## Memory and cost",
        "",
        "Resident memory of the training process (GiB): at its first step, the largest, at its last step, and the "
        "change from the first step after the first checkpoint to the last (flat: a few MB either way).",
        "",
        "| method | seed | first | max | last | growth after the first checkpoint |",
        "|---|---|---|---|---|---|",
        *(memory_line(run) for group in groups.values() for run in group),
        "",
        "Time per method (s, mean ± std over seeds): the whole process; fit as the run summary times it; the "
        "measuring callbacks (task evaluation, GK probe, KLs) inside it, and the probes alone.",
        "",
        "| method | wall | fit | measuring | forgetting probes |",
        "|---|---|---|---|---|",
    ]
    for method, group in groups.items():
        fit = [run.result["fit_s"] for run in group if run.result["fit_s"] is not None]
        lines.append(
            f"| {method} | {cell([r.result['wall_s'] for r in group], 0)} | {cell(fit, 0)} | "
            f"{cell([r.result['measure_s'] for r in group], 0)} | {cell([r.result['probe_s'] for r in group], 0)} |"
        )
    lines += ["", "## Methods", ""] + [f"- `{m}`: `{methods[m].config}`{'; ' + methods[m].note if methods[m].note else ''}." for m in groups]
    missing = [run for run in runs if run.status in ("failed", "skipped")]
    if missing:
        lines += ["", "## Runs without results", ""] + [f"- {r.method} / seed {r.seed}: {r.status}, see `{r.run_dir / 'output.log'}`" for r in missing]
    return "\n".join(lines) + "\n"


def mean_curve(group: list[Run], name: str) -> tuple[list[int], list[float]]:
    """The mean over seeds at each checkpoint step the seeds share."""
    steps = sorted(set.intersection(*(set(run.result["curves"]["step"]) for run in group)))
    values = []
    for step in steps:
        at = [run.result["curves"][name][run.result["curves"]["step"].index(step)] for run in group]
        values.append(statistics.fmean(at) if all(v is not None for v in at) else float("nan"))
    return steps, values


def saved(fig, axes, path: Path, legend_outside: bool = False) -> Path:
    """`fig` with a grid and legend on each of `axes` (right of the panel with `legend_outside`,
    where points fill every corner), written to `path` and closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if legend_outside else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def end_bars(ax, group: list[Run], mean_accuracy: float, color: str) -> ClusteredDifference:
    """At a method's end point: the seeds' task-accuracy range across, its 95% item-clustered GK
    interval up and down."""
    end = clustered([gk(run) for run in group], [gk(run, 0) for run in group])
    ends = [run.result["curves"]["task_accuracy"][-1] for run in group]
    ax.errorbar([mean_accuracy], [end.difference], yerr=[[end.difference - end.low], [end.high - end.difference]],
                xerr=[[mean_accuracy - min(ends)], [max(ends) - mean_accuracy]], color=color, capsize=3, linewidth=1.2)  # fmt: skip
    return end


def write_charts(runs: list[Run], out: Path) -> list[Path]:
    """`frontier.png` (task gain against GK change; forward KL against GK change), `curves.png`
    (each measurement over the steps) and `memory.png`: every seed's own points or lines, the
    method's mean over seeds bold, and at the frontier's end points their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    groups = by_method(runs)
    if not groups:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    starts = []
    for i, (method, group) in enumerate(groups.items()):
        color = f"C{i}"
        for run in group:  # every seed, its checkpoints after the start
            c = run.result["curves"]
            left.plot(c["task_accuracy"], [g - c["gk_accuracy"][0] for g in c["gk_accuracy"]], "-", color=color, alpha=0.25, linewidth=0.8)
            starts.append(c["task_accuracy"][0])
            kl = [(x, g - c["gk_accuracy"][0]) for x, g in zip(c["task_forward_kl"][1:], c["gk_accuracy"][1:], strict=True) if x is not None]
            right.scatter([x for x, _ in kl], [y for _, y in kl], color=color, s=16, label=method if run is group[0] else None)
        steps, accuracy = mean_curve(group, "task_accuracy")
        _, gk_mean = mean_curve(group, "gk_accuracy")
        left.plot(accuracy[1:], [g - gk_mean[0] for g in gk_mean[1:]], "-o", color=color, label=f"{method} (mean of {len(group)} seeds)", markersize=4)
        end = end_bars(left, group, accuracy[-1], color)
        left.annotate(f"step {steps[-1]}", (accuracy[-1], end.difference), fontsize=7, xytext=(4, 4), textcoords="offset points")
    # Every run starts from the same model: one marker, not one per method on top of each other.
    left.plot([statistics.fmean(starts)], [0.0], "k*", markersize=11, label="start (every run)")
    left.axhline(0, color="gray", linewidth=0.8)
    left.set(xlabel="held-out task accuracy", ylabel="GK accuracy change from the start",
             title="Task gain against forgetting (thin: each seed; bars at the end: seeds' task range, 95% GK interval)")  # fmt: skip
    left.title.set_fontsize(9)
    right.axhline(0, color="gray", linewidth=0.8)
    right.set(xlabel="KL(start || policy) on task prompts, nats/token", ylabel="GK accuracy change from the start",
              title="Forward KL against forgetting, every checkpoint of every seed")  # fmt: skip
    right.title.set_fontsize(9)
    frontier = saved(fig, (left, right), out / "frontier.png")

    panels = [("task_accuracy", "held-out task accuracy"), ("gk_accuracy", f"GK accuracy ({len(gk(group[0]))} items)"),
              ("task_forward_kl", "KL(start || policy), task prompts"), ("probe_kl", "KL(policy || start), GK questions")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4))
    for ax, (name, label) in zip(axes, panels, strict=True):
        for i, (method, group) in enumerate(groups.items()):
            for run in group:
                c = run.result["curves"]
                ax.plot(c["step"], [v if v is not None else float("nan") for v in c[name]], color=f"C{i}", alpha=0.3, linewidth=0.8)
            steps, values = mean_curve(group, name)
            ax.plot(steps, values, "-o", color=f"C{i}", label=method, markersize=3)
        ax.set(title=label, xlabel="optimizer step", ylabel=label)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Each seed thin, the mean over seeds with markers", fontsize=9)
    fig.tight_layout()
    curves = out / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (method, group) in enumerate(groups.items()):
        for run in group:
            points = run.result["memory_gib"]
            ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i}", linewidth=0.8, label=method if run is group[0] else None)
    ax.set(title="Resident memory of the training process, every run", xlabel="optimizer step", ylabel="GiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    memory = out / "memory.png"
    fig.savefig(memory, dpi=100)
    plt.close(fig)
    return [frontier, curves, memory]


def learning_rate_of(method: str, methods: dict, settings) -> float:
    """The arm's own learning rate (`sft@3e-05`), else the study's."""
    return getattr(methods.get(method), "lr", None) or settings.lr


def write_lr_frontier(runs: list[Run], out: Path, methods: dict, settings) -> Path | None:
    """`lr_frontier.png`, the frontier "RL's Razor" draws: task accuracy against GK change at every
    checkpoint of every run, one colour a method (its learning-rate arms together), one marker a
    learning rate; each seed's checkpoints small, the mean over seeds joined, and at each arm's end
    the seeds' task range and the 95% item-clustered GK interval. Drawn when some method was run
    at more than one learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_method(runs)
    families: dict[str, dict[float, list[Run]]] = {}
    for method, group in groups.items():
        families.setdefault(method.split("@")[0], {})[learning_rate_of(method, methods, settings)] = group
    if all(len(arms) < 2 for arms in families.values()):
        return None
    markers = "osD^vP*X"
    rates = sorted({lr for arms in families.values() for lr in arms})
    fig, ax = plt.subplots(figsize=(11.5, 6.5))
    for i, (family, arms) in enumerate(families.items()):
        for lr, group in sorted(arms.items()):
            style = {"color": f"C{i}", "marker": markers[rates.index(lr) % len(markers)]}
            for run in group:
                c = run.result["curves"]
                ax.scatter(c["task_accuracy"][1:], [g - c["gk_accuracy"][0] for g in c["gk_accuracy"][1:]], s=12, alpha=0.3, **style)
            _, accuracy = mean_curve(group, "task_accuracy")
            _, gk_mean = mean_curve(group, "gk_accuracy")
            ax.plot(accuracy, [g - gk_mean[0] for g in gk_mean], "-", markersize=6, linewidth=1, label=f"{family}, lr {lr:g} ({len(group)} seed{'s' if len(group) > 1 else ''})", **style)
            end_bars(ax, group, accuracy[-1], f"C{i}")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(xlabel="held-out task accuracy", ylabel="GK accuracy change from the start",
           title="Learning-rate frontier: every checkpoint (small: each seed; joined: mean over seeds from the start;\n"
                 "bars at each arm's end: seeds' task range, 95% item-clustered GK interval)")  # fmt: skip
    ax.title.set_fontsize(9)
    return saved(fig, (ax,), out / "lr_frontier.png", legend_outside=True)


def write_report(runs: list[Run], out: Path, settings, command_line: str, methods: dict, provenance: dict | None = None,
                 framings: dict | None = None) -> None:  # fmt: skip
    rows = checkpoint_rows(runs)
    if rows:
        write_csv(out / "checkpoints.csv", list(rows[0]), rows)
    write_atomically(out / "report.md", markdown(runs, settings, command_line, methods, provenance, framings))
    write_charts(runs, out)
    write_lr_frontier(runs, out, methods, settings)


def write_items(runs: list[Run], items: Path, settings, command_line: str, methods: dict) -> None:
    """The study's per-item results, the report's whole input, in a folder small enough to commit:
    `study.json` (settings, command, machine, code, methods) and `<method>/seed<S>.json` per
    finished run (its curves, each GK item's right or wrong and NLL at every checkpoint, memory
    and times)."""
    study = {
        "settings": vars(settings), "command_line": command_line, "provenance": {"machine": machine(), "code": git_revision()},
        "methods": {name: {"config": m.config, "teacher": m.teacher, "note": m.note, "lr": getattr(m, "lr", None), "every": getattr(m, "every", None)} for name, m in methods.items()},
    }  # fmt: skip
    items.mkdir(parents=True, exist_ok=True)
    write_atomically(items / "study.json", json.dumps(study, indent=1))
    for run in done(runs):
        (items / run.method).mkdir(exist_ok=True)
        write_atomically(items / run.method / f"seed{run.seed}.json", json.dumps({"method": run.method, "seed": run.seed, "result": run.result}))


def read_items(items: Path) -> tuple[list[Run], SimpleNamespace, str, dict, dict]:
    """What `write_items` wrote: the runs, settings, command line, methods and provenance."""
    study = json.loads((items / "study.json").read_text())
    methods = {name: SimpleNamespace(**m) for name, m in study["methods"].items()}
    runs = []
    for method in methods:
        for path in sorted((items / method).glob("seed*.json"), key=lambda p: int(p.stem[4:])):
            saved = json.loads(path.read_text())
            runs.append(Run("arithmetic", method, saved["seed"], path, [], saved["result"], "reused"))
    return runs, SimpleNamespace(**study["settings"]), study["command_line"], methods, study["provenance"]


def trained_in(settings: SimpleNamespace, provenance: dict) -> str:
    """The weights' dtype a study trained in: its `dtype`, or for "auto" what its machine chose
    (`lit_posttrain.precision`: bf16 where the hardware computes in it natively, else float32), read
    from the machine its provenance names: float32 on a CPU without a GPU whose torch capability
    stops at AVX2 (studies 2-5's AMD EPYC). Any other machine's "auto" stays itself."""
    if settings.dtype != "auto":
        return settings.dtype
    machine = provenance["machine"]
    return "float32" if "no GPU" in machine and "CPU capability AVX2," in machine else f"auto on {machine}"


def read_studies(folders: list[Path]) -> tuple[list[Run], SimpleNamespace, str, dict, dict]:
    """Several studies' items as one: their runs and methods together (a method's seeds may come
    from several, each run from one); the first study's settings, which every other must share
    but for seeds and cadence, and the dtype only as trained in (`trained_in`)."""
    runs, settings, command_line, methods, provenance = read_items(folders[0])
    lines, machines, codes = [command_line], [provenance["machine"]], [provenance["code"]]
    weights = trained_in(settings, provenance)
    for folder in folders[1:]:
        more, other, line, more_methods, where = read_items(folder)
        differ = {k for k, v in vars(other).items() if k not in ("seeds", "every", "dtype") and getattr(settings, k, None) != v}
        if (other_weights := trained_in(other, where)) != weights:
            differ.add(f"dtype: trained in {other_weights} against {weights}")
        if differ:
            raise SystemExit(f"{folder}: another study's settings ({', '.join(sorted(differ))} differ from {folders[0]}'s): not comparable in one report")
        if shared := {(r.method, r.seed) for r in more} & {(r.method, r.seed) for r in runs}:
            twice = ", ".join(f"{method} seed {seed}" for method, seed in sorted(shared))
            raise SystemExit(f"{folder}: {twice} also in an earlier folder: one study per run")
        runs, methods = runs + more, more_methods | methods
        settings.seeds = sorted(set(settings.seeds) | set(other.seeds))
        lines.append(line)
        machines += [where["machine"]] if where["machine"] not in machines else []
        codes.append(where["code"])
    return runs, settings, " ; ".join(lines), methods, {"machine": " / ".join(machines), "code": ", ".join(codes)}


def study_folders(folders: list[Path]) -> list[Path]:
    """The study folders given, a folder without `study.json` standing for the ones inside it
    (benchmarks/forgetting_items_study4/: one per command of that study)."""
    found = []
    for folder in folders:
        inside = [folder] if (folder / "study.json").is_file() else sorted(p.parent for p in folder.glob("*/study.json"))
        if not inside:
            raise SystemExit(f"{folder}: no study.json in it or in a folder inside it: not a forgetting study's items")
        found += inside
    return found


def read_framings(folders: list[Path]) -> dict:
    """Every folder's `framings.json` (benchmarks/framings.py) as one: its models together (a
    folder of studies may hold one for the models of all of them)."""
    merged: dict = {"models": {}}
    for folder in folders:
        path = folder / "framings.json"
        if path.is_file():
            scored = json.loads(path.read_text())
            if merged.setdefault("items", scored["items"]) != scored["items"]:
                raise SystemExit(f"{path}: scores over {scored['items']} items, the others over {merged['items']}")
            merged["models"] |= scored["models"]
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the forgetting study's report and charts from its per-item results alone.")
    parser.add_argument("items", type=Path, nargs="+",
                        help="the folders the study wrote (items/ of its --out), or folders of them; several are reported together (the committed ones: benchmarks/forgetting_items, _lr, _lr_seed1, _study4, _study5, _study6)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("forgetting_report"), help="where report.md, checkpoints.csv and the charts go")
    args = parser.parse_args(argv)
    studies = study_folders(args.items)
    runs, settings, command_line, methods, provenance = read_studies(studies)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(runs, args.out, settings, command_line, methods, provenance, read_framings(list(dict.fromkeys(args.items + studies))))
    print(f"{len(runs)} runs: {args.out / 'report.md'}, {args.out / 'checkpoints.csv'}, frontier.png, curves.png, memory.png (lr_frontier.png) in {args.out}")


if __name__ == "__main__":
    main()
