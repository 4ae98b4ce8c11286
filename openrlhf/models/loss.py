"""Losses. Torch only: importing this module must not import deepspeed, transformers or ray.

Every preference loss takes per-sequence log-probs (sum over response tokens) as
:class:`PairLogps` (one per model: policy, reference, teacher) and returns a
:class:`PreferenceLossOutput` holding the scalar loss and the per-pair quantities the
trainers log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class GPTLMLoss(nn.Module):
    """Next-token negative log-likelihood over response tokens.

    ``normalizer`` lets a trainer divide by the response-token count of the whole
    optimizer step (all micro-batches, all ranks) instead of this micro-batch's, which
    makes the loss curve independent of how the global batch is split.
    """

    def forward(self, token_logps: torch.Tensor, loss_mask: torch.Tensor, normalizer: Optional[float] = None) -> torch.Tensor:
        mask = loss_mask.to(token_logps.dtype)
        total = -(token_logps * mask).sum()
        denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
        return total / denom


class KDLoss(nn.Module):
    """Token-level forward KL(teacher || student) over response tokens (needs a shared vocabulary)."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise ValueError(
                f"token-level KD needs one vocabulary: student logits have {student_logits.shape[-1]} entries, "
                f"teacher logits {teacher_logits.shape[-1]}"
            )
        t_logp = F.log_softmax(teacher_logits.float(), dim=-1)
        s_logp = F.log_softmax(student_logits.float(), dim=-1)
        per_token = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
        mask = loss_mask.to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class PairLogps:
    """Sequence log-probs of one model for B pairs: ``chosen`` [B] and ``rejected`` [B]."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    @classmethod
    def split(cls, seq: torch.Tensor) -> "PairLogps":
        """A chosen-first batch [2B] (rows 0..B-1 chosen, B..2B-1 rejected; see
        ``preference_collate``) -> its two halves."""
        if seq.shape[0] % 2:
            raise ValueError(f"a chosen-first pair batch has an even number of rows, got {seq.shape[0]}")
        b = seq.shape[0] // 2
        return cls(seq[:b], seq[b:])


@dataclass
class PreferenceLossOutput:
    """Per-pair tensors are shape [B]; ``loss`` is the mean over pairs."""

    loss: torch.Tensor
    sigmoid_input: torch.Tensor  # z, the argument of the sigmoid (not model logits)
    chosen_reward: torch.Tensor  # beta * (log pi - log ref) of the chosen response (zeros when beta = 0)
    reject_reward: torch.Tensor
    teacher_chosen_reward: Optional[torch.Tensor] = None  # teacher_beta * (log pi - log te)
    teacher_reject_reward: Optional[torch.Tensor] = None

    def metrics(self) -> dict:
        """Batch means of the logged quantities, as python floats."""
        out = {
            "loss": self.loss.item(),
            "chosen_reward": self.chosen_reward.mean().item(),
            "reject_reward": self.reject_reward.mean().item(),
            "margin": (self.chosen_reward - self.reject_reward).mean().item(),
            "acc": (self.sigmoid_input > 0).float().mean().item(),
        }
        if self.teacher_chosen_reward is not None:
            out["teacher_chosen_reward"] = self.teacher_chosen_reward.mean().item()
            out["teacher_reject_reward"] = self.teacher_reject_reward.mean().item()
        return out


def _sigmoid_loss(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log sigmoid(z), or its conservative (label-smoothed) form."""
    if label_smoothing == 0.0:
        return -F.logsigmoid(z)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


class DPOLoss(nn.Module):
    """DPO (sigmoid), conservative DPO (label smoothing) and IPO.

    z = beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))).
    sigmoid: -log sigmoid(z). IPO: (h - 1/(2 beta))^2 with h = z / beta.
    """

    def __init__(self, beta: float, label_smoothing: float = 0.0, ipo: bool = False) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"--model.beta must be >= 0, got {beta}")
        if ipo and beta == 0:
            raise ValueError("IPO needs --model.beta > 0")
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.ipo = ipo

    def forward(self, policy: PairLogps, reference: PairLogps) -> PreferenceLossOutput:
        r_w = policy.chosen - reference.chosen
        r_l = policy.rejected - reference.rejected
        h = r_w - r_l
        z = self.beta * h
        if self.ipo:
            losses = (h - 1.0 / (2.0 * self.beta)) ** 2
        else:
            losses = _sigmoid_loss(z, self.label_smoothing)
        return PreferenceLossOutput(
            loss=losses.mean(),
            sigmoid_input=z,
            chosen_reward=(self.beta * r_w).detach(),
            reject_reward=(self.beta * r_l).detach(),
        )


class DADPOLoss(nn.Module):
    """daDPO (Eq. 10): -log sigmoid(beta * (r_w - r_l) + teacher_beta * (rt_w - rt_l)).

    r = log pi - log ref, rt = log pi - log te, w = teacher response, l = student response.
    teacher_beta = 0 is DPO bit for bit; beta = 0 is DPO with the teacher as the reference
    (rDPO), and then the reference log-probs may be ``None`` (no reference model at all).
    """

    def __init__(self, beta: float, teacher_beta: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"--model.beta must be >= 0, got {beta}")
        if teacher_beta < 0:
            raise ValueError(f"--teacher.beta must be >= 0, got {teacher_beta}")
        if beta == 0 and teacher_beta == 0:
            raise ValueError("--model.beta and --teacher.beta cannot both be 0")
        self.beta = beta
        self.teacher_beta = teacher_beta
        self.label_smoothing = label_smoothing

    def forward(self, policy: PairLogps, reference: Optional[PairLogps], teacher: PairLogps) -> PreferenceLossOutput:
        if self.beta != 0 and reference is None:
            raise ValueError("reference log-probs are required when --model.beta > 0")
        rt_w = policy.chosen - teacher.chosen
        rt_l = policy.rejected - teacher.rejected
        if reference is None:
            zero = torch.zeros_like(policy.chosen)
            r_w, r_l = zero, zero
            z = self.teacher_beta * (rt_w - rt_l)
        else:
            r_w = policy.chosen - reference.chosen
            r_l = policy.rejected - reference.rejected
            z = self.beta * (r_w - r_l) + self.teacher_beta * (rt_w - rt_l)
        losses = _sigmoid_loss(z, self.label_smoothing)
        return PreferenceLossOutput(
            loss=losses.mean(),
            sigmoid_input=z,
            chosen_reward=(self.beta * r_w).detach(),
            reject_reward=(self.beta * r_l).detach(),
            teacher_chosen_reward=(self.teacher_beta * rt_w).detach(),
            teacher_reject_reward=(self.teacher_beta * rt_l).detach(),
        )
