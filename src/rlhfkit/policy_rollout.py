"""The RL stage's data: the prompt order, the rollout (one step's episodes, a typed
record) and the TensorBoard text samples. Shared by PPO, RLOO and GRPO (`rlhfkit.policy`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit import ppo_math as pm
from rlhfkit.policy_model import Roles

# -- the prompt loader ------------------------------------------------------------------------

class PromptOrder:
    """Epochs of shuffled prompt indices (seeded); the state is (epoch, position)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.position = n, seed, 0, 0

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self._perm()
            grab = perm[self.position:self.position + k - len(out)]
            out += grab
            self.position += len(grab)
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class Rollout:
    """One step's episodes on this rank: E = batch_size x num_generations / processes, P =
    prompt tokens, T = response tokens (the longest response), L = P + T.

    query_ids, query_mask (E, P): left-padded prompts; responses, mask (E, T): sampled
    tokens and 1 up to the first EOS; ids, attn (E, L): both joined; logprobs,
    ref_logprobs (E, T): of the sampled tokens under the sampling policy and the reference;
    values (E, T): V(s_t) before each token (PPO only, else None); raw_scores (E,): the
    reward model's; scores (E,): after normalisation and missing-EOS penalty (what RL
    maximises); entropy (E,): summed over each response; has_eos (E,)."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor
    attn: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None
    raw_scores: torch.Tensor
    scores: torch.Tensor
    entropy: torch.Tensor
    has_eos: torch.Tensor

    def __len__(self) -> int:
        return self.responses.shape[0]


@torch.no_grad()
def rollout(roles: Roles, cfg, query: dict[str, torch.Tensor], step: int,
            reward_norm: tuple[float, float] | None) -> Rollout:
    """Sample responses to `query` (E prompts, each repeated k times in a row) and
    everything the update needs about them, micro-batch by micro-batch (shapes: `Rollout`).
    `cfg`: the stage's PolicyConfig; reward_norm: (mean, std) of the initial scores."""
    tok = roles.tokenizer
    want_values = cfg.rl_algorithm == "ppo"
    micro = list(micro_slices(query["input_ids"].shape[0], cfg.micro_batch_size))
    # The sampler's logprobs are the old logprobs (no extra policy forward pass); where the
    # value head shares the policy's trunk, its hidden states give the values too (tests
    # check both equal a batched forward pass's within float tolerance).
    samples = [roles.sample(query["input_ids"][s], query["attention_mask"][s],
                            cfg.target_sequence_length, step, with_values=want_values)
               for s in micro]
    width = max(x.tokens.shape[1] for x in samples)

    def cat(name: str, value: float) -> torch.Tensor:  # micro-batches' (b, T_i) -> (E, width)
        return torch.cat([torch.nn.functional.pad(getattr(x, name), (0, width - x.tokens.shape[1]),
                                                  value=value) for x in samples])

    responses, logprobs, entropy = cat("tokens", tok.pad_token_id), cat("logprobs", 0.0), \
        cat("entropy", 0.0)
    values = cat("values", 0.0) if samples[0].values is not None else None
    mask = pm.response_mask(responses, roles.eos_ids)
    ids = torch.cat([query["input_ids"], responses], 1)
    attn = torch.cat([query["attention_mask"], torch.ones_like(responses)], 1)
    ref, sep_values, scores = [], [], []
    for s in micro:
        if roles.has_reference:  # with LoRA the reference costs one forward pass, no memory
            ref_logits = roles.logits(ids[s], attn[s], width, reference=True)
            ref.append(pm.logprobs_from_logits(ref_logits, responses[s]))
            del ref_logits
        else:  # full tuning with kl_coeff = 0: no reference loaded, KL reads 0
            ref.append(logprobs[s])
        if want_values and values is None:  # a separate value adapter: its own pass
            sep_values.append(roles.values(ids[s], attn[s], width))
        reward_in = roles.reward_inputs(query["input_ids"][s], query["attention_mask"][s],
                                        responses[s], mask[s])
        scores.append(roles.scores(**reward_in))
    if sep_values:
        values = torch.cat(sep_values)
    stop = torch.tensor(roles.eos_ids, dtype=torch.long, device=responses.device)
    has_eos = torch.isin(responses, stop).any(1)
    raw = torch.cat(scores)
    return Rollout(query["input_ids"], query["attention_mask"], responses, mask, ids, attn,
                   logprobs, torch.cat(ref), values, raw,
                   shape_scores(raw, has_eos, cfg, reward_norm), (entropy * mask).sum(1),
                   has_eos)


def shape_scores(scores, has_eos, cfg, norm: tuple[float, float] | None):
    """Reward normalisation (gain and bias fitted on the initial policy's samples, as
    lm-human-preferences) and the missing-EOS penalty (TRL's missing_eos_penalty)."""
    if norm is not None:
        scores = (scores - norm[0]) / norm[1]
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
    return scores


def micro_slices(n: int, micro: int | None):
    step = micro or n
    for i in range(0, n, step):
        yield slice(i, min(i + step, n))


def format_samples(tok, roll: Rollout, n: int = 4) -> str:
    """A few prompts and responses of this step as Markdown for TensorBoard's text tab."""
    parts = []
    for i in range(min(n, len(roll))):
        prompt = tok.decode(roll.query_ids[i][roll.query_mask[i].bool()],
                            skip_special_tokens=True)
        response = tok.decode(roll.responses[i][roll.mask[i].bool()], skip_special_tokens=True)
        parts.append(f"**prompt** (end): ...{prompt[-300:]}\n\n**response**: {response}\n\n"
                     f"**score**: {float(roll.scores[i]):.3f}")
    return "\n\n---\n\n".join(parts)
