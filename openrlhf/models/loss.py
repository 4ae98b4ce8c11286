"""Losses. Torch only: importing this module must not import deepspeed, transformers or ray.

Every preference loss takes per-sequence log-probs (sum over response tokens) as
:class:`PairLogps` (one per model: policy, reference, each teacher) and returns a
:class:`PreferenceLossOutput` holding the scalar loss and the per-pair quantities the
trainers log. The token-level KL of the KD baselines works on logits of a shared
vocabulary (:func:`token_kl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


class GPTLMLoss(nn.Module):
    """Next-token negative log-likelihood over response tokens.

    ``normalizer`` lets a trainer divide by the response-token count of the whole
    optimizer step (all micro-batches, all ranks) instead of this micro-batch's, which
    makes the loss curve independent of how the global batch is split.
    """

    def forward(
        self, token_logps: torch.Tensor, loss_mask: torch.Tensor, normalizer: Optional[float] = None
    ) -> torch.Tensor:
        mask = loss_mask.to(token_logps.dtype)
        total = -(token_logps * mask).sum()
        denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
        return total / denom


class _TokenKL(torch.autograd.Function):
    """KL(teacher || student) per row of ``[N, V]`` logits, in fp32, ``chunk`` rows at a time.

    Neither direction holds an fp32 ``[N, V]`` tensor (the unchunked formula keeps four: both
    log-softmaxes, the teacher's probabilities and their product, then as many gradients): at 152k
    vocabulary x 4k response tokens one of them is 2.5 GB. The backward recomputes the softmaxes of a
    chunk: d/d student = p_s - p_t, d/d teacher = p_t (log p_t - log p_s - KL)."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, chunk: int) -> torch.Tensor:
        out = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
        for s in range(0, student.shape[0], chunk):
            t_logp = F.log_softmax(teacher[s : s + chunk].float(), dim=-1)
            s_logp = F.log_softmax(student[s : s + chunk].float(), dim=-1)
            out[s : s + chunk] = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
        ctx.save_for_backward(student, teacher, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        student, teacher, kl = ctx.saved_tensors
        want_s, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_s = torch.empty_like(student) if want_s else None
        g_t = torch.empty_like(teacher) if want_t else None
        for s in range(0, student.shape[0], ctx.chunk):
            g = grad_out[s : s + ctx.chunk, None].float()
            t_logp = F.log_softmax(teacher[s : s + ctx.chunk].float(), dim=-1)
            s_logp = F.log_softmax(student[s : s + ctx.chunk].float(), dim=-1)
            p_t = t_logp.exp()
            if want_s:
                g_s[s : s + ctx.chunk] = ((s_logp.exp() - p_t) * g).to(g_s.dtype)
            if want_t:
                diff = t_logp.sub_(s_logp).sub_(kl[s : s + ctx.chunk, None])
                g_t[s : s + ctx.chunk] = (p_t * diff * g).to(g_t.dtype)
        return g_s, g_t, None


# fp32 elements of one chunk's temporaries in token_kl (64 MB each).
KL_CHUNK_ELEMENTS = 1 << 24


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """Forward KL(teacher || student) per position, in fp32: sum_v p_t(v) (log p_t(v) - log p_s(v)).

    Both ``[..., V]`` over ONE vocabulary (the same tokenizer); a different last dimension
    is an error, never a silent truncation. Computed ``chunk`` positions at a time (default: as
    many as fit in :data:`KL_CHUNK_ELEMENTS`), see :class:`_TokenKL`; values and gradients are
    those of the formula above."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"token-level KL needs one vocabulary: student logits have {student_logits.shape[-1]} entries, "
            f"teacher logits {teacher_logits.shape[-1]}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"token-level KL: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} cover different positions"
        )
    v = student_logits.shape[-1]
    if chunk is None:
        chunk = max(1, KL_CHUNK_ELEMENTS // max(1, v))
    if student_logits.dim() == 2:  # rows are sliced in place: a view such as logits[:, :vocab_size] is not copied
        return _TokenKL.apply(student_logits, teacher_logits, chunk)
    kl = _TokenKL.apply(student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), chunk)
    return kl.view(student_logits.shape[:-1])


class KDLoss(nn.Module):
    """Token-level forward KL(teacher || student) over response tokens (paper Eq. 2; a shared
    vocabulary). ``normalizer`` as in :class:`GPTLMLoss` (default: this batch's token count)."""

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        loss_mask: torch.Tensor,
        normalizer: Optional[float] = None,
    ) -> torch.Tensor:
        per_token = token_kl(student_logits, teacher_logits)
        mask = loss_mask.to(per_token.dtype)
        denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
        return (per_token * mask).sum() / denom


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
    sigmoid_input: torch.Tensor  # z, the argument of the sigmoid (not model logits); acc = share of z > 0
    chosen_reward: torch.Tensor  # beta * (log pi - log ref) of the chosen response (zeros when beta = 0)
    reject_reward: torch.Tensor
    # (teacher_beta_k * (log pi - log te_k) of chosen, of rejected), one pair per teacher
    teacher_rewards: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def teacher_chosen_reward(self) -> Optional[torch.Tensor]:
        return self.teacher_rewards[0][0] if self.teacher_rewards else None

    @property
    def teacher_reject_reward(self) -> Optional[torch.Tensor]:
        return self.teacher_rewards[0][1] if self.teacher_rewards else None

    def metrics(self) -> dict:
        """Batch means of the logged quantities, as python floats."""
        out = {
            "loss": self.loss.item(),
            "chosen_reward": self.chosen_reward.mean().item(),
            "reject_reward": self.reject_reward.mean().item(),
            "margin": (self.chosen_reward - self.reject_reward).mean().item(),
            "acc": (self.sigmoid_input > 0).float().mean().item(),
        }
        for k, (chosen, rejected) in enumerate(self.teacher_rewards):
            name = teacher_name(k)
            out[f"{name}_chosen_reward"] = chosen.mean().item()
            out[f"{name}_reject_reward"] = rejected.mean().item()
        return out


def teacher_name(k: int) -> str:
    """``teacher`` for the first teacher, ``teacher_2``, ``teacher_3``, ... for the others (the
    prefix of their metrics and cached log-prob columns)."""
    return "teacher" if k == 0 else f"teacher_{k + 1}"


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

    def forward(
        self, policy: PairLogps, reference: PairLogps, teachers: Sequence[PairLogps] = ()
    ) -> PreferenceLossOutput:
        """``teachers``: none (the preference losses share one signature; DADPOLoss reads them)."""
        if teachers:
            raise ValueError(f"DPOLoss takes no teachers' log-probs, got {len(teachers)} (use DADPOLoss)")
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
    """daDPO (Eq. 10): -log sigmoid(beta * (r_w - r_l) + sum_k teacher_beta_k * (rt_w^k - rt_l^k)).

    r = log pi - log ref, rt^k = log pi - log te_k, w = teacher response, l = student response.
    One teacher is the paper's loss; several teachers (``teacher_beta`` a sequence, one per
    teacher) add one weighted log-ratio term each. teacher_beta = 0 is DPO bit for bit;
    beta = 0 is DPO with the teacher as the reference (rDPO), and then the reference
    log-probs may be ``None`` (no reference model at all).
    """

    def __init__(self, beta: float, teacher_beta: Union[float, Sequence[float]], label_smoothing: float = 0.0) -> None:
        super().__init__()
        betas = [float(teacher_beta)] if isinstance(teacher_beta, (int, float)) else [float(b) for b in teacher_beta]
        if beta < 0:
            raise ValueError(f"--model.beta must be >= 0, got {beta}")
        if not betas or any(b < 0 for b in betas):
            raise ValueError(f"--teacher.beta must be >= 0 (one per teacher), got {betas}")
        if beta == 0 and all(b == 0 for b in betas):
            raise ValueError("--model.beta and --teacher.beta cannot both be 0")
        self.beta = beta
        self.teacher_betas = betas
        self.teacher_beta = betas[0]
        self.label_smoothing = label_smoothing

    def forward(
        self, policy: PairLogps, reference: Optional[PairLogps], teacher: Union[PairLogps, Sequence[PairLogps]]
    ) -> PreferenceLossOutput:
        teachers = [teacher] if isinstance(teacher, PairLogps) else list(teacher)
        if len(teachers) != len(self.teacher_betas):
            raise ValueError(f"{len(teachers)} teachers' log-probs for {len(self.teacher_betas)} --teacher.beta values")
        if self.beta != 0 and reference is None:
            raise ValueError("reference log-probs are required when --model.beta > 0")
        ratios = [(policy.chosen - t.chosen, policy.rejected - t.rejected) for t in teachers]
        if reference is None:
            zero = torch.zeros_like(policy.chosen)
            r_w, r_l = zero, zero
            z = None
        else:
            r_w = policy.chosen - reference.chosen
            r_l = policy.rejected - reference.rejected
            z = self.beta * (r_w - r_l)
        for tb, (rt_w, rt_l) in zip(self.teacher_betas, ratios, strict=True):
            term = tb * (rt_w - rt_l)
            z = term if z is None else z + term
        losses = _sigmoid_loss(z, self.label_smoothing)
        return PreferenceLossOutput(
            loss=losses.mean(),
            sigmoid_input=z,
            chosen_reward=(self.beta * r_w).detach(),
            reject_reward=(self.beta * r_l).detach(),
            teacher_rewards=[
                ((tb * rt_w).detach(), (tb * rt_l).detach())
                for tb, (rt_w, rt_l) in zip(self.teacher_betas, ratios, strict=True)
            ],
        )


@dataclass
class KTOLossOutput(PreferenceLossOutput):
    kl: Optional[torch.Tensor] = None  # the reference point z_0 the loss used

    def metrics(self) -> dict:
        out = super().metrics()
        out["acc"] = (self.chosen_reward > self.reject_reward).float().mean().item()
        out["kl"] = float(self.kl) if self.kl is not None else 0.0
        return out


class KTOLoss(nn.Module):
    """KTO (Ethayarajh et al., 2024) on pairs read as unpaired examples: every chosen (teacher)
    response desirable, every rejected (student) response undesirable.

        r    = log pi(y|x) - log ref(y|x)
        z_0  = the KL reference point (given: estimated by the trainer from mismatched
               prompt / response pairs of the batch, clamped at 0, no gradient)
        loss = mean over the 2B examples of
               desirable:   lambda_D * (1 - sigmoid(beta * (r - z_0)))
               undesirable: lambda_U * (1 - sigmoid(beta * (z_0 - r)))

    (``lambda_y - v(x, y)`` of the paper.) ``sigmoid_input`` holds beta * (r - z_0) of the
    desirable examples (for reading the output; ``acc`` is the share of pairs whose desirable
    reward exceeds the undesirable one).
    """

    def __init__(self, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"--model.beta must be > 0 for KTO, got {beta}")
        if desirable_weight < 0 or undesirable_weight < 0:
            raise ValueError("the KTO desirable / undesirable weights must be >= 0")
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def forward(self, policy: PairLogps, reference: PairLogps, kl: torch.Tensor) -> KTOLossOutput:
        kl = torch.as_tensor(kl, dtype=policy.chosen.dtype, device=policy.chosen.device).detach()
        r_w = policy.chosen - reference.chosen
        r_l = policy.rejected - reference.rejected
        desirable = self.desirable_weight * (1.0 - torch.sigmoid(self.beta * (r_w - kl)))
        undesirable = self.undesirable_weight * (1.0 - torch.sigmoid(self.beta * (kl - r_l)))
        loss = torch.cat([desirable, undesirable]).mean()
        return KTOLossOutput(
            loss=loss,
            sigmoid_input=self.beta * (r_w - kl),
            chosen_reward=(self.beta * r_w).detach(),
            reject_reward=(self.beta * r_l).detach(),
            kl=kl,
        )
