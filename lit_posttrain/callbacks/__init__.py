"""Callbacks decide *when* things happen; modules decide *what* a step is."""

from lit_posttrain.callbacks.completions import LogCompletions
from lit_posttrain.callbacks.evaluation import Evaluation
from lit_posttrain.callbacks.export import ExportEveryNSteps
from lit_posttrain.callbacks.forgetting import ForgettingProbes
from lit_posttrain.callbacks.memory import MemoryMonitor
from lit_posttrain.callbacks.non_finite import NonFiniteGuard
from lit_posttrain.callbacks.plots import Plots
from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh
from lit_posttrain.callbacks.sigterm import CheckpointOnSigterm

__all__ = ["CheckpointOnSigterm", "Evaluation", "ExportEveryNSteps", "ForgettingProbes", "LogCompletions", "MemoryMonitor", "NonFiniteGuard", "Plots", "RolloutRefresh"]
