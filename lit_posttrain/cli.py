"""The `lit-posttrain` command: Lightning's CLI with the method chosen by `class_path`.

    lit-posttrain fit --config configs/sft.yaml
    lit-posttrain fit --config configs/sft.yaml --model.init_args.model ./my-hf-folder
    lit-posttrain fit --help
    lit-posttrain export runs/lightning_logs/version_0/checkpoints/last.ckpt my-model

At the end of `fit` the trained policy is written as a Hugging Face folder next to the run's logs;
`export` writes one from any checkpoint the run saved.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_posttrain.callbacks import Evaluation, Plots
from lit_posttrain.callbacks.progress import StepProgressBar
from lit_posttrain.cli_errors import check_failed, explain
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.precision import default_precision
from lit_posttrain.run_dir import run_dir


def _default_loggers() -> list[dict]:
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}}]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}})
    return loggers


class _DropAdvertisements(logging.Filter):
    """Lightning prints tips for its cloud products at the start of every run: noise in a user's
    first minutes, and nothing this library uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


class SaveConfigToRun(SaveConfigCallback):
    """The run's resolved configuration, `config.yaml`, in the run's own folder (`run_dir`, beside
    its checkpoints and model). Lightning's writes it to the logger's `log_dir`: `.` for W&B, where
    each run overwrites the last one's, and none at all for MLflow with a database store."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_dir(trainer)  # a collective: every rank asks
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, folder / self.config_filename, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
        self.already_saved = True


class OneLineErrors(LightningArgumentParser):
    """Lightning's parser, its configuration errors told in one line (`cli_errors.explain`) and a
    hint, not a usage dump and jsonargparse's nested report (which LIT_POSTTRAIN_TRACEBACK=1 keeps)."""

    argv: list[str] | None = None  # the arguments being parsed (LitPostTrainCLI.parse_arguments); None: sys.argv

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get(TRACEBACK_VARIABLE):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [action.dest for action in parser._actions]
        line = explain(message, keys, self.argv if self.argv is not None else sys.argv[1:])
        subcommand = parser.prog.split(" [options]", 1)[1] if " [options]" in parser.prog else ""  # " fit"
        prog = "lit-posttrain" + subcommand
        sys.stderr.write(f"lit-posttrain: error: {line}\n(every option: {prog} --help; jsonargparse's full report: {TRACEBACK_VARIABLE}=1)\n")
        self.exit(2)


class LitPostTrainCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        if not any(isinstance(f, _DropAdvertisements) for f in rank_zero_log.filters):
            rank_zero_log.addFilter(_DropAdvertisements())
        # Mixed precision where the hardware computes in bf16 (float32 master weights and Adam
        # state, bf16 matmuls), as the field trains; float32 elsewhere (precision.default_precision).
        kwargs.setdefault(
            "trainer_defaults", {"logger": _default_loggers(), "default_root_dir": "runs", "precision": default_precision()}
        )
        # A config without `seed_everything` runs with seed 0: what Lightning picks anyway, without
        # its "No seed found" warning, and not a seed left in the environment by an earlier run in
        # the same process.
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", SaveConfigToRun)
        kwargs.setdefault("parser_class", OneLineErrors)
        super().__init__(
            PostTrainingModule,
            TaskDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )

    def parse_arguments(self, parser, args) -> None:
        # On the class: the subcommand's parser, not this one, may be the one to report an error.
        type(parser).argv = list(args) if isinstance(args, list | tuple) else None
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--export_to",
            type=str | None,
            default=None,
            help="folder the trained model is saved to at the end of fit (default: hf_model in the run's folder, beside its checkpoints)",
        )
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="CPU threads this run computes with (default: one per core); runs sharing a machine: divide the cores between them",
        )
        parser.add_argument(
            "--export",
            type=bool,
            default=True,
            help="save the trained model at the end of fit (false: a quick trial or a test, whose model is not wanted)",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        for note in dropped_method_arguments(config):
            print(f"lit-posttrain: note: {note}", file=sys.stderr, flush=True)
        threads = config.get("threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)  # before any model is built; a VLLMEngine takes the same

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()
        accumulate = self.trainer.accumulate_grad_batches
        if accumulate != 1 and not self.model.automatic_optimization:
            # Lightning's own refusal names neither the way out nor why.
            batch_size = self.datamodule.batch_size
            raise ValueError(
                f"trainer.accumulate_grad_batches: {accumulate}: {type(self.model).__name__} takes one optimizer step per "
                f"batch of data.batch_size rows on each process, a micro-batch at a time (model.init_args.micro_batching "
                f"bounds its memory): for the same step set data.batch_size: {batch_size * accumulate} and remove "
                "accumulate_grad_batches"
            )
        # Lightning's default bar, where it is the one in use, becomes ours (steps, no v_num).
        callbacks = self.trainer.callbacks
        bar = self.trainer.progress_bar_callback
        if type(bar) is RichProgressBar:
            callbacks[callbacks.index(bar)] = StepProgressBar()

    def after_fit(self) -> None:
        trainer = self.trainer
        run = run_dir(trainer)  # a collective under data parallelism: every rank must ask
        if not trainer.interrupted:
            config = self.config[self.subcommand]
            folder = None
            if config.get("export", True):
                # Every rank calls the export: a sharded policy's weights are gathered from all of them.
                folder = self.model.export_hf(config.get("export_to") or run / "hf_model")
            if trainer.is_global_zero:
                self._summarise(run, folder)
        # Every process waits for the export, then leaves the process group together: a process
        # that exits while another still holds the group can abort in the collective library's
        # teardown, and the launcher then kills the finished run.
        trainer.strategy.barrier("after_fit")
        # The trainer's group only: in a single process a group can exist that a VLLMEngine made
        # (and, kept started, still uses).
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _summarise(self, run: Path, folder: Path | None) -> None:
        trainer = self.trainer
        lines = [f"Run summary: {trainer.global_step} optimizer steps in {time.perf_counter() - self._fit_start:.0f} s"]
        for callback in trainer.callbacks:
            if not isinstance(callback, Evaluation):
                continue
            for task in dict.fromkeys(h["task"] for h in callback.history):
                runs = [h for h in callback.history if h["task"] == task]
                if len(runs) < 2:
                    continue
                first, last, best = runs[0], runs[-1], max(runs, key=lambda h: h["accuracy"])
                lines.append(
                    f"  {task} accuracy: {first['accuracy']:.3f} at step {first['step']} -> {last['accuracy']:.3f} at "
                    f"step {last['step']} (best {best['accuracy']:.3f} at step {best['step']}; "
                    f"{last['right_to_wrong']:.0f} right-to-wrong, {last['wrong_to_right']:.0f} wrong-to-right)"
                )
                lines.append("    by step: " + ", ".join(f"{h['step']}: {h['accuracy']:.3f}" for h in runs))
                for key in (k for k in last if k.startswith("accuracy_")):  # the Evaluation's further verifiers
                    lines.append(f"    under {key.removeprefix('accuracy_')}: " + ", ".join(f"{h['step']}: {h[key]:.3f}" for h in runs if key in h))
                if best["accuracy"] > last["accuracy"] and task == "held_out":
                    # The held-out split is the only one scored: picking the best on it would report
                    # that split's luck as the model's accuracy.
                    lines.append(
                        f"    the last model is the one saved: step {best['step']} scored higher, but on the same "
                        "held-out examples that chose it, which would overstate it"
                    )
        watch = getattr(self.model, "sampling_watch", None)
        lines += watch.summary() if watch is not None else []
        lines.append(f"  run folder: {run.resolve()}")
        # Charts come with every run; a Plots callback in the config has drawn them already.
        if not any(isinstance(cb, Plots) for cb in trainer.callbacks):
            Plots().on_fit_end(trainer, self.model)  # it names the files it writes
        lines.append(f"Trained model saved to {folder.resolve()}" if folder else "Trained model not saved (--export false)")
        print("\n".join(lines), flush=True)


def dropped_method_arguments(config) -> list[str]:
    """One line per `model.init_args` key that a --config file sets for another method than the
    run's: swapping `class_path` keeps the arguments the new method takes and drops the others,
    which jsonargparse does silently (HPT's `gamma` under GRPO, say)."""
    import yaml

    model = config.get("model")
    if model is None or not model.get("class_path"):
        return []
    taken = set(vars(model.get("init_args") or {}))
    notes = []
    for path in config.get("config") or []:
        try:
            # jsonargparse's Path (a file or a URL): `read_text` from 4.49 on; `get_content` before,
            # deprecated since, and its warning printed in every run.
            read = getattr(path, "read_text", None) or getattr(path, "get_content", None) or Path(str(path)).read_text
            content = yaml.safe_load(read())
        except (OSError, yaml.YAMLError):
            continue  # the parser has read it already; nothing to add here
        section = content.get("model") if isinstance(content, dict) else None
        if not isinstance(section, dict) or section.get("class_path") in (None, model.class_path):
            continue
        dropped = sorted(set(section.get("init_args") or {}) - taken)
        if dropped:
            notes.append(
                f"{path} sets {', '.join(f'model.init_args.{k}' for k in dropped)} for {section['class_path'].rsplit('.', 1)[-1]}, "
                f"but the run's model is {model.class_path.rsplit('.', 1)[-1]} (class_path), which does not take "
                f"{'it' if len(dropped) == 1 else 'them'}: dropped"
            )
    return notes


# Warnings every run printed that a user can do nothing about; each checked harmless here.
QUIET_WARNINGS = [
    # Lightning's own use of a torch pytree API that torch deprecated; nothing of ours.
    r".*isinstance\(treespec, LeafSpec\)",
    # Our micro-batch dataset has a length (for the progress bar and the schedule) and is read in
    # the main process (no DataLoader workers), where that length is exact.
    r"Your `IterableDataset` has `__len__` defined",
    # vLLM's own use of a torch API that torch deprecated (at its import); nothing of ours.
    r"`torch.distributed.reduce_op` is deprecated",
]

# Errors that mean "change your input", raised with a message that names what and where: shown
# as that message alone, the traceback on request.
INPUT_ERRORS = (ValueError, FileNotFoundError)  # DataError and ModelSourceError are ValueErrors
TRACEBACK_VARIABLE = "LIT_POSTTRAIN_TRACEBACK"


def export_command(args: list[str]) -> None:
    """`lit-posttrain export CKPT OUT`: a checkpoint's policy as a Hugging Face folder."""
    import argparse

    from lit_posttrain.export import export_checkpoint

    parser = argparse.ArgumentParser(
        prog="lit-posttrain export",
        description="Write the policy of a lit-posttrain checkpoint (a .ckpt file, or an FSDP2 checkpoint folder) as a "
        "Hugging Face folder that transformers and vLLM load.",
    )
    parser.add_argument("checkpoint", help="the checkpoint: checkpoints/last.ckpt in a run's folder, say")
    parser.add_argument("out", help="the folder to write (replaced whole if it exists)")
    lora = parser.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", dest="merge_lora", action="store_true", default=None, help="LoRA: write a full model with the adapters merged")
    lora.add_argument("--adapters", dest="merge_lora", action="store_false", help="LoRA: write a peft adapter folder")
    options = parser.parse_args(args)
    folder = export_checkpoint(options.checkpoint, options.out, merge_lora=options.merge_lora)
    print(f"Exported {options.checkpoint} to {Path(folder).resolve()}", flush=True)


def main(args: list[str] | None = None) -> None:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["export"]:
            export_command(argv[1:])
        else:
            LitPostTrainCLI(args=args)  # None: Lightning reads sys.argv itself (and warns where both are given)
    except INPUT_ERRORS as err:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"lit-posttrain: error: {check_failed(str(err))}\n(the full traceback: set {TRACEBACK_VARIABLE}=1)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
