"""Per-token log-probabilities of given tokens under a causal language model: the forward passes
every method, evaluation and probe is built on, and the prompt prefill the engines decode from.
Pure functions of a model and tensors; the module (`PostTrainingModule`) chooses the model and
counts the tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.groups import dense_groups
from lit_posttrain.head import head_logp, plain_head


def first_masked(mask_BT: Tensor) -> int:
    """The first position any row marks: scoring can start there."""
    marked = mask_BT.any(0).nonzero()
    return int(marked[0]) if len(marked) else mask_BT.shape[1]


def gather_logp(logits_BTV: Tensor, tokens_BT: Tensor) -> Tensor:
    """log softmax(logits)[token] in float32, one row at a time: a float32 copy of a whole batch's
    logits (B x T x 49k vocabulary) would cost more memory than the model."""
    rows = []
    for logits_TV, tokens_T in zip(logits_BTV, tokens_BT, strict=True):
        logits_TV = logits_TV.float()
        picked_T = logits_TV.gather(-1, tokens_T.unsqueeze(-1)).squeeze(-1)
        rows.append(picked_T - torch.logsumexp(logits_TV, dim=-1))
    return torch.stack(rows)


def first_rows(group_R: Tensor) -> tuple[Tensor, Tensor]:
    """`(first_G, prompt_of_R)`: the first row of each group, and each row's group as 0..G-1.
    Rows of a group are contiguous and groups in ascending order, as in a Rollout."""
    prompt_of_R, groups = dense_groups(group_R)
    return torch.searchsorted(prompt_of_R, torch.arange(groups, device=group_R.device)), prompt_of_R


def prefill(model: torch.nn.Module, prompt_PT: Tensor, attention_PT: Tensor):
    """Run left-padded prompts once into a fresh KV cache: `(logits_PV, cache, position_PT)`, the
    logits at each prompt's last position (only there: the output head is costly) and the
    positions the cache holds. Gradients flow when enabled."""
    from transformers import DynamicCache

    position_PT = (attention_PT.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=prompt_PT, attention_mask=attention_PT, position_ids=position_PT,
        past_key_values=cache, use_cache=True, logits_to_keep=last_position(prompt_PT),
    )  # fmt: skip
    return out.logits[:, -1], cache, position_PT


def last_position(tokens_BT: Tensor) -> Tensor:
    """`logits_to_keep` for the last position only, as an index tensor: an int makes transformers
    take a strided slice of the hidden states, which sends the output head down a batched-matmul
    path that copies its weight per row on CPU (see forward_logits)."""
    return torch.tensor([tokens_BT.shape[1] - 1], device=tokens_BT.device)


def shared_prompt_tokens(attention_RT: Tensor, group_R: Tensor, prompt_width: int) -> Tensor:
    """Tokens a shared-prompt forward runs on: each group's prompt once, plus every row's completion."""
    first_G, _ = first_rows(group_R)
    return attention_RT[first_G, :prompt_width].sum() + attention_RT[:, prompt_width:].sum()


def forward_logits(model: torch.nn.Module, tokens_BT: Tensor, attention_BT: Tensor, keep_last: int = 0) -> Tensor:
    """Logits of the last `keep_last` positions (0: all), `logits_BKV[:, k]` predicting the token
    after position `T - keep_last + k`. Positions come from the attention mask, so left- and
    right-padded rows are both exact. Keeping only the scored positions matters: the output head
    and the log-softmax over the vocabulary are a large share of the cost."""
    position_ids_BT = (attention_BT.long().cumsum(-1) - 1).clamp(min=0)
    T = tokens_BT.shape[1]
    # Index tensor, not an int: transformers slices hidden states with it, and an int's slice is a
    # strided view that sends the output head down a batched-matmul path copying its weight per
    # row (measured 2.2 s instead of 0.9 s per forward on SmolLM2, batch 16).
    keep = torch.arange(T - keep_last, T, device=tokens_BT.device) if 0 < keep_last < T else 0
    return model(input_ids=tokens_BT, attention_mask=attention_BT, position_ids=position_ids_BT, logits_to_keep=keep).logits


def masked_states(
    model: torch.nn.Module, tokens_BT: Tensor, attention_BT: Tensor, mask_BT: Tensor
) -> tuple[Tensor, torch.nn.Linear | None, Tensor]:
    """`(states_NX, head, target_N)` at the positions predicting a masked token (a demonstration's,
    a completion's), in row order: the last hidden states and the plain head (`head.map_logits_in_chunks`
    makes the logits), or the logits and None where the head is not plain; and the tokens they predict."""
    first = first_masked(mask_BT)
    predicts_BS = mask_BT[:, first:]
    target_N = tokens_BT[:, first:][predicts_BS]
    head = plain_head(model)
    if head is None:
        logits_BSV = forward_logits(model, tokens_BT, attention_BT, keep_last=tokens_BT.shape[1] - first + 1)
        return logits_BSV[:, :-1][predicts_BS], None, target_N
    return forward_hidden(model, tokens_BT, attention_BT)[:, first - 1 : -1][predicts_BS], head, target_N


def completion_states(model: torch.nn.Module, rollout) -> tuple[Tensor, torch.nn.Linear | None]:
    """`masked_states` at the positions predicting `rollout`'s completion tokens: what a
    full-vocabulary divergence needs (`head.divergence_in_chunks`)."""
    states_NX, head, _ = masked_states(model, rollout.tokens_BT, rollout.attention_BT, rollout.mask_BT)
    return states_NX, head


def token_logp(
    model: torch.nn.Module, tokens_BT: Tensor, attention_BT: Tensor, temperature: float = 1.0,
    first_scored: int | None = None,
) -> Tensor:  # fmt: skip
    """`logp_BT[b, t] = log p(tokens[b, t] | tokens[b, <t])` at `temperature`, for t >=
    `first_scored` (default 1: position 0 has no context); earlier positions get 0. The output head
    runs in chunks of positions (`lit_posttrain.head`) where the model's head allows it."""
    first = max(first_scored or 1, 1)
    head = plain_head(model)
    if head is None:
        logits_BSV = forward_logits(model, tokens_BT, attention_BT, keep_last=tokens_BT.shape[1] - first + 1)
        logits_BSV = logits_BSV[:, :-1]  # S: positions first - 1 .. T - 2, predicting tokens first .. T - 1
        if temperature != 1.0:
            logits_BSV = logits_BSV / temperature
        logp_BS = gather_logp(logits_BSV, tokens_BT[:, first:])
    else:
        hidden_BSH = forward_hidden(model, tokens_BT, attention_BT)[:, first - 1 : -1]
        logp_BS = head_logp(hidden_BSH, head, tokens_BT[:, first:], temperature)
    return torch.nn.functional.pad(logp_BS, (first, 0))


def forward_hidden(model: torch.nn.Module, tokens_BT: Tensor, attention_BT: Tensor, **kwargs) -> Tensor:
    """`hidden_BTH`: the last hidden states, what the output head reads, at every position; the
    head itself runs on the last position only. `kwargs` go to the model (a cache)."""
    kwargs.setdefault("position_ids", (attention_BT.long().cumsum(-1) - 1).clamp(min=0))
    out = model(
        input_ids=tokens_BT, attention_mask=attention_BT, output_hidden_states=True,
        logits_to_keep=last_position(tokens_BT), **kwargs,
    )  # fmt: skip
    return out.hidden_states[-1]


def shared_prompt_logp(
    model: torch.nn.Module, tokens_RT: Tensor, attention_RT: Tensor, group_R: Tensor, width: int,
    temperature: float = 1.0, prefix_S: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """`logp_RT` of the completion tokens (0 elsewhere) of rows laid out as a rollout's: a
    left-padded prompt in the first `width` columns, the same for every row of a group (rows of
    a group contiguous), then a right-padded completion. Each group's prompt runs once and its
    key/value cache is shared by the group's rows; gradients flow through it when enabled.

    `prefix_S`: tokens that come before every prompt and are left out of `tokens_RT` (a chat
    template's system turn, common to every question): they run once for the whole batch."""
    first_G, prompt_of_R = first_rows(group_R)
    completion_RC, completion_attention_RC = tokens_RT[:, width:], attention_RT[:, width:]
    prompt_GW, prompt_attention_GW = tokens_RT[first_G, :width], attention_RT[first_G, :width]
    if prefix_S is None:
        prompt_logits_GV, cache, position_GW = prefill(model, prompt_GW, prompt_attention_GW)
    else:
        prompt_logits_GV, cache, position_GW = _prefill_after_prefix(model, prefix_S, prompt_GW, prompt_attention_GW)
        attention_RT = torch.cat([attention_RT.new_ones(len(attention_RT), len(prefix_S)), attention_RT], 1)
    cache.batch_select_indices(prompt_of_R)  # a differentiable gather: gradients reach the prompt pass
    position_RC = position_GW[prompt_of_R, -1:] + 1 + torch.arange(completion_RC.shape[1], device=tokens_RT.device)
    # The prompt's last position predicts the first completion token; completion position c
    # predicts token c + 1.
    first_R1 = gather_logp(prompt_logits_GV[prompt_of_R, None] / temperature, completion_RC[:, :1])
    head = plain_head(model)
    if head is None:
        completion_logits_RCV = model(
            input_ids=completion_RC, attention_mask=attention_RT, position_ids=position_RC,
            past_key_values=cache, use_cache=True,
        ).logits  # fmt: skip
        logits_RCV = completion_logits_RCV[:, :-1]
        rest_RC = gather_logp(logits_RCV / temperature if temperature != 1.0 else logits_RCV, completion_RC[:, 1:])
    else:
        hidden_RCH = forward_hidden(model, completion_RC, attention_RT, position_ids=position_RC, past_key_values=cache, use_cache=True)
        rest_RC = head_logp(hidden_RCH[:, :-1], head, completion_RC[:, 1:], temperature)
    logp_RC = torch.cat([first_R1, rest_RC], 1) * completion_attention_RC
    return torch.nn.functional.pad(logp_RC, (width, 0))


def _prefill_after_prefix(model: torch.nn.Module, prefix_S: Tensor, prompt_GW: Tensor, attention_GW: Tensor):
    """`prefill` of left-padded prompts that all follow `prefix_S`: the prefix runs once, its
    cache is copied to every prompt, and the prompts continue it (padding between the two is
    masked; positions count real tokens only). Returns what `prefill` does, positions included."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=prefix_S[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(torch.zeros(len(prompt_GW), dtype=torch.long, device=prompt_GW.device))
    position_GW = len(prefix_S) + (attention_GW.cumsum(-1) - 1).clamp(min=0)
    attention_GA = torch.cat([attention_GW.new_ones(len(attention_GW), len(prefix_S)), attention_GW], 1)
    out = model(
        input_ids=prompt_GW, attention_mask=attention_GA, position_ids=position_GW,
        past_key_values=cache, use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    return out.logits[:, -1], cache, position_GW
