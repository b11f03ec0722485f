"""PPO maths on tensors small enough to check by hand (the comments show the arithmetic)."""

import math

import pytest
import torch

from rlhfkit import ppo_math as pm


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32),
                          torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_logprobs_and_entropy():
    # Row 0: logits (0, 0, 0, 0) = uniform over 4: log p = -log 4, H = log 4.
    # Row 1: logits (log 3, 0, -inf-ish, ...) -> p = (3/4, 1/4, 0, 0): H = -(.75 ln .75 + .25 ln .25).
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -1e9, -1e9]]])
    tokens = torch.tensor([[2, 1]])
    assert close(pm.logprobs_from_logits(logits, tokens), [[-math.log(4), math.log(0.25)]])
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623
    assert close(pm.entropy_from_logits(logits), [[math.log(4), h1]])


def test_response_mask_keeps_first_eos_only():
    eos = 9
    responses = torch.tensor([[5, 9, 9, 9],   # ends at position 1 (EOS kept)
                              [5, 6, 7, 8],   # never ends: all 4 kept
                              [9, 5, 9, 5]])  # EOS first: only the EOS kept
    assert close(pm.response_mask(responses, eos),
                 [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    # Several stop ids (EOS and an end-of-turn token 7): the first of either ends it.
    assert close(pm.response_mask(responses, [eos, 7]),
                 [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])


def test_masked_mean_and_moments():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # masked entries 1, 2, 3, 4, 5: mean 3; sum of squared deviations 4+1+0+1+4 = 10,
    # unbiased variance 10 / 4 = 2.5.
    assert close(pm.masked_mean(x, mask), 3.0)
    assert close(pm.masked_mean(x, mask, dim=1), [1.5, 4.0])
    assert close(pm.masked_mean(x, mask, count=10), 15 / 10)
    mean, var = pm.masked_moments(x, mask)
    assert close(mean, 3.0) and close(var, 2.5)


def test_moments_over_processes_equal_moments_of_the_concatenation():
    # Two "ranks" hold [1, 2] and [3, 4, 5]; an all_reduce that adds the other rank's
    # sums must give the moments of all five entries (mean 3, var 2.5), not per-rank ones.
    a, ma = torch.tensor([1.0, 2.0]), torch.ones(2)
    b, mb = torch.tensor([3.0, 4.0, 5.0]), torch.ones(3)
    other = torch.stack([b.sum(), (b * b).sum(), mb.sum()]).double()
    mean, var = pm.masked_moments(a, ma, all_reduce=lambda s: s + other)
    assert close(mean, 3.0) and close(var, 2.5)


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # entries 1, 2, 3: mean 2, unbiased var 1 -> whitened (-1, 0, 1), padding 0.
    assert close(pm.whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], tol=1e-4)
    # shift_mean=False keeps the mean: (-1, 0, 1) + 2.
    assert close(pm.whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], tol=1e-4)


def test_kl_estimators():
    # p = 0.5, p_ref = 0.25: k1 = log(0.5 / 0.25) = ln 2 = 0.6931;
    # k3 with r = p_ref / p = 0.5: (0.5 - 1) - ln 0.5 = -0.5 + 0.6931 = 0.1931.
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert close(pm.kl_per_token(logp, ref, "k1"), [math.log(2)])
    assert close(pm.kl_per_token(logp, ref, "k3"), [math.log(2) - 0.5])
    # Where the policy is less likely than the reference, k1 < 0 but k3 >= 0:
    # r = 2: k1 = -ln 2, k3 = (2 - 1) - ln 2 = 0.3069.
    assert close(pm.kl_per_token(ref, logp, "k1"), [-math.log(2)])
    assert close(pm.kl_per_token(ref, logp, "k3"), [1 - math.log(2)])
    with pytest.raises(ValueError):
        pm.kl_per_token(logp, ref, "k2")


def test_penalized_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.5, 1.0, 2.0], [1.0, -1.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    scores = torch.tensor([10.0, 20.0])
    # kl_coeff 0.1: row 0 -> (-0.05, -0.1 + 10, 0 [padding]); row 1 -> (-0.1, 0.1, -0.3 + 20).
    assert close(pm.penalized_rewards(scores, kl, mask, 0.1),
                 [[-0.05, 9.9, 0.0], [-0.1, 0.1, 19.7]])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 5.0 is padding: ignored
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.5
    # delta_2 = 1 + 0.9 * 0 - 0.4 = 0.6                  A_2 = 0.6
    # delta_1 = 0 + 0.9 * 0.4 - 0.2 = 0.16               A_1 = 0.16 + 0.45 * 0.6 = 0.43
    # delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32              A_0 = -0.32 + 0.45 * 0.43 = -0.1265
    # returns = A + V = (0.3735, 0.63, 1.0)
    adv, ret = pm.gae(rewards, values, mask, gamma, lam)
    assert close(adv, [[-0.1265, 0.43, 0.6, 0.0]])
    assert close(ret, [[0.3735, 0.63, 1.0, 0.0]])


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[1.0, 1.0, 1.0]])
    adv, ret = pm.gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    # reward-to-go (6, 5, 3) - V (1, 1, 1)
    assert close(adv, [[5.0, 4.0, 2.0]]) and close(ret, [[6.0, 5.0, 3.0]])


def test_policy_loss_clips_by_hand():
    # Three tokens with old logp 0 and new logp ln(1.5), ln(0.5), ln(1.1); cliprange 0.2.
    # token 0: A = +1, ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clipped term wins)
    # token 1: A = -1, ratio 0.5 -> max(0.5, 0.8) = 0.8     (clipped term wins)
    # token 2: A = +2, ratio 1.1 -> max(-2.2, -2.2) = -2.2  (inside the range: not clipped)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = pm.policy_loss(logp, torch.zeros(1, 3), adv, mask, 0.2)
    assert close(loss, (-1.2 + 0.8 - 2.2) / 3)
    assert close(stats["clipfrac"], 2 / 3)
    # approxkl = 0.5 * mean(ln(1.5)^2, ln(0.5)^2, ln(1.1)^2)
    expected = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert close(stats["approxkl"], expected)


def test_policy_loss_gradient_is_zero_where_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = pm.policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    # token 0 is clipped (no gradient); token 1: d/dlogp of -ratio/2 = -1.1 / 2
    assert close(logp.grad, [[0.0, -0.55]])


def test_value_loss_by_hand():
    # old V = 0, cliprange_value 0.2, returns 1.
    # token 0: V = 0.5 -> clipped V = 0.2; errors (0.25, 0.64): max 0.64 (clipped wins)
    # token 1: V = 0.1 -> clipped V = 0.1; errors (0.81, 0.81): 0.81
    # loss = 0.5 * mean(0.64, 0.81) = 0.3625; clipfrac 1/2
    values = torch.tensor([[0.5, 0.1]])
    loss, stats = pm.value_loss(values, torch.zeros(1, 2), torch.ones(1, 2),
                                torch.ones(1, 2), 0.2)
    assert close(loss, 0.3625)
    assert close(stats["clipfrac"], 0.5)


def test_adaptive_kl_controller_by_hand():
    ctl = pm.KLController(value=0.1, target=6.0, horizon=10000)
    # kl 9 -> error clip(9/6 - 1) = clip(0.5) = 0.2; value *= 1 + 0.2 * 64 / 10000
    assert math.isclose(ctl.update(9.0, 64), 0.1 * (1 + 0.2 * 64 / 10000))
    # kl 3 -> error 3/6 - 1 = -0.5 -> -0.2
    v = ctl.value
    assert math.isclose(ctl.update(3.0, 64), v * (1 - 0.2 * 64 / 10000))
    fixed = pm.KLController(value=0.1)
    assert fixed.update(100.0, 64) == 0.1
