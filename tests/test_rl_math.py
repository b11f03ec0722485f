"""RLOO and GRPO maths (rlhfkit.rl_math) against values derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit import rl_math as rl


def test_rloo_advantages_leave_one_out():
    # One prompt, k = 3, rewards 1, 2, 6:
    #   A_0 = 1 - (2 + 6) / 2 = -3;  A_1 = 2 - (1 + 6) / 2 = -1.5;  A_2 = 6 - (1 + 2) / 2 = 4.5
    # A second prompt, rewards 0, 0, 3: A = 0 - 1.5, 0 - 1.5, 3 - 0 = -1.5, -1.5, 3.
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    want = torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    assert torch.allclose(rl.rloo_advantages(r, 3), want)
    # = k / (k - 1) (r - mean): mean 3 -> 1.5 * (-2, -1, 3) = (-3, -1.5, 4.5)
    with pytest.raises(ValueError):
        rl.rloo_advantages(r, 1)
    with pytest.raises(ValueError):
        rl.rloo_advantages(r, 4)  # 6 episodes are not groups of 4


def test_group_advantages_standardised_within_each_group():
    # Group (1, 3): mean 2, unbiased std sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2);
    #   A = (-1, 1) / (sqrt(2) + 1e-4).
    # Group (5, 5): std 0: A = (0, 0), no signal.
    s = torch.tensor([1.0, 3.0, 5.0, 5.0])
    d = math.sqrt(2) + 1e-4
    assert torch.allclose(rl.group_advantages(s, 2), torch.tensor([-1 / d, 1 / d, 0.0, 0.0]))
    # Dr. GRPO: centred only.
    assert torch.allclose(rl.group_advantages(s, 2, scale=False),
                          torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_k3_kl():
    # d = ref - logp. logp = log 0.5, ref = log 0.25: d = -log 2,
    #   k3 = exp(-log 2) - (-log 2) - 1 = 0.5 + 0.6931 - 1 = 0.1931.  Equal: 0.
    logp = torch.tensor([math.log(0.5), -1.0])
    ref = torch.tensor([math.log(0.25), -1.0])
    assert torch.allclose(rl.k3_kl(logp, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0]))


def test_sequence_kl_sums_the_masked_tokens():
    kl = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.allclose(rl.sequence_kl(kl, mask), torch.tensor([0.3, 6.0]))


def test_rloo_loss_sequence_ratio_clipped():
    # Response 0: token log-ratios 0.1 + 0.2 (third token masked) = 0.3, ratio e^0.3 = 1.3499,
    #   A = 2 > 0: clipped at 1.2 -> loss max(-2 * 1.3499, -2 * 1.2) = -2.4 (clipped).
    # Response 1: log-ratio 0, ratio 1, A = -1 -> loss 1.
    # Sum / 2 responses = (-2.4 + 1) / 2 = -0.7; clipfrac 1/2; approxkl 0.5 * 0.09 / 2.
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.2, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, st = rl.rloo_loss(logp, old, torch.tensor([2.0, -1.0]), mask, 0.2, 2)
    assert loss.item() == pytest.approx(-0.7, abs=1e-6)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    assert st["approxkl"].item() == pytest.approx(0.5 * 0.09 / 2, rel=1e-5)


def test_token_weights_of_each_loss_type():
    # Two responses of 2 and 4 tokens (T = 4), max length 8.
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # grpo: 1 / (len_i * N): 1/4 per token of response 0, 1/8 of response 1 (each row sums 1/2)
    w = rl.token_weights(mask, "grpo", 2, 6, 8)
    assert torch.allclose(w, torch.tensor([[0.25, 0.25, 0, 0], [0.125] * 4]))
    # dr_grpo: 1 / (N * max_length) = 1/16 per real token
    assert torch.allclose(rl.token_weights(mask, "dr_grpo", 2, 6, 8), mask / 16)
    # dapo: 1 / total tokens = 1/6
    assert torch.allclose(rl.token_weights(mask, "dapo", 2, 6, 8), mask / 6)
    with pytest.raises(ValueError, match="grpo, dr_grpo, dapo"):
        rl.token_weights(mask, "bnpo", 2, 6, 8)


def test_grpo_loss_by_hand():
    # One response, 2 tokens, weights 1/2 each (dapo over 2 tokens), cliprange 0.2, A = 1.
    # Token 0: log-ratio 0 -> ratio 1 -> surrogate -1; logp = ref -> k3 = 0.
    # Token 1: log-ratio log 1.5 -> ratio 1.5, clipped 1.2 -> max(-1.5, -1.2) = -1.2 (clipped);
    #   ref - logp = -log 1.5 (ref = old): k3 = 1/1.5 + log 1.5 - 1 = 0.07213.
    # loss = 0.5 * (-1) + 0.5 * (-1.2 + 0.1 * 0.07213) = -1.1 + 0.0036065
    old = torch.tensor([[-1.0, -2.0]])
    logp = torch.tensor([[-1.0, -2.0 + math.log(1.5)]])
    w = torch.tensor([[0.5, 0.5]])
    k3 = 1 / 1.5 + math.log(1.5) - 1
    loss, st = rl.grpo_loss(logp, old, old, torch.tensor([1.0]), w, 0.2, 0.1)
    assert loss.item() == pytest.approx(-1.1 + 0.05 * k3, abs=1e-6)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    assert st["kl"].item() == pytest.approx(0.5 * k3, rel=1e-5)
    # No reference (kl_coeff = 0 loads none): no KL term.
    loss0, _ = rl.grpo_loss(logp, old, None, torch.tensor([1.0]), w, 0.2, 0.1)
    assert loss0.item() == pytest.approx(-1.1, abs=1e-6)


def test_grpo_loss_gradient_of_the_kl_term():
    # d k3 / d logp = d/dlogp [exp(ref - logp) - (ref - logp) - 1] = -exp(ref - logp) + 1.
    # logp = 0, ref = log 2: gradient 1 - 2 = -1; with A = 0 only the KL term acts:
    # d loss / d logp = w * kl_coeff * (-1) = 1 * 0.5 * -1 = -0.5.
    logp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = rl.grpo_loss(logp, torch.zeros(1, 1), torch.full((1, 1), math.log(2)),
                           torch.zeros(1), torch.ones(1, 1), 0.2, 0.5)
    loss.backward()
    assert logp.grad.item() == pytest.approx(-0.5, abs=1e-6)
