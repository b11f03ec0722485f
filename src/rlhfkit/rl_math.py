"""The maths of RLOO and GRPO, as pure functions on tensors (PPO's are in `ppo_math`).

Shapes: E = episodes = prompts x k, where k = `num_generations` responses per prompt, laid
out prompt by prompt (episodes i*k .. i*k + k - 1 share prompt i); T = response tokens;
`mask` (E, T) as in `ppo_math` (1 up to and including the first EOS).

- RLOO (Ahmadian et al. 2024, "Back to Basics"; TRL's RLOOTrainer): the sequence reward
  is the score minus kl_coeff x the response's KL to the reference; the baseline of each
  response is the mean reward of the other k - 1 responses to its prompt; the ratio is a
  sequence's (sum of token logprobs), clipped as PPO's.
- GRPO (Shao et al. 2024, DeepSeekMath; TRL's GRPOTrainer): the advantage of a response is
  its score standardised within its group, the same for each of its tokens; the ratio is
  per token, clipped; the KL to the reference is a loss term (the k3 estimator) weighted by
  kl_coeff. `loss_type` picks how token losses are averaged: "grpo" (each response's mean,
  then the mean over responses), "dr_grpo" (Liu et al. 2025: the sum over a constant
  responses x max length, and no division by the group std), "dapo" (Yu et al. 2025: the
  mean over every token of the batch).
"""

from __future__ import annotations

import torch

from rlhfkit.params import LOSS_TYPES

GROUP_STD_EPS = 1e-4  # TRL's GRPOTrainer: advantages / (std + 1e-4)


def grouped(x: torch.Tensor, k: int) -> torch.Tensor:
    """(E,) -> (E / k, k): one row per prompt."""
    if k < 1 or x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} episodes do not split into groups of {k}")
    return x.reshape(-1, k)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out: A_i = r_i - mean of the other k - 1 rewards of its prompt.
    (E,) -> (E,). Equals k / (k - 1) x (r_i - group mean); needs k >= 2."""
    if k < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt")
    g = grouped(rewards, k)
    baseline = (g.sum(1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def group_advantages(scores: torch.Tensor, k: int, scale: bool = True) -> torch.Tensor:
    """GRPO: (r_i - group mean) / (group std + 1e-4); `scale=False` (Dr. GRPO) keeps
    r_i - group mean. The std is the unbiased one (TRL's). (E,) -> (E,); needs k >= 2."""
    if k < 2:
        raise ValueError("GRPO needs at least 2 responses per prompt")
    g = grouped(scores, k)
    centred = g - g.mean(1, keepdim=True)
    if scale:
        centred = centred / (g.std(1, keepdim=True) + GROUP_STD_EPS)
    return centred.reshape(-1)


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A response's KL to the reference: the sum of its per-token estimates. (E, T) -> (E,)."""
    return (kl * mask).sum(1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference), differentiable in `logp`:
    exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman 2020; GRPO's KL term). (E, T)."""
    d = ref_logp - logp
    return torch.expm1(d) - d


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, cliprange: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a loss, elementwise: max(-A r, -A clip(r, 1 +- eps)) with
    r = exp(log_ratio); also whether the clipped term was the larger (for clipfrac).
    Any shape (advantages broadcast)."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def rloo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, cliprange: float, num_sequences: float | torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO's loss (TRL's RLOOTrainer): the clipped surrogate of each response's sequence
    ratio exp(sum_t logp - sum_t old_logp), summed over these responses / `num_sequences`
    (the minibatch's response count over micro-batches and ranks, so pieces add up to the
    minibatch mean). logp, old_logp, mask (E, T); advantages (E,) -> scalar, stats."""
    log_ratio = ((logp - old_logp) * mask).sum(1)
    loss, was_clipped = clipped_surrogate(log_ratio, advantages, cliprange)
    with torch.no_grad():
        stats = {"clipfrac": was_clipped.float().sum() / num_sequences,
                 "approxkl": 0.5 * (log_ratio ** 2).sum() / num_sequences}
    return loss.sum() / num_sequences, stats


def token_weights(mask: torch.Tensor, loss_type: str, num_sequences, num_tokens,
                  max_length: int) -> torch.Tensor:
    """How much each token's loss counts in GRPO's average, so that sum(w * loss) is:
    grpo    mean over responses of each response's token mean: w = 1 / (len_i x N);
    dr_grpo sum / (N x max_length): w = 1 / (N x max_length);
    dapo    mean over all tokens: w = 1 / total tokens.
    N and the total are the minibatch's (over micro-batches and ranks). (E, T) -> (E, T)."""
    if loss_type == "grpo":
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * num_sequences)
    if loss_type == "dr_grpo":
        return mask / (num_sequences * max_length)
    if loss_type == "dapo":
        return mask / num_tokens
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, weights: torch.Tensor, cliprange: float,
              kl_coeff: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss: sum over tokens of weights x (clipped per-token surrogate with the
    response's advantage + kl_coeff x k3 KL to the reference). logp, old_logp, ref_logp,
    weights (E, T); advantages (E,). ref_logp None: no KL term. -> scalar, stats."""
    per_token, was_clipped = clipped_surrogate(logp - old_logp, advantages[:, None], cliprange)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = (weights * (per_token + kl_coeff * kl)).sum()
    with torch.no_grad():
        stats = {"clipfrac": (weights * was_clipped.float()).sum(),
                 "kl": (weights * kl).sum(),
                 "approxkl": 0.5 * (weights * (logp - old_logp) ** 2).sum()}
    return loss, stats
