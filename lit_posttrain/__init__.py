"""lit_posttrain: post-training for language models on PyTorch Lightning.

Shape suffixes in names say what a tensor's axes are: `B` batch of sequences, `G` rollouts per
prompt, `P` prompts, `T` tokens, `V` vocabulary, `K` OTR samples. `logp_BT` is a (B, T) tensor of
per-token log-probs, `mask_BT` marks completion tokens, `reward_B` is one reward per sequence.
"""

__version__ = "0.1.0"
