"""The maths of PPO for language models, as pure functions on tensors.

Shapes: B = responses in the batch, T = response tokens (the longest response; shorter
ones are padded on the right), V = vocabulary. `mask` is (B, T) with 1 for the tokens the
policy generated (up to and including the first EOS) and 0 for padding after it; it is
contiguous from the left, so a response's last real token is at `mask.sum(1) - 1`.

The formulas follow OpenAI's lm-human-preferences (Ziegler et al. 2019) as described in
"The N Implementation Details of RLHF with PPO" (Huang et al. 2023); the names follow TRL
(kl_coeff, cliprange, vf_coef, gamma, lam). Nothing here knows about models or processes:
`masked_moments` takes an optional `all_reduce` so whitening can use the statistics of the
global batch under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-8  # added to the variance before dividing, as in lm-human-preferences


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`: (B, T, V), (B, T) -> (B, T). Computed in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: (B, T, V) -> (B, T).

    H = logsumexp(z) - sum_v softmax(z)_v z_v (exact, not the sampled estimate).
    """
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1)


def response_mask(responses: torch.Tensor, eos_ids: int | list[int] | None) -> torch.Tensor:
    """1 for every token up to and including the first EOS, 0 after it: (B, T) -> (B, T).

    `eos_ids`: one id or several (models with an end-of-turn token besides EOS). A
    response without EOS keeps all T tokens. The EOS itself is kept: the policy chose to
    stop, and that choice is rewarded or penalised like any other token.
    """
    if eos_ids is None or eos_ids == []:
        return torch.ones_like(responses, dtype=torch.float32)
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device).reshape(-1))
    is_eos = is_eos.long()
    eos_before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).float()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                count: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1.

    `count` replaces the number of masked positions in the denominator: the training loop
    passes the token count of the whole minibatch (summed over micro-batches and ranks),
    so summed micro-batch losses equal the minibatch mean exactly.
    """
    if count is not None:
        return masked_sum(x, mask, dim) / count
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor,
                   all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the masked entries of `x` (any shape, same as mask).

    `all_reduce` sums a tensor over processes (None: one process), so the moments are
    those of the global batch, as if every rank's entries were in one tensor.
    """
    sums = torch.stack([masked_sum(x, mask), masked_sum(x * x, mask), mask.sum()]).double()
    if all_reduce is not None:
        sums = all_reduce(sums)
    total, total_sq, n = sums
    mean = total / n
    var = (total_sq / n - mean * mean).clamp(min=0)
    if n > 1:
        var = var * n / (n - 1)  # Bessel's correction, as TRL's masked_var
    return mean.to(x.dtype), var.to(x.dtype)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding stays 0. Any shape, same as mask.

    `shift_mean=False` rescales but keeps the mean (used for `whiten_rewards`, so a
    positive reward stays positive on average).
    """
    mean, var = masked_moments(x, mask, all_reduce)
    out = (x - mean) * torch.rsqrt(var + EPS)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor,
                 estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens: (B, T) -> (B, T).

    k1 = logp - ref_logp: unbiased, can be negative per token (lm-human-preferences).
    k3 = (r - 1) - log r with r = p_ref / p: unbiased and never negative, lower variance
    (Schulman, "Approximating KL divergence", 2020).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                      kl_coeff: float) -> torch.Tensor:
    """Per-token rewards: -kl_coeff * kl at every token, plus the score at the last one.

    scores (B,), kl (B, T), mask (B, T) -> rewards (B, T), 0 on padding.
    """
    rewards = -kl_coeff * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response.

    rewards, values, mask (B, T) -> advantages (B, T), returns (B, T) = advantages + values.
    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};
    the value after the last real token is 0 (the episode ends there).
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float, count=None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean of max(-A * ratio, -A * clip(ratio, 1 +- cliprange)).

    logp, old_logp, advantages, mask (B, T) -> scalar loss and stats (clipfrac: share of
    tokens where the clipped term is the larger; approxkl: 0.5 * mean (logp - old)^2).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, count=count)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask, count=count),
                 "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask, count=count)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float, count=None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_clipped - R)^2), where
    V_clipped = old_V + clip(V - old_V, +- cliprange_value). (B, T) each -> scalar, stats."""
    clipped_values = old_values + torch.clamp(values - old_values,
                                              -cliprange_value, cliprange_value)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask, count=count)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((err_clipped > err).float(), mask, count=count)}
    return loss, stats


@dataclass
class KLController:
    """The KL coefficient: fixed, or adaptive when `target` is set.

    Adaptive (Ziegler et al. 2019, sec. 2.2): after each step with mean sequence KL `kl`
    over `n` samples, e = clip(kl / target - 1, -0.2, 0.2) and
    value *= 1 + e * n / horizon, so the KL drifts towards `target` over ~horizon samples.
    """

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon
        return self.value
