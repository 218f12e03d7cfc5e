"""Rollouts: the `Rollout` batch type, the `RolloutEngine` protocol and its engines. `VLLMEngine`
(`lit_posttrain.rollout.vllm`) and `VLLMServerEngine` (`lit_posttrain.rollout.server`, a vLLM
server in another process) are imported only when selected."""

from lit_posttrain.rollout.engine import RolloutEngine
from lit_posttrain.rollout.hf import HFEngine
from lit_posttrain.rollout.types import Rollout, concat_rollouts

__all__ = ["HFEngine", "Rollout", "RolloutEngine", "concat_rollouts"]
