"""Callbacks decide *when* things happen; modules decide *what* a step is."""

from lit_posttrain.callbacks.evaluation import HeldOutEvaluation
from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh

__all__ = ["HeldOutEvaluation", "RolloutRefresh"]
