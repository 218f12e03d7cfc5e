"""Callbacks decide *when* things happen; modules decide *what* a step is."""

from lit_posttrain.callbacks.evaluation import Evaluation
from lit_posttrain.callbacks.forgetting import ForgettingProbes
from lit_posttrain.callbacks.memory import MemoryMonitor
from lit_posttrain.callbacks.non_finite import NonFiniteGuard
from lit_posttrain.callbacks.plots import Plots
from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh
from lit_posttrain.callbacks.sigterm import CheckpointOnSigterm

__all__ = ["CheckpointOnSigterm", "Evaluation", "ForgettingProbes", "MemoryMonitor", "NonFiniteGuard", "Plots", "RolloutRefresh"]
