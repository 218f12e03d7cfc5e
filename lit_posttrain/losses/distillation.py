"""Distillation from a teacher that scores the student's own samples: pure functions."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reverse_kl_advantages(logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, discount: float = 0.0) -> Tensor:
    """Per-token advantage `A_t = -(log pi(o_t) - log pi_T(o_t))`, a one-sample estimate of the
    reverse KL's negative, optionally summed over future tokens with `discount`:
    `A_t = sum_{k >= t} discount^(k - t) a_k`. Detached: an advantage carries no gradient."""
    a_BT = -(logp_BT - teacher_logp_BT).detach() * mask_BT
    if discount == 0.0:
        return a_BT
    T = a_BT.shape[1]
    offset_TT = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # k - t
    weight_TT = torch.where(offset_TT >= 0, discount ** offset_TT.clamp(min=0).to(a_BT.dtype), 0.0).to(a_BT.device)
    return (a_BT @ weight_TT.T) * mask_BT


def generalized_jsd(student_logits_NV: Tensor, teacher_logits_NV: Tensor, beta: float) -> Tensor:
    """Generalized Jensen-Shannon divergence per position, over the full vocabulary (GKD):
    `beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)` with `m = beta * p_T + (1 - beta) * p_S`.
    The end points are the two KLs themselves: `beta = 1` the reverse KL(p_S || p_T), `beta = 0`
    the forward KL(p_T || p_S) (the mixture formula degenerates there, so they are special cases)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized JSD beta must be in [0, 1], got {beta}")
    log_s_NV = torch.log_softmax(student_logits_NV.float(), -1)
    log_t_NV = torch.log_softmax(teacher_logits_NV.float(), -1)
    if beta == 1.0:
        return (log_s_NV.exp() * (log_s_NV - log_t_NV)).sum(-1)
    if beta == 0.0:
        return (log_t_NV.exp() * (log_t_NV - log_s_NV)).sum(-1)
    log_m_NV = torch.logsumexp(torch.stack([log_t_NV + math.log(beta), log_s_NV + math.log(1 - beta)]), dim=0)
    kl_teacher_N = (log_t_NV.exp() * (log_t_NV - log_m_NV)).sum(-1)
    kl_student_N = (log_s_NV.exp() * (log_s_NV - log_m_NV)).sum(-1)
    return beta * kl_teacher_N + (1 - beta) * kl_student_N


def sampled_reverse_kl_loss(
    logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, discount: float, pg_loss, **pg_kwargs
) -> tuple[Tensor, dict[str, Tensor]]:
    """On-policy distillation with one-sample reverse-KL advantages: `reverse_kl_advantages` fed
    through the policy-gradient loss `pg_loss` (`pg_kwargs`: its `old_logp_BT`, `sampler_logp_BT`,
    `counts`). Adds `reverse_kl`, the per-token one-sample estimate before any discounting."""
    mask_BT = mask_BT.to(logp_BT.dtype)
    adv_BT = reverse_kl_advantages(logp_BT, teacher_logp_BT, mask_BT, discount)
    loss, metrics = pg_loss(logp_BT, mask_BT, adv_BT=adv_BT, **pg_kwargs)
    metrics["reverse_kl"] = ((logp_BT - teacher_logp_BT).detach() * mask_BT).sum() / mask_BT.sum().clamp(min=1)
    return loss, metrics


def jsd_loss(jsd_N: Tensor, num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The generalized JSD (`generalized_jsd` at each of N completion positions) summed and divided
    by `num_tokens`, the whole step's completion tokens when these N are part of it (default N).
    The metric `jsd` is these positions' own mean."""
    denominator = torch.as_tensor(len(jsd_N) if num_tokens is None else num_tokens, dtype=jsd_N.dtype).clamp(min=1)
    return jsd_N.sum() / denominator, {"jsd": jsd_N.mean().detach()}
