"""The RL stage: tune the policy with PPO against the reward model (Vertex's "reinforcer").

One step, in the shape of OpenAI's lm-human-preferences and "The N Implementation
Details of RLHF with PPO" (Huang et al. 2023), for a batch of `batch_size` prompts:

1. sample responses (temperature 1, no top-k / top-p; stop at EOS or
   `target_sequence_length`),
2. policy and reference logprobs of the sampled tokens, values,
3. reward-model scores (minus `missing_eos_penalty` for responses that never end),
4. rewards = -kl_coeff * KL per token, plus the score at the last token,
5. GAE advantages (gamma, lam), whitened over the global batch,
6. `ppo_epochs` passes over `num_minibatches` minibatches of the clipped policy loss +
   vf_coef * the clipped value loss,
7. log to RUN/reinforcer-logs, checkpoint to RUN/policy/checkpoint-N.

The maths are pure functions in `ppo_math`; the roles (policy, value, reference, reward on
one base) are in `policy_model`. Under `torchrun --nproc_per_node N` each rank samples its
share of the batch; moments, losses and gradients are those of the global batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rlhfkit import log
from rlhfkit import ppo_math as pm
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import encode_prompts, pick_dtype
from rlhfkit.plan import fit_memory
from rlhfkit.policy_files import META_FILE, STAGE_DIR, resume, save_state, write_outputs
from rlhfkit.policy_model import Roles, build_roles
from rlhfkit.runstate import (
    config_hash,
    done_hash,
    is_done,
    seed_everything,
)
from rlhfkit.training import TensorBoard, make_accelerator, reduce_mean, warmup_decay_schedule

# Base learning rates of AdamW, multiplied by `reinforcement_learning_rate_multiplier`.
# Full tuning: 3e-6, the rate of the TL;DR PPO runs in "N Implementation Details" (1B-7B).
# LoRA moves far fewer weights and needs a larger rate, ~10x for rank 1-8 adapters.
LORA_LEARNING_RATE = 5e-5
FULL_LEARNING_RATE = 3e-6
ADAM_EPS = 1e-5  # lm-human-preferences
LOGS_DIR = "reinforcer-logs"


@dataclass
class PolicyConfig:
    """The RL stage's inputs. Field names are PipelineParams' (Vertex's where they exist).
    Units: lengths in tokens, batch sizes in prompts, steps in PPO steps (one batch each)."""

    large_model_reference: str
    prompt_dataset: str
    output_dir: str  # RUN: reads RUN/reward_model, writes RUN/policy and RUN/reinforcer-logs
    reward_model_dir: str | None = None  # None: RUN/reward_model
    instruction: str | None = None
    prompt_sequence_length: int = 512
    target_sequence_length: int = 64
    reinforcement_learning_train_steps: int = 1000
    reinforcement_learning_rate_multiplier: float = 1.0
    batch_size: int = 64
    micro_batch_size: int | str | None = None  # per process and forward pass; None: no split
    gradient_checkpointing: bool | str = False  # "auto": rlhfkit.plan decides
    policy_lora_dim: int = 1  # 0 = full tuning
    kl_coeff: float = 0.1
    kl_estimator: str = "k1"
    target_kl: float | None = None  # nats per response; set to adapt kl_coeff
    kl_horizon: int = 10000  # samples
    ppo_epochs: int = 4
    num_minibatches: int = 1
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None
    normalize_reward: bool = False
    temperature: float = 1.0  # of sampling and of every logprob PPO takes (TRL's temperature)
    merge_adapter: bool = False
    seed: int = 0
    checkpoint_every_steps: int = 50
    trust_remote_code: bool = False
    # Not pipeline parameters:
    samples_every_steps: int = 10  # sampled prompts and responses to TensorBoard
    kl_warning: float = 20.0  # nats per response: warn when the KL to the reference passes it
    max_grad_norm: float = 1.0
    num_normalize_prompts: int = 64  # prompts sampled to fit normalize_reward's gain/bias

    @classmethod
    def from_params(cls, params, output_dir: str | Path | None = None,
                    **overrides) -> PolicyConfig:
        out = output_dir or params.output_dir
        if not out:
            raise RlhfkitError("no output directory: pass --output-dir RUN or set output_dir")
        values = {f.name: getattr(params, f.name) for f in fields(cls) if hasattr(params, f.name)}
        values.update(output_dir=str(out), **overrides)
        return cls(**values)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def reward_dir(self) -> Path:
        return Path(self.reward_model_dir or self.run_dir / "reward_model")

    @property
    def learning_rate(self) -> float:
        base = LORA_LEARNING_RATE if self.policy_lora_dim > 0 else FULL_LEARNING_RATE
        return base * self.reinforcement_learning_rate_multiplier

    def stage_hash(self) -> str:
        """What the outputs depend on (not micro-batching, checkpoint or logging cadence)."""
        skip = {"output_dir", "reward_model_dir", "micro_batch_size", "checkpoint_every_steps",
                "samples_every_steps", "kl_warning", "gradient_checkpointing"}
        values = {k: v for k, v in asdict(self).items() if k not in skip}
        values["reward_model"] = done_hash(self.reward_dir / "DONE") or str(self.reward_dir)
        return config_hash(values)


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


# -- one PPO step ------------------------------------------------------------------------------

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

    def check_finite(self, step: int, **values: torch.Tensor) -> None:
        """training.check_finite, agreed by every rank (one rank raising alone would
        leave the others waiting in a collective)."""
        bad = torch.tensor([float(not torch.isfinite(v).all()) for v in values.values()])
        bad = self.all_sum(bad.to(self.accelerator.device))
        for name, flag in zip(values, bad.tolist(), strict=True):
            if flag:
                raise RlhfkitError(
                    f"step {step}: {name} is not finite (NaN or inf); the last good checkpoint "
                    "is kept. Lower the learning-rate multiplier or check the data.")

    def local_batch(self) -> list[str]:
        """This rank's share of the next global batch of prompts."""
        idx = self.order.take(self.cfg.batch_size)
        share = self.cfg.batch_size // self.world
        rank = self.accelerator.process_index
        return [self.prompts[i] for i in idx[rank * share:(rank + 1) * share]]


def train_step(t: Trainer, step: int) -> tuple[dict[str, float], dict]:
    """PPO step number `step` (1 .. N) on one batch of prompts: (logged statistics, the
    rollout)."""
    cfg = t.cfg
    seed_everything(cfg.seed * 1_000_003 + step * 1009 + t.accelerator.process_index)
    query = encode_prompts(t.roles.tokenizer, t.local_batch(), cfg.prompt_sequence_length)
    query = {k: v.to(t.accelerator.device) for k, v in query.items()}
    roll = rollout(t, query, step)                                            # 1, 2, 3
    scores = shape_scores(roll["scores"], roll["has_eos"], cfg, t.reward_norm)
    kl = pm.kl_per_token(roll["logprobs"], roll["ref_logprobs"], cfg.kl_estimator)
    rewards = pm.penalized_rewards(scores, kl, roll["mask"], t.kl_ctl.value)  # 4
    if cfg.whiten_rewards:
        rewards = pm.whiten(rewards, roll["mask"], shift_mean=False, all_reduce=t.all_sum)
    advantages, returns = pm.gae(rewards, roll["values"], roll["mask"], cfg.gamma, cfg.lam)
    advantages = pm.whiten(advantages, roll["mask"], all_reduce=t.all_sum)    # 5
    stats = ppo_update(t, roll, advantages, returns, step)                    # 6
    stats.update(rollout_stats(t, roll, scores, kl, returns))
    t.kl_ctl.update(stats["objective/kl"], cfg.batch_size)                    # 7
    t.scheduler.step()
    roll.update(query=query, shaped_scores=scores)
    return stats, roll


def rollout_stats(t: Trainer, roll, scores, kl, returns) -> dict[str, float]:
    """The objective/* statistics of the batch, averaged over ranks (equal shares)."""
    seq_kl = (kl * roll["mask"]).sum(1)
    coeff = t.kl_ctl.value
    stats = {
        "objective/raw_scores": roll["scores"].mean(), "objective/scores": scores.mean(),
        "objective/kl": seq_kl.mean(), "objective/rlhf_reward": (scores - coeff * seq_kl).mean(),
        "objective/entropy": roll["entropy"].mean(),
        "objective/response_length": roll["mask"].sum(1).mean(),
        "objective/no_eos_fraction": (~roll["has_eos"]).float().mean(),
        "ppo/returns/mean": pm.masked_mean(returns, roll["mask"]),
    }
    stats = reduce_mean(t.accelerator, {k: float(v) for k, v in stats.items()})
    stats.update({"objective/kl_coeff": coeff, "reward": stats["objective/scores"],
                  "kl_loss": coeff * stats["objective/kl"],  # Vertex's two tags
                  "ppo/learning_rate": t.scheduler.get_last_lr()[0]})
    return stats


@torch.no_grad()
def rollout(t: Trainer, query: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """Sample responses and everything PPO needs about them, micro-batch by micro-batch.
    query (B, P) -> responses, mask, logprobs, ref_logprobs, values (B, T); scores,
    entropy (summed over the response), has_eos (B,)."""
    roles, cfg = t.roles, t.cfg
    tok = roles.tokenizer
    micro = list(_micro_slices(query["input_ids"].shape[0], cfg.micro_batch_size))
    # The sampler's logprobs are the old logprobs (no extra policy forward pass; a test
    # checks they equal a batched forward pass's within float tolerance).
    samples = [roles.sample(query["input_ids"][s], query["attention_mask"][s],
                            cfg.target_sequence_length, step) for s in micro]
    width = max(r.shape[1] for r, _, _ in samples)

    def cat(i: int, value: float) -> torch.Tensor:  # micro-batches' (b, T_i) -> (B, width)
        return torch.cat([torch.nn.functional.pad(x[i], (0, width - x[i].shape[1]), value=value)
                          for x in samples])

    responses, logprobs, entropy = cat(0, tok.pad_token_id), cat(1, 0.0), cat(2, 0.0)
    mask = pm.response_mask(responses, roles.eos_ids)
    ids = torch.cat([query["input_ids"], responses], 1)
    attn = torch.cat([query["attention_mask"], torch.ones_like(responses)], 1)
    out: dict[str, list] = {k: [] for k in ("ref_logprobs", "values", "scores")}
    for s in micro:
        if roles.has_reference:  # with LoRA the reference costs one forward pass, no memory
            ref_logits = roles.logits(ids[s], attn[s], width, reference=True)
            out["ref_logprobs"].append(pm.logprobs_from_logits(ref_logits, responses[s]))
            del ref_logits
        else:  # full tuning with kl_coeff = 0: no reference loaded, KL reads 0
            out["ref_logprobs"].append(logprobs[s])
        out["values"].append(roles.values(ids[s], attn[s], width))
        reward_in = roles.reward_inputs(query["input_ids"][s], query["attention_mask"][s],
                                        responses[s], mask[s])
        out["scores"].append(roles.scores(reward_in["input_ids"], reward_in["attention_mask"]))
    roll = {k: torch.cat(v) for k, v in out.items()}
    roll.update(logprobs=logprobs, entropy=(entropy * mask).sum(1))
    stop = torch.tensor(roles.eos_ids, dtype=torch.long, device=responses.device)
    has_eos = torch.isin(responses, stop).any(1)
    roll.update(responses=responses, mask=mask, ids=ids, attn=attn, has_eos=has_eos)
    return roll


def shape_scores(scores, has_eos, cfg: PolicyConfig, norm: tuple[float, float] | None):
    """Reward normalisation (gain and bias fitted on the initial policy's samples, as
    lm-human-preferences) and the missing-EOS penalty (TRL's missing_eos_penalty)."""
    if norm is not None:
        scores = (scores - norm[0]) / norm[1]
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
    return scores


def ppo_update(t: Trainer, roll, advantages, returns, step: int) -> dict[str, float]:
    """`ppo_epochs` passes over `num_minibatches` shuffled minibatches; each minibatch is
    one optimizer step, accumulated over micro-batches. Losses are normalised by the
    minibatch's global token count and gradients summed over ranks, so the update is
    exactly that of one process holding the whole batch."""
    cfg, roles = t.cfg, t.roles
    params = list(roles.trainable_parameters().values())
    n = len(roll["mask"])
    size = n // cfg.num_minibatches
    totals: dict[str, torch.Tensor] = {}
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(n)
        for k in range(cfg.num_minibatches):
            idx = perm[k * size:(k + 1) * size]
            count = t.all_sum(roll["mask"][idx].sum().clone())
            t.optimizer.zero_grad(set_to_none=True)
            for s in _micro_slices(len(idx), cfg.micro_batch_size):
                j = idx[s]
                mask, width = roll["mask"][j], roll["mask"].shape[1]
                # Policy loss, then value loss, each back-propagated at once: only one
                # graph is alive at a time (half the activation memory of one combined
                # loss); the accumulated gradient is the same.
                logits = roles.logits(roll["ids"][j], roll["attn"][j], width)
                logp = pm.logprobs_from_logits(logits, roll["responses"][j])
                pg, pstats = pm.policy_loss(logp, roll["logprobs"][j], advantages[j], mask,
                                            cfg.cliprange, count=count)
                t.check_finite(step, **{"policy loss": pg.detach(),
                                        "policy logits": logits.detach()})
                pg.backward()
                with torch.no_grad():
                    ent = pm.masked_mean(pm.entropy_from_logits(logits), mask, count=count)
                del logits, logp
                values = roles.values(roll["ids"][j], roll["attn"][j], width)
                vf, vstats = pm.value_loss(values, roll["values"][j], returns[j], mask,
                                           cfg.cliprange_value, count=count)
                t.check_finite(step, **{"value loss": vf.detach()})
                (cfg.vf_coef * vf).backward()
                loss = pg.detach() + cfg.vf_coef * vf.detach()
                with torch.no_grad():
                    err = pm.masked_mean((values - returns[j]) ** 2, mask, count=count)
                    vpred = pm.masked_mean(values, mask, count=count)
                _add(totals, {"ppo/loss/policy": pg, "ppo/loss/value": vf,
                              "ppo/loss/total": loss, "ppo/policy/entropy": ent,
                              "ppo/policy/clipfrac": pstats["clipfrac"],
                              "ppo/policy/approxkl": pstats["approxkl"],
                              "ppo/val/clipfrac": vstats["clipfrac"],
                              "ppo/val/vpred": vpred, "ppo/val/error": err})
            _sync_gradients(t, params)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            t.check_finite(step, **{"gradient norm": norm})
            t.optimizer.step()
            _add(totals, {"ppo/grad_norm": norm / t.world})  # global already: / world
    updates = cfg.ppo_epochs * cfg.num_minibatches
    keys = sorted(totals)
    summed = t.all_sum(torch.stack([totals[k] for k in keys]))  # global minibatch means
    return {k: float(v) / updates for k, v in zip(keys, summed, strict=True)}


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


def _micro_slices(n: int, micro: int | None):
    step = micro or n
    for i in range(0, n, step):
        yield slice(i, min(i + step, n))


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
    for s in _micro_slices(len(idx), cfg.micro_batch_size):
        ids, attn = query["input_ids"][s], query["attention_mask"][s]
        responses = roles.sample(ids, attn, cfg.target_sequence_length)[0]
        mask = pm.response_mask(responses, roles.eos_ids)
        reward_in = roles.reward_inputs(ids, attn, responses, mask)
        scores.append(roles.scores(reward_in["input_ids"], reward_in["attention_mask"]))
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
    t = build_trainer(cfg, make_accelerator())
    start = resume(t, h)
    if cfg.normalize_reward and t.reward_norm is None:
        t.reward_norm = fit_reward_norm(t)
        log.info(f"policy: reward normalisation mean {t.reward_norm[0]:.4g} "
                 f"std {t.reward_norm[1]:.4g}")
    trained = sum(p.numel() for p in t.roles.trainable_parameters().values())
    log.info(f"policy: {cfg.reinforcement_learning_train_steps} steps of {cfg.batch_size} "
             f"prompts on {t.world} process(es), lr {cfg.learning_rate:.3g}, kl_coeff "
             f"{cfg.kl_coeff}, {trained:,} trained weights")
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
                        dtype=pick_dtype(accelerator.device),
                        temperature=cfg.temperature).to(accelerator.device)
    prompts = [prompt_text(r, cfg.instruction, roles.tokenizer) for r in records]
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
                tb.text("samples", format_samples(t, roll), step)
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


def format_samples(t: Trainer, roll, n: int = 4) -> str:
    """A few prompts and responses of this step as Markdown for TensorBoard's text tab."""
    tok = t.roles.tokenizer
    parts = []
    for i in range(min(n, len(roll["responses"]))):
        prompt = tok.decode(roll["query"]["input_ids"][i][roll["query"]["attention_mask"][i]
                                                          .bool()], skip_special_tokens=True)
        response = tok.decode(roll["responses"][i][roll["mask"][i].bool()],
                              skip_special_tokens=True)
        parts.append(f"**prompt** (end): ...{prompt[-300:]}\n\n**response**: {response}\n\n"
                     f"**score**: {float(roll['shaped_scores'][i]):.3f}")
    return "\n\n---\n\n".join(parts)
