"""The methods, one file each, every one a `LightningModule` over `PostTrainingModule`
(`methods.base`); the on-policy ones over `OnPolicyModule` (`methods.on_policy`). Configs name them
by `class_path` (`lit_posttrain.methods.grpo.GRPO`); they are imported here for Python users."""

from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.hpt import HPT
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.methods.opd import OPD, FullVocabJSD, SampledReverseKL
from lit_posttrain.methods.otr import OTR
from lit_posttrain.methods.sept import SePT
from lit_posttrain.methods.sft import SFT

__all__ = ["GRPO", "HPT", "OPD", "OTR", "SFT", "FullVocabJSD", "OnPolicyModule", "PostTrainingModule", "SampledReverseKL", "SePT"]
