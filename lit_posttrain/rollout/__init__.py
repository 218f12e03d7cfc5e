"""Rollouts: the `Rollout` batch type, the `RolloutEngine` protocol and its engines. `VLLMEngine`
lives in `lit_posttrain.rollout.vllm` and is imported only when selected."""

from lit_posttrain.rollout.engine import RolloutEngine
from lit_posttrain.rollout.hf import HFEngine
from lit_posttrain.rollout.types import Rollout, concat_rollouts

__all__ = ["HFEngine", "Rollout", "RolloutEngine", "concat_rollouts"]
