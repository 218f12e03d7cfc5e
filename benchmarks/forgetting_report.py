"""The analysis of benchmarks/forgetting.py: finished runs in; `checkpoints.csv`, `report.md`,
`curves.png` and `frontier.png` out. Every GK difference is a paired test over the same items
(benchmarks/paired.py); every number is read from the runs, none is typed in."""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from pathlib import Path

from compare_report import Run, cell, git_revision, machine, write_atomically, write_csv
from paired import PairedDifference, minimum_detectable_difference, paired_difference

KLS = (  # (curve, what it is), the candidates for predicting the GK drop
    ("task_forward_kl", "KL(start || policy) on task prompts (RL's Razor)"),
    ("task_kl", "KL(policy || start) on task prompts"),
    ("probe_forward_kl", "KL(start || policy) on GK questions"),
    ("probe_kl", "KL(policy || start) on GK questions (the probe KL logged by default)"),
)


def gk_topics(items: int) -> list[str] | None:
    """Each probed item's topic, in the probe's order (the first `items` of the built-in set)."""
    import json

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


def pooled(pairs: list[tuple[list[bool], list[bool]]]) -> PairedDifference:
    """One paired test over every (seed, item) pair: the seeds' items concatenated."""
    return paired_difference([x for before, _ in pairs for x in before], [y for _, after in pairs for y in after])


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


def matched_accuracy(groups: dict[str, list[Run]]) -> tuple[float | None, dict[str, list[tuple[int, int]]], list[str]]:
    """The highest task accuracy that every run which improved on its start reached at some
    checkpoint; per method, each such run's (seed, checkpoint index) where it first reached it; and
    the runs left out, which never rose above their start (no accuracy to match them at)."""
    improved, left_out = [], []
    for method, runs in groups.items():
        for run in runs:
            accuracy = run.result["curves"]["task_accuracy"]
            (improved if max(accuracy[1:], default=0.0) > accuracy[0] else left_out).append((method, run))
    if not improved:
        return None, {}, [f"{method} seed {run.seed}" for method, run in left_out]
    level = min(max(run.result["curves"]["task_accuracy"][1:]) for _, run in improved)
    matched: dict[str, list[tuple[int, int]]] = {}
    for method, run in improved:
        accuracy = run.result["curves"]["task_accuracy"]
        matched.setdefault(method, []).append((run.seed, next(i for i in range(1, len(accuracy)) if accuracy[i] >= level)))
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


def markdown(runs: list[Run], settings, command_line: str, methods: dict) -> str:
    groups = by_method(runs)
    first = next(iter(done(runs)), None)
    items = len(first.result["gk_items"][0]) if first else 0
    lines = [
        "# Forgetting study",
        "",
        f"Written by `benchmarks/forgetting.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; rerun its command to refresh it.",
        "",
        f"- Command: `{command_line}`",
        f"- The same for every method: model `{settings.model}` (dtype {settings.dtype}, "
        f"{'LoRA r16' if settings.lora else 'full fine-tuning'}), learning rate {settings.lr:g} after {settings.warmup_steps} warm-up steps, {settings.steps} optimizer "
        f"steps of {settings.batch_size} prompts, at most {settings.max_new_tokens} new tokens, seeds "
        f"{' '.join(map(str, settings.seeds))}; measured every {settings.every} steps: greedy accuracy on "
        f"{settings.eval_examples} held-out sums, {items} GK items, KL both ways on {settings.kl_prompts} GK questions "
        f"and {settings.task_kl_prompts} task prompts.",
        f"- Machine: {machine()}",
        f"- Code: commit {git_revision()}",
        "",
        "GK differences: after - before over the same items, 95% paired-bootstrap interval in brackets, exact "
        "McNemar p; `pooled`: the seeds' items together. Other cells: mean ± std over seeds.",
        "",
        "## At the end of training",
        "",
        "| method | seeds | task accuracy, start | task accuracy, end | GK accuracy, start | GK accuracy, end | "
        "GK change, pooled [95% CI] | McNemar p | GK right-to-wrong | KL(start‖policy) task | KL(policy‖start) GK | wall (s) | measuring share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, group in groups.items():
        curves = [run.result["curves"] for run in group]
        test = pooled([(run.result["gk_items"][0], run.result["gk_items"][-1]) for run in group])
        share = [run.result["measure_s"] / run.result["fit_s"] for run in group if run.result["fit_s"]]
        lines.append(
            f"| {method} | {len(group)} | {cell([c['task_accuracy'][0] for c in curves], 3)} | "
            f"{cell([c['task_accuracy'][-1] for c in curves], 3)} | {cell([c['gk_accuracy'][0] for c in curves], 3)} | "
            f"{cell([c['gk_accuracy'][-1] for c in curves], 3)} | {test.cell()} | {test.p_value:.2g} | "
            f"{cell([end_vs_start(run).right_to_wrong for run in group], 1)} | "
            f"{cell([c['task_forward_kl'][-1] for c in curves if c['task_forward_kl'][-1] is not None], 3)} | "
            f"{cell([c['probe_kl'][-1] for c in curves if c['probe_kl'][-1] is not None], 3)} | "
            f"{cell([run.result['wall_s'] for run in group], 0)} | {cell(share, 2)} |"
        )
    lines += ["", "Per run, end against start:", "", "| method | seed | GK change [95% CI] | right-to-wrong | wrong-to-right | McNemar p |", "|---|---|---|---|---|---|"]
    for method, group in groups.items():
        for run in group:
            test = end_vs_start(run)
            lines.append(f"| {method} | {run.seed} | {test.cell()} | {test.right_to_wrong} | {test.wrong_to_right} | {test.p_value:.2g} |")

    discordant = [(t.right_to_wrong + t.wrong_to_right) / t.n for group in groups.values() for t in map(end_vs_start, group)]
    if discordant:
        d = statistics.median(discordant)
        lines += [
            "",
            f"Smallest detectable GK difference: {minimum_detectable_difference(items, d):.3f} for one run against its start "
            f"({items} items, the runs' median {d:.2f} of them flipping either way; 80% power, two-sided 5%), "
            f"{minimum_detectable_difference(items * max(len(g) for g in groups.values()), d):.3f} pooled over the seeds.",
        ]

    topics = gk_topics(items) if items else None
    if topics:
        # Sums are what every method trains on: the set's arithmetic items can move with the task
        # itself, so the change is also given without them.
        keep = [i for i, topic in enumerate(topics) if topic != "arithmetic"]
        lines += [
            "",
            f"GK change end against start, pooled over seeds, split by topic: the {items - len(keep)} arithmetic items, "
            f"and the other {len(keep)}.",
            "",
            "| method | arithmetic items [95% CI] | other items [95% CI] | McNemar p, other items |",
            "|---|---|---|---|",
        ]
        arithmetic = [i for i in range(items) if i not in set(keep)]
        for method, group in groups.items():
            cells = []
            for subset in (arithmetic, keep):
                pairs = [([run.result["gk_items"][0][i] for i in subset], [run.result["gk_items"][-1][i] for i in subset]) for run in group]
                cells.append(pooled(pairs) if subset else None)
            shown = [test.cell() if test else "-" for test in cells]
            lines.append(f"| {method} | {shown[0]} | {shown[1]} | {f'{cells[1].p_value:.2g}' if cells[1] else '-'} |")

    level, matched, left_out = matched_accuracy(groups)
    if level is None and groups:
        lines += ["", "## At matched task accuracy", "", "No run rose above its start: there is no accuracy to match the methods at."]
    if level is not None:
        lines += [
            "",
            f"## At matched task accuracy ({level:.3f}: the highest that every run which improved reached)",
            "",
            "Each run at its first checkpoint at or above it"
            + (f"; left out, never above their start: {', '.join(left_out)}." if left_out else "."),
            "",
            "| method | step (per seed) | task accuracy there | GK change, pooled [95% CI] | McNemar p |",
            "|---|---|---|---|---|",
        ]
        for method, entries in matched.items():
            by_seed = {run.seed: run for run in groups[method]}
            pairs = [(by_seed[seed].result["gk_items"][0], by_seed[seed].result["gk_items"][i]) for seed, i in entries]
            steps = " ".join(str(by_seed[seed].result["curves"]["step"][i]) for seed, i in entries)
            reached = [by_seed[seed].result["curves"]["task_accuracy"][i] for seed, i in entries]
            test = pooled(pairs)
            lines.append(f"| {method} | {steps} | {cell(reached, 3)} | {test.cell()} | {test.p_value:.2g} |")

    if "sft" in groups:
        lines += ["", "## Each method against SFT at the end (same seed, same items)", "", "| method | GK difference to SFT, pooled [95% CI] | McNemar p |", "|---|---|---|"]
        sft = {run.seed: run for run in groups["sft"]}
        for method, group in groups.items():
            pairs = [(sft[run.seed].result["gk_items"][-1], run.result["gk_items"][-1]) for run in group if run.seed in sft]
            if method != "sft" and pairs:
                test = pooled(pairs)
                lines.append(f"| {method} | {test.cell()} | {test.p_value:.2g} |")

    for method, group in groups.items():
        teacher = methods[method].teacher
        if teacher not in groups:
            continue
        teachers = {run.seed: run for run in groups[teacher]}
        lines += [
            "",
            f"## Distillation: `{method}` from the over-trained `{teacher}` model",
            "",
            "| seed | task accuracy: start, teacher, student | GK: start, teacher, student | student - teacher GK [95% CI], p | student - start GK [95% CI], p |",
            "|---|---|---|---|---|",
        ]
        for run in group:
            t = teachers.get(run.seed)
            if t is None:
                continue
            s_items, t_items = run.result["gk_items"], t.result["gk_items"]
            vs_teacher, vs_start = paired_difference(t_items[-1], s_items[-1]), paired_difference(s_items[0], s_items[-1])
            sc, tc = run.result["curves"], t.result["curves"]
            lines.append(
                f"| {run.seed} | {sc['task_accuracy'][0]:.3f}, {tc['task_accuracy'][-1]:.3f}, {sc['task_accuracy'][-1]:.3f} | "
                f"{sc['gk_accuracy'][0]:.3f}, {tc['gk_accuracy'][-1]:.3f}, {sc['gk_accuracy'][-1]:.3f} | "
                f"{vs_teacher.cell()}, {vs_teacher.p_value:.2g} | {vs_start.cell()}, {vs_start.p_value:.2g} |"
            )

    rows = [row for row in checkpoint_rows(runs) if row["step"] > 0]
    if len(rows) >= 3:
        lines += [
            "",
            "## Which KL predicts the GK drop",
            "",
            f"Over every checkpoint after the start of every run ({len(rows)} points): the correlation of the GK accuracy "
            "change with each KL to the start (negative: more KL, more forgetting).",
            "",
            "| KL | Pearson r | Spearman rho |",
            "|---|---|---|",
        ]
        for name, label in KLS:
            points = [(row[name], row["gk_change"]) for row in rows if row[name] is not None]
            if len(points) >= 3:
                r, rho = correlation([x for x, _ in points], [y for _, y in points])
                lines.append(f"| {label} | {r:+.2f} | {rho:+.2f} |")

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


def write_charts(runs: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    groups = by_method(runs)
    if not groups:
        return []
    # The frontier: forgetting against task gain, one line per method through its checkpoints.
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, (method, group) in enumerate(groups.items()):
        steps, accuracy = mean_curve(group, "task_accuracy")
        _, gk = mean_curve(group, "gk_accuracy")
        change = [g - gk[0] for g in gk]
        left.plot(accuracy, change, "-o", color=f"C{i}", label=method)
        left.annotate(str(steps[-1]), (accuracy[-1], change[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for run in group:
            c = run.result["curves"]
            kl = [(x, g - c["gk_accuracy"][0]) for x, g in zip(c["task_forward_kl"], c["gk_accuracy"], strict=True) if x is not None]
            right.scatter([x for x, _ in kl], [y for _, y in kl], color=f"C{i}", s=16, label=method if run is group[0] else None)
    left.axhline(0, color="gray", linewidth=0.8)
    left.set(xlabel="held-out task accuracy (mean over seeds)", ylabel="GK accuracy change from the start",
             title="Task gain against forgetting, each method through its checkpoints")  # fmt: skip
    right.axhline(0, color="gray", linewidth=0.8)
    right.set(xlabel="KL(start || policy) on task prompts, nats/token", ylabel="GK accuracy change from the start",
              title="Forward KL against forgetting, every checkpoint")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    frontier = out / "frontier.png"
    fig.savefig(frontier, dpi=100)
    plt.close(fig)

    panels = [("task_accuracy", "held-out task accuracy"), ("gk_accuracy", "GK accuracy (328 items)"),
              ("task_forward_kl", "KL(start || policy), task prompts"), ("probe_kl", "KL(policy || start), GK questions")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 4))
    for ax, (name, title) in zip(axes[:-1], panels, strict=True):
        for i, (method, group) in enumerate(groups.items()):
            steps, values = mean_curve(group, name)
            ax.plot(steps, values, "-o", color=f"C{i}", label=method, markersize=3)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
    for i, (method, group) in enumerate(groups.items()):
        for run in group:
            points = run.result["memory_gib"]
            axes[-1].plot([s for s, _ in points], [v for _, v in points], color=f"C{i}", linewidth=0.8, label=method if run is group[0] else None)
    axes[-1].set(title="resident memory (GiB), every run", xlabel="optimizer step")
    axes[-1].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    curves = out / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    return [frontier, curves]


def write_report(runs: list[Run], out: Path, settings, command_line: str, methods: dict) -> None:
    rows = checkpoint_rows(runs)
    if rows:
        write_csv(out / "checkpoints.csv", list(rows[0]), rows)
    write_atomically(out / "report.md", markdown(runs, settings, command_line, methods))
    write_charts(runs, out)
