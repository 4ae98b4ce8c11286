"""Losses against hand-worked numbers and the method's limits."""

import math
import subprocess
import sys

import pytest
import torch

from openrlhf.models.loss import DADPOLoss, DPOLoss, GPTLMLoss, KDLoss, KTOLoss, PairLogps

# One pair: policy, reference and teacher sequence log-probs.
PC, PR = -10.0, -12.0  # policy chosen / rejected
RC, RR = -11.0, -11.5  # reference
TC, TR = -9.0, -14.0  # teacher


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def pair(chosen, rejected):
    return PairLogps(chosen, rejected)


POLICY, REF, TEACHER = pair(t(PC), t(PR)), pair(t(RC), t(RR)), pair(t(TC), t(TR))


def test_dpo_hand_worked():
    # r_w = -10 - -11 = 1, r_l = -12 - -11.5 = -0.5, z = 0.1 * 1.5 = 0.15
    # -log sigmoid(0.15) = log(1 + e^-0.15) = log(1.860708) = 0.6209570
    out = DPOLoss(beta=0.1)(POLICY, REF)
    assert out.loss.item() == pytest.approx(0.620957047789532, abs=1e-12)
    assert out.chosen_reward.item() == pytest.approx(0.1)
    assert out.reject_reward.item() == pytest.approx(-0.05)
    assert out.metrics()["acc"] == 1.0
    assert out.metrics()["margin"] == pytest.approx(0.15)


def test_dpo_label_smoothing_and_ipo():
    # conservative DPO, eps = 0.1: 0.9 * 0.620957 + 0.1 * log(1 + e^0.15) = 0.635957
    out = DPOLoss(beta=0.1, label_smoothing=0.1)(POLICY, REF)
    assert out.loss.item() == pytest.approx(0.635957047789532, abs=1e-12)
    # IPO: h = 1.5, (h - 1/(2*0.1))^2 = (1.5 - 5)^2 = 12.25
    out = DPOLoss(beta=0.1, ipo=True)(POLICY, REF)
    assert out.loss.item() == pytest.approx(12.25)


def test_dadpo_hand_worked():
    # rt_w = -10 - -9 = -1, rt_l = -12 - -14 = 2
    # z = 0.1 * (1 - -0.5) + 0.5 * (-1 - 2) = 0.15 - 1.5 = -1.35
    # -log sigmoid(-1.35) = log(1 + e^1.35) = log(4.857426) = 1.580509
    out = DADPOLoss(beta=0.1, teacher_beta=0.5)(POLICY, REF, TEACHER)
    assert out.loss.item() == pytest.approx(1.5805085713638753, abs=1e-12)
    assert out.teacher_chosen_reward.item() == pytest.approx(-0.5)
    assert out.teacher_reject_reward.item() == pytest.approx(1.0)
    m = out.metrics()
    assert m["acc"] == 0.0 and m["chosen_reward"] == pytest.approx(0.1)
    assert set(m) >= {
        "loss",
        "acc",
        "chosen_reward",
        "reject_reward",
        "teacher_chosen_reward",
        "teacher_reject_reward",
        "margin",
    }


def _random_logps(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(-50 * torch.rand(n, generator=g)).float() for _ in range(6)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_teacher_beta_zero_is_dpo_bit_for_bit(label_smoothing):
    pc, pr, rc, rr, tc, tr = _random_logps()
    dpo = DPOLoss(beta=0.1, label_smoothing=label_smoothing)(pair(pc, pr), pair(rc, rr))
    dadpo = DADPOLoss(beta=0.1, teacher_beta=0.0, label_smoothing=label_smoothing)(
        pair(pc, pr), pair(rc, rr), pair(tc, tr)
    )
    assert torch.equal(dpo.loss, dadpo.loss)
    assert torch.equal(dpo.sigmoid_input, dadpo.sigmoid_input)


def test_beta_zero_is_dpo_with_teacher_as_reference():
    pc, pr, rc, rr, tc, tr = _random_logps(seed=1)
    rdpo = DADPOLoss(beta=0.0, teacher_beta=0.3)(pair(pc, pr), None, pair(tc, tr))
    dpo_teacher_ref = DPOLoss(beta=0.3)(pair(pc, pr), pair(tc, tr))
    assert torch.equal(rdpo.loss, dpo_teacher_ref.loss)
    # and the reference is truly unused when beta = 0
    with_ref = DADPOLoss(beta=0.0, teacher_beta=0.3)(pair(pc, pr), pair(rc, rr), pair(tc, tr))
    assert torch.allclose(with_ref.loss, rdpo.loss)


def test_dadpo_gradient_matches_paper_analysis():
    # dL/dlog pi(y_w) = -(b1 + b2) sigmoid(-z) / B, dL/dlog pi(y_l) = +(b1 + b2) sigmoid(-z) / B
    pc, pr, rc, rr, tc, tr = [x.double() for x in _random_logps(n=5, seed=2)]
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    b1, b2 = 0.2, 0.7
    out = DADPOLoss(beta=b1, teacher_beta=b2)(pair(pc, pr), pair(rc, rr), pair(tc, tr))
    out.loss.backward()
    scale = (b1 + b2) * torch.sigmoid(-out.sigmoid_input.detach()) / 5
    assert torch.allclose(pc.grad, -scale)
    assert torch.allclose(pr.grad, scale)


def test_dadpo_gradient_through_a_model():
    # The same through a real parameter: grad = -(b1+b2) sigmoid(-z) (grad log pi_w - grad log pi_l).
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True, dtype=torch.float64)
    xw, xl = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    logp = lambda x: torch.nn.functional.logsigmoid(w @ x)  # noqa: E731
    b1, b2 = 0.1, 0.5
    out = DADPOLoss(b1, b2)(pair(logp(xw)[None], logp(xl)[None]), REF, TEACHER)
    (gw,) = torch.autograd.grad(out.loss, w)
    grad_w = torch.autograd.grad(logp(xw), w)[0]
    grad_l = torch.autograd.grad(logp(xl), w)[0]
    expected = -(b1 + b2) * torch.sigmoid(-out.sigmoid_input.detach()) * (grad_w - grad_l)
    assert torch.allclose(gw, expected)


def test_bad_betas_rejected():
    with pytest.raises(ValueError, match="--teacher.beta"):
        DADPOLoss(beta=0.1, teacher_beta=-0.1)
    with pytest.raises(ValueError, match="--model.beta"):
        DADPOLoss(beta=-1.0, teacher_beta=0.1)
    with pytest.raises(ValueError, match="both be 0"):
        DADPOLoss(beta=0.0, teacher_beta=0.0)
    with pytest.raises(ValueError, match="--model.beta"):
        DPOLoss(beta=-0.5)
    with pytest.raises(ValueError, match="reference log-probs"):
        DADPOLoss(0.1, 0.1)(pair(t(1.0), t(1.0)), None, pair(t(1.0), t(1.0)))


def test_dadpo_two_teachers_hand_worked():
    # second teacher: rt2_w = -10 - -10.5 = 0.5, rt2_l = -12 - -11 = -1
    # z = 0.1 * 1.5 + 0.5 * (-1 - 2) + 0.2 * (0.5 - -1) = 0.15 - 1.5 + 0.3 = -1.05
    # -log sigmoid(-1.05) = log(1 + e^1.05) = 1.3500585
    teacher2 = pair(t(-10.5), t(-11.0))
    out = DADPOLoss(beta=0.1, teacher_beta=[0.5, 0.2])(POLICY, REF, [TEACHER, teacher2])
    assert out.loss.item() == pytest.approx(1.3500584796176431, abs=1e-12)
    m = out.metrics()
    assert m["teacher_chosen_reward"] == pytest.approx(-0.5) and m["teacher_2_chosen_reward"] == pytest.approx(0.1)
    assert m["teacher_2_reject_reward"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="2 teachers' log-probs for 1 --teacher.beta"):
        DADPOLoss(beta=0.1, teacher_beta=0.5)(POLICY, REF, [TEACHER, teacher2])


def test_one_teacher_in_a_list_is_single_teacher_dadpo_bit_for_bit():
    pc, pr, rc, rr, tc, tr = _random_logps(seed=3)
    for beta in (0.1, 0.0):
        ref = pair(rc, rr) if beta else None
        single = DADPOLoss(beta=beta, teacher_beta=0.3)(pair(pc, pr), ref, pair(tc, tr))
        listed = DADPOLoss(beta=beta, teacher_beta=[0.3])(pair(pc, pr), ref, [pair(tc, tr)])
        assert torch.equal(single.loss, listed.loss) and torch.equal(single.sigmoid_input, listed.sigmoid_input)


def test_kto_hand_worked():
    # r_w = 1, r_l = -0.5 (as above); beta 0.5, reference point z_0 = 0.2, lambda_D 1, lambda_U 1.5
    # desirable:   1   * (1 - sigmoid(0.5 * (1 - 0.2)))    = 1 - sigmoid(0.4)          = 0.4013123
    # undesirable: 1.5 * (1 - sigmoid(0.5 * (0.2 - -0.5))) = 1.5 * (1 - sigmoid(0.35)) = 0.6200736
    # loss = mean of the two examples = 0.5106930
    out = KTOLoss(beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)(POLICY, REF, t(0.2))
    assert out.loss.item() == pytest.approx(0.5106929857557764, abs=1e-12)
    m = out.metrics()
    assert m["kl"] == pytest.approx(0.2) and m["chosen_reward"] == pytest.approx(0.5)
    assert m["reject_reward"] == pytest.approx(-0.25) and m["acc"] == 1.0


def test_kto_reference_point_gets_no_gradient_and_limits():
    pc = t(-10.0).requires_grad_(True)
    kl = t(0.3).requires_grad_(True)
    out = KTOLoss(beta=1.0)(pair(pc, t(-12.0)), REF, kl)
    out.loss.backward()
    assert kl.grad is None and pc.grad is not None and pc.grad.item() < 0  # raising log pi(y_w) lowers the loss
    # weights 0 switch a side off; a huge reward makes a desirable example cost nothing
    only_u = KTOLoss(beta=1.0, desirable_weight=0.0)(POLICY, REF, t(0.0))
    assert only_u.loss.item() == pytest.approx(0.5 * (1 - 1 / (1 + math.exp(-0.5))), abs=1e-12)
    with pytest.raises(ValueError, match="--model.beta must be > 0 for KTO"):
        KTOLoss(beta=0.0)


def test_pair_split_is_chosen_first_and_refuses_odd_batches():
    both = PairLogps.split(t(1.0, 2.0, 3.0, 4.0))
    assert both.chosen.tolist() == [1.0, 2.0] and both.rejected.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="even number of rows"):
        PairLogps.split(t(1.0, 2.0, 3.0))


def test_gpt_lm_loss_token_mean_and_normalizer():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    # (2 + 3 + 4) / 3 tokens = 3
    assert GPTLMLoss()(logps, mask).item() == pytest.approx(3.0)
    assert GPTLMLoss()(logps, mask, normalizer=9.0).item() == pytest.approx(1.0)


def test_kd_loss_zero_for_same_logits_and_refuses_other_vocab():
    logits = torch.randn(2, 4, 10)
    mask = torch.ones(2, 4)
    assert KDLoss()(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    # KL(p||q) for two fixed distributions, by hand: p=(0.5,0.5), q=(0.25,0.75)
    p = torch.log(torch.tensor([[[0.5, 0.5]]]))
    q = torch.log(torch.tensor([[[0.25, 0.75]]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert KDLoss()(q, p, torch.ones(1, 1)).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="one vocabulary"):
        KDLoss()(torch.randn(1, 2, 10), torch.randn(1, 2, 12), torch.ones(1, 2))
    # a normalizer other than this batch's token count (the optimizer step's, as for SFT)
    one = KDLoss()(q, p, torch.ones(1, 1), normalizer=4.0)
    assert one.item() == pytest.approx(expected / 4, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_token_kl_equals_the_unchunked_formula_in_values_and_gradients(dtype):
    """token_kl runs a few rows at a time (no fp32 [N, V] tensor); its values and its gradients for both
    the student and the teacher logits are those of the plain formula, whatever the chunk, for [N, V]
    rows, a sliced (non-contiguous) view of them and [B, T, V] batches."""
    from openrlhf.models.loss import token_kl

    torch.manual_seed(0)

    def plain(s, t):
        t_logp = torch.log_softmax(t.float(), dim=-1)
        s_logp = torch.log_softmax(s.float(), dim=-1)
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)

    base_s = (torch.randn(11, 40) * 3).to(dtype)
    base_t = (torch.randn(11, 40) * 3).to(dtype)
    for chunk in (1, 3, 11, None):
        for view in (lambda x: x, lambda x: x[:, :37], lambda x: x.view(1, 11, 40)):
            got, want = [], []
            for fn, out in ((lambda s, t, chunk=chunk: token_kl(s, t, chunk), got), (plain, want)):
                s = base_s.clone().requires_grad_(True)
                t = base_t.clone().requires_grad_(True)
                kl = fn(view(s), view(t))
                weights = torch.arange(1, kl.numel() + 1, dtype=torch.float32).view(kl.shape)
                (kl * weights).sum().backward()  # a gradient that differs per row
                out += [kl.detach(), s.grad, t.grad]
            assert got[0].dtype == torch.float32 and got[0].shape == want[0].shape
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, **tol)
    # the teacher frozen (no_grad logits, as in the trainers): only the student gets a gradient
    s = base_s.float().requires_grad_(True)
    token_kl(s, base_t.float(), 4).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="different positions"):
        token_kl(torch.randn(3, 5), torch.randn(4, 5))


def test_loss_module_import_is_light():
    code = (
        "import sys, openrlhf.models.loss\n"
        "bad = [m for m in ('deepspeed', 'transformers', 'ray', 'vllm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
