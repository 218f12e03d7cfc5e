"""The trained model written as a Hugging Face folder during training, not only at its end."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_posttrain.callbacks.cadence import crossed_multiple
from lit_posttrain.run_dir import run_dir


class ExportEveryNSteps(L.Callback):
    """Writes the policy as a Hugging Face folder with its tokenizer every `every_n_steps` optimizer
    steps: `<folder>/step_<N>`, each written whole or not at all (`export.save_hf_folder`), with
    LoRA merged or as adapters as `lora.merge_on_save` says. The end-of-run model is written
    anyway (`--export_to`); these are the ones between, to evaluate or serve while the run goes on.

    Args:
        every_n_steps: optimizer steps between exports.
        folder: where the step folders go (null: `hf_models` in the run's folder, beside its checkpoints).
        keep: how many of the newest to keep, older ones deleted (null: all).
    """

    def __init__(self, every_n_steps: int, folder: str | None = None, keep: int | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ExportEveryNSteps every_n_steps must be >= 1, got {every_n_steps}")
        if keep is not None and keep < 1:
            raise ValueError(f"ExportEveryNSteps keep must be >= 1 or null, got {keep}")
        self.every_n_steps, self.folder, self.keep = every_n_steps, folder, keep
        self.written: list[Path] = []

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if not crossed_multiple(trainer, module, self.every_n_steps):
            return
        step = trainer.global_step
        root = Path(self.folder) if self.folder else run_dir(trainer) / "hf_models"
        # Every rank calls it: a sharded policy's weights are gathered from all of them.
        path = module.export_hf(root / f"step_{step}")
        if trainer.is_global_zero:
            self.written.append(path)
            rank_zero_info(f"step {step}: model exported to {path}")
            self._prune(root)

    def _prune(self, root: Path) -> None:
        if self.keep is None:
            return
        steps = sorted((p for p in root.glob("step_*") if p.name.removeprefix("step_").isdigit()), key=lambda p: int(p.name[5:]))
        for old in steps[: -self.keep]:
            shutil.rmtree(old)
