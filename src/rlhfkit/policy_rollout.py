"""The RL stage's data: the prompt order, the rollout (one step's episodes, a typed
record) and the TensorBoard text samples. Shared by PPO, RLOO and GRPO (`rlhfkit.policy`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def piece(self, rows: torch.Tensor) -> Piece:
        """These rows, trimmed to the columns some row needs."""
        p = max(1, int(self.query_mask[rows].sum(1).max()))  # left padding cut
        t = max(1, int(self.mask[rows].sum(1).max()))        # past every row's EOS cut
        return Piece(rows, self.query_ids[rows, -p:], self.query_mask[rows, -p:],
                     self.responses[rows, :t], self.mask[rows, :t])


@dataclass
class Piece:
    """Rows of a rollout for one forward pass (b rows, p prompt and t response columns),
    trimmed of the columns no row needs: prompt columns that are left padding in every row
    and response columns past every row's EOS. Positions count from each row's first real
    token and attention is causal, so the kept positions' logits equal the whole batch's."""

    rows: torch.Tensor        # (b,) indices into the rollout
    query_ids: torch.Tensor   # (b, p)
    query_mask: torch.Tensor  # (b, p)
    responses: torch.Tensor   # (b, t)
    mask: torch.Tensor        # (b, t)

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def width(self) -> int:
        return self.responses.shape[1]

    @property
    def ids(self) -> torch.Tensor:  # (b, p + t), query and response joined
        return torch.cat([self.query_ids, self.responses], 1)

    @property
    def attn(self) -> torch.Tensor:
        return torch.cat([self.query_mask, torch.ones_like(self.responses)], 1)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """A per-token tensor of the whole rollout (E, T) -> this piece's (b, t)."""
        return x[self.rows, :self.width]


def pieces(roll: Rollout, idx: torch.Tensor, micro: int | None, k: int):
    """The micro-batches of the rows `idx` (whole groups: each prompt's k responses in a
    row): at most `micro` rows each, rounded down to whole groups (at least one). With more
    than one piece the groups go longest first, so each piece trims more padding; the summed
    losses do not change (every loss is normalised by the minibatch's counts)."""
    groups = idx.reshape(-1, k)
    slices = list(micro_slices(len(idx), micro, k))  # of rows, on group boundaries
    if len(slices) > 1:
        real = roll.query_mask[groups[:, 0]].sum(1) + roll.mask[groups].sum(2).amax(1)
        groups = groups[torch.argsort(real, descending=True, stable=True)]
    for s in slices:
        yield roll.piece(groups[s.start // k:s.stop // k].reshape(-1))


@torch.no_grad()
def rollout(roles: Roles, cfg, query: dict[str, torch.Tensor], step: int,
            reward_norm: tuple[float, float] | None) -> Rollout:
    """Sample responses to `query` (E prompts, each repeated k times in a row) and
    everything the update needs about them, micro-batch by micro-batch (shapes: `Rollout`).
    `cfg`: the stage's PolicyConfig; reward_norm: (mean, std) of the initial scores."""
    tok = roles.tokenizer
    want_values = cfg.rl_algorithm == "ppo"
    k = cfg.k if roles.share_prompts else 1  # micro-batches of whole groups of k rows
    micro = list(micro_slices(query["input_ids"].shape[0], cfg.micro_batch_size, k))
    # The sampler's logprobs are the old logprobs (no extra policy forward pass); where the
    # value head shares the policy's trunk, its hidden states give the values too (tests
    # check both equal a batched forward pass's within float tolerance).
    samples = [roles.sample(query["input_ids"][s], query["attention_mask"][s],
                            cfg.target_sequence_length, step, with_values=want_values, k=k)
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
    scores = []
    for s in micro:
        reward_in = roles.reward_inputs(query["input_ids"][s], query["attention_mask"][s],
                                        responses[s], mask[s])
        scores.append(roles.scores(**reward_in))
    stop = torch.tensor(roles.eos_ids, dtype=torch.long, device=responses.device)
    has_eos = torch.isin(responses, stop).any(1)
    raw = torch.cat(scores)
    roll = Rollout(query["input_ids"], query["attention_mask"], responses, mask, ids, attn,
                   logprobs, logprobs, values, raw, shape_scores(raw, has_eos, cfg, reward_norm),
                   (entropy * mask).sum(1), has_eos)
    return _reference_and_values(roles, roll, cfg, separate_values=want_values and values is None)


def _reference_and_values(roles: Roles, roll: Rollout, cfg, separate_values: bool) -> Rollout:
    """The reference's log-probs of the sampled tokens and (a separate value adapter) the
    values, piece by piece: a prompt's k responses share one prompt pass. Without a
    reference (full tuning, kl_coeff = 0) the KL reads 0; past a piece's trimmed width
    (after every row's EOS) the reference copies the sampler's log-probs (KL 0 there)."""
    ref = roll.logprobs.clone()
    values = torch.zeros_like(roll.logprobs) if separate_values else roll.values
    for p in pieces(roll, torch.arange(len(roll)), cfg.micro_batch_size, cfg.k):
        if roles.has_reference:  # with LoRA the reference costs one forward pass, no memory
            ref_logits = roles.response_logits(p, cfg.k, reference=True)
            ref[p.rows, :p.width] = pm.logprobs_from_logits(ref_logits, p.responses)
            del ref_logits
        if separate_values:  # a separate value adapter: its own pass
            values[p.rows, :p.width] = roles.values(p.ids, p.attn, p.width)
    return replace(roll, ref_logprobs=ref, values=values)


def shape_scores(scores, has_eos, cfg, norm: tuple[float, float] | None):
    """Reward normalisation (gain and bias fitted on the initial policy's samples, as
    lm-human-preferences) and the missing-EOS penalty (TRL's missing_eos_penalty)."""
    if norm is not None:
        scores = (scores - norm[0]) / norm[1]
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
    return scores


def micro_slices(n: int, micro: int | None, k: int = 1):
    """Slices of at most `micro` of n rows (all when None), rounded down to whole groups
    of k rows (at least one group)."""
    step = max(1, (micro or n) // k) * k
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
