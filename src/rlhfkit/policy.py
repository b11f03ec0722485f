"""The RL stage: tune the policy against the reward model (Vertex's "reinforcer") with
PPO (the default), RLOO or GRPO (`rl_algorithm`).

PPO, in the shape of OpenAI's lm-human-preferences and "The N Implementation Details of
RLHF with PPO" (Huang et al. 2023), for a batch of `batch_size` prompts:

1. sample responses (temperature 1, no top-k / top-p; stop at EOS or
   `target_sequence_length`),
2. policy and reference logprobs of the sampled tokens, values,
3. reward-model scores (minus `missing_eos_penalty` for responses that never end),
4. rewards = -kl_coeff * KL per token, plus the score at the last token,
5. GAE advantages (gamma, lam), whitened over the global batch,
6. `ppo_epochs` passes over `num_minibatches` minibatches of the clipped policy loss +
   vf_coef * the clipped value loss (one forward and backward where the value head
   shares the policy's trunk),
7. log to RUN/reinforcer-logs, checkpoint to RUN/policy/checkpoint-N.

RLOO and GRPO sample `num_generations` responses per prompt with the same rollout (no
values), replace 4-5 by their baselines (`rl_math`) and 6 by their losses over the same
epochs and minibatches, and build no value model.

The maths are pure functions in `ppo_math` and `rl_math`; the roles (policy, value,
reference, reward on one base) are in `policy_model`. Under `torchrun --nproc_per_node N`
each rank samples its share of the batch (whole groups of k); moments, losses and
gradients are those of the global batch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rlhfkit import log, sharding
from rlhfkit import ppo_math as pm
from rlhfkit import rl_math as rl
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import encode_prompts, pick_dtype
from rlhfkit.params import PipelineParams
from rlhfkit.plan_fit import fit_memory
from rlhfkit.policy_files import META_FILE, STAGE_DIR, resume, save_state, write_outputs
from rlhfkit.policy_model import Roles, build_roles
from rlhfkit.policy_rollout import (
    Piece,
    PromptOrder,
    Rollout,
    format_samples,
    micro_slices,
    pieces,
    rollout,
)
from rlhfkit.runstate import (
    done_hash,
    is_done,
    seed_everything,
    stage_key,
)
from rlhfkit.training import (
    TensorBoard,
    check_finite,
    make_accelerator,
    reduce_mean,
    warmup_decay_schedule,
)

# Base learning rates of AdamW, multiplied by `reinforcement_learning_rate_multiplier`.
# Full tuning: 3e-6, the rate of the TL;DR PPO runs in "N Implementation Details" (1B-7B).
# LoRA moves far fewer weights and needs a larger rate, ~10x for rank 1-8 adapters.
LORA_LEARNING_RATE = 5e-5
FULL_LEARNING_RATE = 3e-6
ADAM_EPS = 1e-5  # lm-human-preferences
LOGS_DIR = "reinforcer-logs"


def policy_learning_rate(params: PipelineParams) -> float:
    """The policy's rate (RL and DPO): the base rate of LoRA or full tuning times
    `reinforcement_learning_rate_multiplier`, as Vertex scales its reinforcer's rate."""
    base = LORA_LEARNING_RATE if params.policy_lora_dim > 0 else FULL_LEARNING_RATE
    return base * params.reinforcement_learning_rate_multiplier


# What the policy stage's outputs depend on, of the pipeline's parameters (its DONE hash).
POLICY_KEYS = (
    "large_model_reference", "prompt_dataset", "instruction", "prompt_sequence_length",
    "target_sequence_length", "reinforcement_learning_train_steps",
    "reinforcement_learning_rate_multiplier", "batch_size", "policy_lora_dim", "kl_coeff",
    "kl_estimator", "target_kl", "kl_horizon", "ppo_epochs", "num_minibatches", "cliprange",
    "cliprange_value", "vf_coef", "gamma", "lam", "whiten_rewards", "missing_eos_penalty",
    "normalize_reward", "temperature", "merge_adapter", "seed", "trust_remote_code",
    "rl_algorithm", "num_generations", "value_model", "loss_type",
    "sharding")  # sharding: its checkpoints hold full state dicts keyed by name


@dataclass
class PolicyConfig:
    """The RL stage's inputs: the pipeline's parameters (`params`, the one declaration of
    each key, default and check; read as `cfg.<key>`) plus options of this stage alone.
    Units: lengths in tokens, batch sizes in prompts, steps in RL steps (one batch each)."""

    params: PipelineParams
    output_dir: str  # RUN: reads RUN/reward_model, writes RUN/policy and RUN/reinforcer-logs
    reward_model_dir: str | None = None  # None: RUN/reward_model
    samples_every_steps: int = 10  # sampled prompts and responses to TensorBoard
    kl_warning: float = 20.0  # nats per response: warn when the KL to the reference passes it
    max_grad_norm: float = 1.0
    num_normalize_prompts: int = 64  # prompts sampled to fit normalize_reward's gain/bias

    def __getattr__(self, name: str) -> Any:
        """A pipeline parameter (`cfg.kl_coeff` is `cfg.params.kl_coeff`): the stage never
        re-declares one, so a renamed or re-defaulted key cannot keep a stale copy here."""
        params = self.__dict__.get("params")
        if params is None or name.startswith("__") or not hasattr(params, name):
            raise AttributeError(name)
        return getattr(params, name)

    @classmethod
    def from_params(cls, params: PipelineParams, output_dir: str | Path | None = None,
                    **overrides) -> PolicyConfig:
        """`overrides`: this stage's own options, or pipeline keys (e.g. merge_adapter from
        `--merge`), which replace those of `params` (checked again)."""
        out = output_dir or params.output_dir
        if not out:
            raise RlhfkitError("no output directory: pass --output-dir RUN or set output_dir")
        own = {f.name for f in fields(cls)} - {"params", "output_dir"}
        pipeline = {k: v for k, v in overrides.items() if k not in own}
        if pipeline:
            params = dataclasses.replace(params, **pipeline)
            params.validate()
        return cls(params, str(out), **{k: v for k, v in overrides.items() if k in own})

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def reward_dir(self) -> Path:
        return Path(self.reward_model_dir or self.run_dir / "reward_model")

    @property
    def learning_rate(self) -> float:
        return policy_learning_rate(self.params)

    @property
    def k(self) -> int:
        """Responses sampled per prompt (num_generations resolved)."""
        return self.params.generations_per_prompt

    def stage_hash(self) -> str:
        """What the outputs depend on (not micro-batching, checkpoint or logging cadence)."""
        values = self.params.subset(*POLICY_KEYS)
        values.update(max_grad_norm=self.max_grad_norm,
                      num_normalize_prompts=self.num_normalize_prompts,
                      reward_model=done_hash(self.reward_dir / "DONE") or str(self.reward_dir))
        return stage_key(values)  # datasets and models by content, not by path


# -- the trainer -------------------------------------------------------------

@dataclass
class Trainer:
    cfg: PolicyConfig
    roles: Roles
    prompts: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    kl_ctl: pm.KLController
    order: PromptOrder
    accelerator: object
    reward_norm: tuple[float, float] | None = None  # (mean, std) of initial scores

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def local_batch(self) -> list[str]:
        """This rank's share of the next global batch of prompts, each repeated k times in a
        row (episodes i*k .. i*k + k - 1 answer prompt i: a group stays on one rank)."""
        idx = self.order.take(self.cfg.batch_size)
        share = self.cfg.batch_size // self.world
        rank = self.accelerator.process_index
        return [self.prompts[i] for i in idx[rank * share:(rank + 1) * share]
                for _ in range(self.cfg.k)]


# -- one step: rollout, then the algorithm's advantages and update ------------------------------

def train_step(t: Trainer, step: int) -> tuple[dict[str, float], Rollout]:
    """RL step number `step` (1 .. N) on one batch of prompts: (logged statistics, the
    rollout)."""
    cfg = t.cfg
    seed_everything(cfg.seed * 1_000_003 + step * 1009 + t.accelerator.process_index)
    query = encode_prompts(t.roles.tokenizer, t.local_batch(), cfg.prompt_sequence_length)
    query = {k: v.to(t.accelerator.device) for k, v in query.items()}
    roll = rollout(t.roles, cfg, query, step, t.reward_norm)  # sample, logprobs, values, scores
    kl = pm.kl_per_token(roll.logprobs, roll.ref_logprobs, cfg.kl_estimator)
    algorithm = {"ppo": ppo_step, "rloo": rloo_step, "grpo": grpo_step}[cfg.rl_algorithm]
    stats = algorithm(t, roll, kl, step)                  # advantages and update
    stats.update(rollout_stats(t, roll, kl))
    t.kl_ctl.update(stats["objective/kl"], cfg.batch_size * cfg.k)
    t.scheduler.step()
    return stats, roll


def ppo_step(t: Trainer, roll: Rollout, kl: torch.Tensor, step: int) -> dict[str, float]:
    """PPO (lm-human-preferences): per-token KL penalty + score at the last token, GAE,
    whitened advantages, clipped policy + vf_coef x clipped value loss."""
    cfg = t.cfg
    rewards = pm.penalized_rewards(roll.scores, kl, roll.mask, t.kl_ctl.value)
    if cfg.whiten_rewards:
        rewards = pm.whiten(rewards, roll.mask, shift_mean=False, all_reduce=t.all_sum)
    advantages, returns = pm.gae(rewards, roll.values, roll.mask, cfg.gamma, cfg.lam)
    advantages = pm.whiten(advantages, roll.mask, all_reduce=t.all_sum)

    def loss_of(p: Piece, n: Counts) -> dict[str, torch.Tensor]:
        mask, returns_p = p.mask, p.cut(returns)
        if t.roles.shared_value:  # one forward, one backward of pg + vf_coef * vf
            logits, values = t.roles.policy_and_values(p.ids, p.attn, p.width)
        else:
            logits = t.roles.logits(p.ids, p.attn, p.width)
        logp = pm.logprobs_from_logits(logits, p.responses)
        pg, pstats = pm.policy_loss(logp, p.cut(roll.logprobs), p.cut(advantages), mask,
                                    cfg.cliprange, count=n.tokens)
        ent = _entropy(logits, mask, n.tokens)
        check_finite(step, t.all_sum, **{"policy loss": pg.detach(), "policy logits": logits.detach()})
        del logits, logp
        if not t.roles.shared_value:
            # A separate value adapter: policy loss back-propagated first, so only one
            # graph is alive at a time (the accumulated gradient is the same).
            pg.backward()
            values = t.roles.values(p.ids, p.attn, p.width)
        vf, vstats = pm.value_loss(values, p.cut(roll.values), returns_p, mask,
                                   cfg.cliprange_value, count=n.tokens)
        check_finite(step, t.all_sum, **{"value loss": vf.detach()})
        (pg + cfg.vf_coef * vf if t.roles.shared_value else cfg.vf_coef * vf).backward()
        with torch.no_grad():
            err = pm.masked_mean((values - returns_p) ** 2, mask, count=n.tokens)
            vpred = pm.masked_mean(values, mask, count=n.tokens)
        return {"ppo/loss/policy": pg, "ppo/loss/value": vf,
                "ppo/loss/total": pg.detach() + cfg.vf_coef * vf.detach(),
                "ppo/policy/entropy": ent, "ppo/policy/clipfrac": pstats["clipfrac"],
                "ppo/policy/approxkl": pstats["approxkl"], "ppo/val/clipfrac": vstats["clipfrac"],
                "ppo/val/vpred": vpred, "ppo/val/error": err}

    stats = update(t, roll, loss_of, step, "ppo")
    stats["ppo/returns/mean"] = _global_mean(t, pm.masked_mean(returns, roll.mask))
    return stats


def rloo_step(t: Trainer, roll: Rollout, kl: torch.Tensor, step: int) -> dict[str, float]:
    """RLOO (Ahmadian et al. 2024; TRL's RLOOTrainer): sequence reward = score - kl_coeff x
    the response's KL, leave-one-out baseline over the k responses to each prompt, clipped
    sequence-ratio loss."""
    cfg = t.cfg
    rewards = roll.scores - t.kl_ctl.value * rl.sequence_kl(kl, roll.mask)
    advantages = rl.rloo_advantages(rewards, cfg.k)

    def loss_of(p: Piece, n: Counts) -> dict[str, torch.Tensor]:
        logits = t.roles.response_logits(p, cfg.k)  # each prompt once for its k responses
        logp = pm.logprobs_from_logits(logits, p.responses)
        loss, st = rl.rloo_loss(logp, p.cut(roll.logprobs), advantages[p.rows], p.mask,
                                cfg.cliprange, n.sequences)
        check_finite(step, t.all_sum, **{"policy loss": loss.detach(), "policy logits": logits.detach()})
        loss.backward()
        return {"rloo/loss/policy": loss, "rloo/policy/clipfrac": st["clipfrac"],
                "rloo/policy/approxkl": st["approxkl"],
                "rloo/policy/entropy": _entropy(logits, p.mask, n.tokens)}

    stats = update(t, roll, loss_of, step, "rloo")
    stats["rloo/advantages/std"] = _global_mean(t, advantages.std())
    return stats


def grpo_step(t: Trainer, roll: Rollout, kl: torch.Tensor, step: int) -> dict[str, float]:
    """GRPO (Shao et al. 2024; TRL's GRPOTrainer): group-standardised score as every
    token's advantage, per-token clipped ratio, k3 KL to the reference as a loss term
    weighted kl_coeff, token averaging by `loss_type`."""
    cfg = t.cfg
    advantages = rl.group_advantages(roll.scores, cfg.k, scale=cfg.loss_type != "dr_grpo")
    ref = roll.ref_logprobs if t.roles.has_reference else None

    def loss_of(p: Piece, n: Counts) -> dict[str, torch.Tensor]:
        logits = t.roles.response_logits(p, cfg.k)  # each prompt once for its k responses
        logp = pm.logprobs_from_logits(logits, p.responses)
        w = rl.token_weights(p.mask, cfg.loss_type, n.sequences, n.tokens,
                             cfg.target_sequence_length)
        loss, st = rl.grpo_loss(logp, p.cut(roll.logprobs), None if ref is None else p.cut(ref),
                                advantages[p.rows], w, cfg.cliprange, t.kl_ctl.value)
        check_finite(step, t.all_sum, **{"policy loss": loss.detach(), "policy logits": logits.detach()})
        loss.backward()
        return {"grpo/loss/policy": loss, "grpo/kl": st["kl"],
                "grpo/policy/clipfrac": st["clipfrac"], "grpo/policy/approxkl": st["approxkl"],
                "grpo/policy/entropy": _entropy(logits, p.mask, n.tokens)}

    stats = update(t, roll, loss_of, step, "grpo")
    flat = (rl.grouped(roll.scores, cfg.k).std(1) == 0).float().mean()
    stats["grpo/zero_std_fraction"] = _global_mean(t, flat)  # groups with no signal
    return stats


@dataclass
class Counts:
    """A minibatch's response tokens and responses, over micro-batches and ranks: the
    denominators that make summed micro-batch losses the minibatch's mean."""

    tokens: torch.Tensor
    sequences: torch.Tensor


def update(t: Trainer, roll: Rollout, loss_of, step: int, prefix: str) -> dict[str, float]:
    """`ppo_epochs` passes over `num_minibatches` shuffled minibatches of the episodes;
    each minibatch is one optimizer step, accumulated over its micro-batches
    (`policy_rollout.pieces`), `loss_of(piece, counts)` back-propagating a piece's loss and
    returning its statistics. Minibatches hold whole groups (a prompt's k responses), so a
    prompt runs once for all of them. Gradients are summed over ranks, so the update is
    exactly that of one process holding the whole batch."""
    cfg, mask, k = t.cfg, roll.mask, t.cfg.k
    params = list(t.roles.trainable_parameters().values())
    size = mask.shape[0] // k // cfg.num_minibatches  # groups per minibatch
    totals: dict[str, torch.Tensor] = {}
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(mask.shape[0] // k)  # of groups; k = 1: of episodes
        for m in range(cfg.num_minibatches):
            idx = (perm[m * size:(m + 1) * size, None] * k + torch.arange(k)).reshape(-1)
            counts = Counts(t.all_sum(mask[idx].sum().clone()),
                            t.all_sum(torch.tensor(float(len(idx)), device=mask.device)))
            t.optimizer.zero_grad(set_to_none=True)
            for p in pieces(roll, idx, cfg.micro_batch_size, k):
                _add(totals, loss_of(p, counts))
            _sync_gradients(t, [p for p in params if not sharding.is_dtensor(p)])
            norm = sharding.clip_grad_norm_(params, cfg.max_grad_norm)
            check_finite(step, t.all_sum, **{"gradient norm": norm})
            t.optimizer.step()
            _add(totals, {f"{prefix}/grad_norm": norm / t.world})  # global already: / world
    updates = cfg.ppo_epochs * cfg.num_minibatches
    keys = sorted(totals)
    summed = t.all_sum(torch.stack([totals[k] for k in keys]))  # global minibatch means
    return {k: float(v) / updates for k, v in zip(keys, summed, strict=True)}


def _entropy(logits: torch.Tensor, mask: torch.Tensor, count) -> torch.Tensor:
    with torch.no_grad():
        return pm.masked_mean(pm.entropy_from_logits(logits), mask, count=count)


def _global_mean(t: Trainer, value: torch.Tensor) -> float:
    """A per-rank statistic averaged over ranks (equal shares)."""
    return float(t.all_sum(value.detach().float().reshape(1).clone())) / t.world


def rollout_stats(t: Trainer, roll: Rollout, kl: torch.Tensor) -> dict[str, float]:
    """The objective/* statistics of the batch, averaged over ranks (equal shares), and
    Vertex's two tags."""
    seq_kl = (kl * roll.mask).sum(1)
    coeff = t.kl_ctl.value
    stats = {
        "objective/raw_scores": roll.raw_scores.mean(), "objective/scores": roll.scores.mean(),
        "objective/kl": seq_kl.mean(),
        "objective/rlhf_reward": (roll.scores - coeff * seq_kl).mean(),
        "objective/entropy": roll.entropy.mean(),
        "objective/response_length": roll.mask.sum(1).mean(),
        "objective/no_eos_fraction": (~roll.has_eos).float().mean(),
    }
    stats = reduce_mean(t.accelerator, {k: float(v) for k, v in stats.items()})
    stats.update({"objective/kl_coeff": coeff, "reward": stats["objective/scores"],
                  "kl_loss": coeff * stats["objective/kl"],  # Vertex's two tags
                  f"{t.cfg.rl_algorithm}/learning_rate": t.scheduler.get_last_lr()[0]})
    return stats


def _add(totals: dict, values: dict) -> None:
    for k, v in values.items():
        totals[k] = totals.get(k, 0.0) + v.detach().float()


def _sync_gradients(t: Trainer, params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (each rank's loss already carries its
    share of the global token count)."""
    if t.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = t.all_sum(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


# -- reward normalisation -------------------------------------------------------------------

@torch.no_grad()
def fit_reward_norm(t: Trainer) -> tuple[float, float]:
    """Mean and std of the reward model's scores on the initial policy's samples, so the
    scores PPO sees start at mean 0, std 1 (lm-human-preferences normalises its reward
    model this way before RL). Uses its own prompt order: training order is unchanged."""
    cfg, roles = t.cfg, t.roles
    order = PromptOrder(len(t.prompts), cfg.seed + 1)
    share = max(1, cfg.num_normalize_prompts // t.world)
    idx = order.take(share * t.world)[t.accelerator.process_index * share:][:share]
    seed_everything(cfg.seed + 7 + t.accelerator.process_index)
    query = encode_prompts(roles.tokenizer, [t.prompts[i] for i in idx],
                           cfg.prompt_sequence_length)
    query = {k: v.to(t.accelerator.device) for k, v in query.items()}
    scores = []
    for s in micro_slices(len(idx), cfg.micro_batch_size):
        ids, attn = query["input_ids"][s], query["attention_mask"][s]
        responses = roles.sample(ids, attn, cfg.target_sequence_length).tokens
        mask = pm.response_mask(responses, roles.eos_ids)
        reward_in = roles.reward_inputs(ids, attn, responses, mask)
        scores.append(roles.scores(**reward_in))
    scores = torch.cat(scores)
    mean, var = pm.masked_moments(scores, torch.ones_like(scores), all_reduce=t.all_sum)
    return float(mean), max(float(var) ** 0.5, 1e-6)


# -- the stage ------------------------------------------------------------------------------------

def run(cfg: PolicyConfig) -> dict[str, Any]:
    """Train (or resume, or skip when DONE) the policy. Returns policy_dir, logs_dir,
    steps, final_kl and final_score (of the last step), skipped, resumed_from_step."""
    stage, h = cfg.run_dir / STAGE_DIR, cfg.stage_hash()
    if is_done(stage / "DONE", h):
        log.info(f"policy: {stage} is done with these parameters; skipping")
        return _outputs(cfg, json.loads((stage / META_FILE).read_text()), True, None)
    t = build_trainer(cfg, make_accelerator(cpu_allocator=cfg.cpu_allocator))
    start = resume(t, h)
    if cfg.normalize_reward and t.reward_norm is None:
        t.reward_norm = fit_reward_norm(t)
        log.info(f"policy: reward normalisation mean {t.reward_norm[0]:.4g} "
                 f"std {t.reward_norm[1]:.4g}")
    trained = sum(p.numel() for p in t.roles.trainable_parameters().values())
    log.info(f"policy: {cfg.rl_algorithm}, {cfg.reinforcement_learning_train_steps} steps of "
             f"{cfg.batch_size} prompts x {cfg.k} responses on {t.world} process(es), lr "
             f"{cfg.learning_rate:.3g}, kl_coeff {cfg.kl_coeff}, {trained:,} trained weights")
    last = train_loop(t, start, h)
    final = {"final_kl": last.get("objective/kl"), "final_score": last.get("objective/scores")}
    meta = write_outputs(t, h, final)
    return _outputs(cfg, meta, False, start)


def _outputs(cfg: PolicyConfig, meta: dict, skipped: bool, start: int | None) -> dict:
    return {"policy_dir": str(cfg.run_dir / STAGE_DIR), "logs_dir": str(cfg.run_dir / LOGS_DIR),
            "steps": meta.get("train_steps"), "final_kl": meta.get("final_kl"),
            "final_score": meta.get("final_score"), "skipped": skipped,
            "resumed_from_step": start}


def build_trainer(cfg: PolicyConfig, accelerator) -> Trainer:
    """Check the set-up, read the prompts, load the roles, make the optimizer."""
    from rlhfkit.data import load_dataset, prompt_text

    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.num_minibatches):
        raise RlhfkitError(f"batch_size ({cfg.batch_size}) must be divisible by processes "
                           f"({world}) x num_minibatches ({cfg.num_minibatches})")
    if cfg.target_kl is not None and cfg.kl_coeff == 0:
        raise RlhfkitError("target_kl needs kl_coeff > 0: the adaptive controller scales it")
    records = load_dataset(cfg.prompt_dataset, "prompt")  # bad data fails before the model
    seed_everything(cfg.seed)
    roles = build_roles(cfg.large_model_reference, cfg.reward_dir, cfg.policy_lora_dim,
                        need_reference=cfg.kl_coeff > 0,
                        trust_remote_code=cfg.trust_remote_code,
                        dtype=pick_dtype(accelerator.device), temperature=cfg.temperature,
                        value_model=cfg.value_model if cfg.rl_algorithm == "ppo" else "none"
                        ).to(accelerator.device)
    prompts = [prompt_text(r, cfg.instruction, roles.tokenizer) for r in records]
    if cfg.sharding == "fsdp" and world > 1:  # before the optimizer: weights become shards
        roles.share_prompts = False
        for model in (roles.lm, roles.reference):
            if model is not None:
                sharding.shard(model)
    elif cfg.sharding == "fsdp":
        log.warn("sharding: fsdp on one process has nothing to shard; running unsharded "
                 "(launch with torchrun --nproc_per_node N)")
    params = list(roles.trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=ADAM_EPS, weight_decay=0.0)
    scheduler = warmup_decay_schedule(optimizer, cfg.reinforcement_learning_train_steps)
    cfg = fit_memory(cfg, roles, optimizer, accelerator)  # "auto" micro-batch / checkpointing
    return Trainer(cfg, roles, prompts, optimizer, scheduler,
                   pm.KLController(cfg.kl_coeff, cfg.target_kl, cfg.kl_horizon),
                   PromptOrder(len(prompts), cfg.seed), accelerator)


def train_loop(t: Trainer, start: int, h: str) -> dict[str, float]:
    """Steps start + 1 .. train_steps; returns the last step's statistics."""
    cfg = t.cfg
    stats: dict[str, float] = {}
    steps = cfg.reinforcement_learning_train_steps
    tb = TensorBoard(cfg.run_dir / LOGS_DIR, purge_step=start + 1)
    kl_warned = False
    every = max(1, steps // 20)
    try:
        for step in range(start + 1, steps + 1):  # steps are numbered 1 .. N
            t0 = time.monotonic()
            stats, roll = train_step(t, step)
            stats["time/step_seconds"] = time.monotonic() - t0
            tb.scalars(stats, step)
            if step % cfg.samples_every_steps == 0 or step == start + 1:
                tb.text("samples", format_samples(t.roles.tokenizer, roll), step)
            if stats["objective/kl"] > cfg.kl_warning and not kl_warned:
                log.warn(f"step {step}: KL to the reference is {stats['objective/kl']:.1f} "
                         f"nats per response (> {cfg.kl_warning}); the policy may be gaming "
                         "the reward model. Consider a larger kl_coeff or fewer steps.")
            kl_warned = stats["objective/kl"] > cfg.kl_warning
            if step % every == 0 or step == steps:
                log.info(f"policy step {step}/{steps}  reward {stats['reward']:.3f}  "
                         f"kl {stats['objective/kl']:.3f}  "
                         f"length {stats['objective/response_length']:.1f}  "
                         f"({stats['time/step_seconds']:.1f} s/step)")
            if step % cfg.checkpoint_every_steps == 0 and step < steps:
                save_state(t, step, h)
    finally:
        tb.close()
    return stats
