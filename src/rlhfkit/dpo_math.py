"""DPO's maths, as pure functions (tuning_method "dpo"; `rlhfkit.dpo` is the stage).

Direct Preference Optimization (Rafailov et al. 2023) tunes the policy on preference pairs
with no reward model and no sampling. With pi the policy, ref the reference (the base
model) and, for one pair, log-probabilities summed over each response's tokens:

    h_chosen   = log pi(chosen | prompt)   - log ref(chosen | prompt)
    h_rejected = log pi(rejected | prompt) - log ref(rejected | prompt)

    sigmoid (DPO, eq. 7):  loss = -log sigmoid(beta * (h_chosen - h_rejected))
    ipo (Azar et al. 2023, eq. 17, with TRL's per-token normalisation):
                           loss = (h_chosen / |chosen| - h_rejected / |rejected| - 1 / (2 beta))^2

beta * h is DPO's implicit reward; TRL logs its means (`rewards/chosen`, `rewards/rejected`),
the share of pairs where the chosen one's is higher (`rewards/accuracies`) and the mean
difference (`rewards/margins`); `dpo_statistics` computes the same.

Every function takes per-pair tensors of shape (n,) and returns (n,) (statistics: floats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "ipo")  # PipelineParams.dpo_loss; the names of TRL's loss_type


def log_ratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_chosen, h_rejected): log pi - log ref of each response, (n,) each."""
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             loss: str = "sigmoid", chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair loss (n,) from summed response log-probabilities (n,) of the policy and the
    reference. `ipo` also needs each response's token count (n,): its squared loss would
    otherwise grow with the response length (TRL divides by it; the IPO authors' runs do)."""
    h_c, h_r = log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if loss == "sigmoid":
        return -F.logsigmoid(beta * (h_c - h_r))
    if loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the token counts of both responses")
        delta = h_c / chosen_tokens.clamp(min=1) - h_r / rejected_tokens.clamp(min=1)
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"dpo loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def implicit_rewards(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                     ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards beta * (log pi - log ref) of the chosen and rejected (n,)."""
    h_c, h_r = log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return beta * h_c, beta * h_r


def dpo_statistics(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                   ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                   beta: float) -> dict[str, float]:
    """TRL DPOTrainer's logged statistics of a batch (a tie counts as wrong)."""
    r_c, r_r = implicit_rewards(policy_chosen.detach(), policy_rejected.detach(),
                                ref_chosen, ref_rejected, beta)
    return {"rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
            "rewards/accuracies": (r_c > r_r).float().mean().item(),
            "rewards/margins": (r_c - r_r).mean().item(),
            "logps/chosen": policy_chosen.detach().mean().item(),
            "logps/rejected": policy_rejected.detach().mean().item()}
