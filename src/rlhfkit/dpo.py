"""Tuning method "dpo": the policy tuned directly on the preference pairs (Rafailov et al.
2023), no reward model and no sampling; the alternative to Vertex's reward model + RL.

One step reads `batch_size` pairs (the reward stage's seeded order, `reward_data.
global_batch`), in micro-batches of `micro_batch_size`, and takes one AdamW step on the
mean DPO loss (`dpo_math`: `dpo_loss` sigmoid or ipo, weight `dpo_beta`);
`reinforcement_learning_train_steps` counts the steps and the learning rate is the policy
stage's base rate times `reinforcement_learning_rate_multiplier`.

Where the time goes, and the two things that make it fast:

- a pair's chosen and rejected responses continue the same prompt, so the prompt runs
  once and its key/value cache serves both responses (`response_logprobs`; for an
  encoder-decoder such as T5 the prompt is the encoder's input, run once, and both
  responses are decoder sequences under its output); TRL's DPOTrainer runs the prompt
  twice, once per response. The log-probabilities are those
  of the full sequences (attention is causal; a test checks it);
- the reference log-probabilities are computed once per pair, before step 1, for the
  pairs the run will visit (`reference_logprobs`), and kept with the checkpoints; TRL
  recomputes them at every step unless told to precompute.

The reference is the base model: with LoRA (`policy_lora_dim` > 0) the same weights with the
adapter off; in full tuning the policy itself before its first update. Because every
reference value is computed before that update, full tuning needs no frozen copy of the
model (other DPO trainers keep one in memory throughout).

Outputs are the policy stage's (`policy_files.write_outputs`): RUN/policy/ (the "policy"
LoRA adapter or the full weights, tokenizer, rlhfkit.json, DONE), so `rlhfkit infer`,
`compare`, `serve` and `export` read it unchanged; TensorBoard in RUN/dpo-logs/ with TRL's
tag names (loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected, grad_norm, learning_rate). Checkpoints
RUN/policy/checkpoint-N/ hold the trained weights, optimizer, scheduler, RNG state and the
reference log-probabilities; a killed run resumes from the newest.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit import dpo_math, log, models, runstate, training
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams
from rlhfkit.policy_model import prompt_once_logits
from rlhfkit.ppo_math import logprobs_from_logits
from rlhfkit.reward_data import encode_prompt_ids, encode_response_ids, epoch_order, global_batch

STAGE_DIR, LOGS_DIR = "policy", "dpo-logs"  # RUN/policy: where infer and compare look
REFERENCE_FILE = "reference_logps.safetensors"  # in each checkpoint


@dataclass
class DPOConfig:
    """The stage's inputs: the pipeline parameters (read from `params`, never copied) and
    the run directory. Attributes not defined here are `params`' (e.g. `cfg.dpo_beta`)."""

    params: PipelineParams
    output_dir: str

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params")
        if params is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(params, name)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def learning_rate(self) -> float:
        """The policy stage's base rates (LoRA / full tuning) times the multiplier."""
        from rlhfkit.policy import policy_learning_rate

        return policy_learning_rate(self.params)

    @property
    def kl_coeff(self) -> None:
        """DPO has no KL penalty coefficient (dpo_beta plays that part): rlhfkit.json says null."""
        return None

    def weights_key(self, base: str, data: str) -> dict[str, Any]:
        """What the trained weights depend on (the DONE marker hashes it). Not: the
        micro-batch size (memory only), cadences, the output directory."""
        p = self.params
        return {"method": "dpo", "base_model": base, "data": data, **p.subset(
            "instruction", "prompt_sequence_length", "target_sequence_length",
            "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier",
            "batch_size", "policy_lora_dim", "seed", "dpo_beta", "dpo_loss", "merge_adapter")}


# -- token layout -----------------------------------------------------------------------------

@dataclass
class PreferencePairs:
    """Token ids of n pairs: `prompt[i]` is shared by `chosen[i]` and `rejected[i]` (each
    response cut to target_sequence_length, then EOS: the reward stage's layout).
    `reference` (n, 2): the reference's summed log-probabilities of (chosen, rejected)."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    reference: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt)

    def subset(self, indices) -> PreferencePairs:
        idx = list(indices)
        ref = None if self.reference is None else self.reference[idx]
        return PreferencePairs([self.prompt[i] for i in idx], [self.chosen[i] for i in idx],
                               [self.rejected[i] for i in idx], ref)

    def by_length(self) -> list[int]:
        """Indices sorted by total length: micro-batches of similar length pad little."""
        return sorted(range(len(self)), key=lambda i: len(self.prompt[i])
                      + max(len(self.chosen[i]), len(self.rejected[i])))


def encode(tokenizer, records: list[dict], instruction: str | None,
           prompt_sequence_length: int, target_sequence_length: int) -> PreferencePairs:
    """Course-format preference records -> PreferencePairs (`choice` names the preferred
    candidate). Prompts are left-truncated as everywhere (`reward_data.encode_prompt_ids`)."""
    from rlhfkit.data import prompt_text

    prompts = encode_prompt_ids(tokenizer, [prompt_text(r, instruction, tokenizer)
                                            for r in records], prompt_sequence_length)
    if any(not p for p in prompts):
        raise RlhfkitError("a preference prompt encodes to no tokens: DPO needs at least "
                           "one prompt token to predict a response's first token")
    chosen = [r[f"candidate_{r['choice']}"] for r in records]
    rejected = [r[f"candidate_{1 - r['choice']}"] for r in records]
    return PreferencePairs(prompts, encode_response_ids(tokenizer, chosen, target_sequence_length),
                           encode_response_ids(tokenizer, rejected, target_sequence_length))


def pair_layout(pairs: PreferencePairs, pad_id: int) -> dict[str, torch.Tensor]:
    """prompt_ids, prompt_mask (n, P): the prompts, left-padded; response_ids,
    response_mask (2n, T): the responses, right-padded, rows < n the chosen, the rest the
    rejected (row i continues prompt i mod n)."""
    prompt = models.left_pad(pairs.prompt, pad_id)
    ids, mask = models.right_pad(pairs.chosen + pairs.rejected, pad_id)
    return {"prompt_ids": prompt["input_ids"], "prompt_mask": prompt["attention_mask"],
            "response_ids": ids, "response_mask": mask}


def response_logprobs(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of each response given its prompt: (2n,), in `pair_layout`'s
    row order. The n prompts run once (an encoder-decoder: its encoder); their key/value
    cache, repeated for the chosen and the rejected rows, serves both continuations
    (`policy_model.prompt_once_logits`)."""
    rows = torch.arange(prompt_ids.shape[0], device=prompt_ids.device).repeat(2)
    logits = prompt_once_logits(lm, prompt_ids, prompt_mask, response_ids, response_mask, rows)
    return (logprobs_from_logits(logits, response_ids) * response_mask).sum(-1)


class PolicyLM(torch.nn.Module):
    """A plain module around the causal LM so DDP / accelerate wrap one forward:
    a `pair_layout` batch -> summed response log-probabilities (2n,)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        return response_logprobs(self.lm, prompt_ids, prompt_mask, response_ids, response_mask)


@dataclass
class Policy:
    """What `policy_files.save_policy` reads: the causal LM (LoRA layers injected), the
    PeftModel around it (None in full tuning) and the tokenizer."""

    lm: Any
    peft: Any
    tokenizer: Any


def build_policy(base: str, lora_dim: int, trust_remote_code: bool, dtype) -> Policy:
    """The base causal LM with a fresh "policy" LoRA adapter (the name RUN/policy's adapter
    has for PPO too), or all weights trainable; eval mode (no dropout, as TRL's DPO)."""
    from rlhfkit.reward_model import quiet_transformers

    tokenizer = models.load_tokenizer(base, trust_remote_code)
    with quiet_transformers():
        lm = models.load_causal_lm(base, trust_remote_code, dtype).eval()
        peft = None
        if lora_dim > 0:
            from peft import get_peft_model

            seq2seq = bool(lm.config.is_encoder_decoder)
            peft = get_peft_model(lm, training.lora_config(
                lora_dim, "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM", seq2seq=seq2seq),
                adapter_name="policy")
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:  # an added <pad> token
        raise RlhfkitError(f"{base}: the tokenizer has no pad token and the model no room "
                           "for one; give the tokenizer a pad token")
    return Policy(lm, peft, tokenizer)


# -- reference log-probabilities ---------------------------------------------------------------

def visited_pairs(n: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """The pairs a run of `steps` steps reads: the first steps x batch_size of epoch 0's
    order (`global_batch` reads the epochs' orders one after the other), all n if that many."""
    return sorted(epoch_order(n, 0, seed)[:min(n, steps * batch_size)].tolist())


@torch.no_grad()
def reference_logprobs(policy: Policy, pairs: PreferencePairs, indices: list[int], micro: int,
                       pad_id: int, accelerator) -> torch.Tensor:
    """(n, 2) reference log-probabilities of (chosen, rejected) for the pairs `indices`
    (zero elsewhere); each process computes every world-th pair, summed over processes."""
    ref = torch.zeros((len(pairs), 2), dtype=torch.float32, device=accelerator.device)
    mine = indices[accelerator.process_index::accelerator.num_processes]
    order = [mine[i] for i in pairs.subset(mine).by_length()]
    off = policy.peft.disable_adapter() if policy.peft is not None else contextlib.nullcontext()
    with off:
        for start in range(0, len(order), micro):
            idx = order[start:start + micro]
            batch = {k: v.to(accelerator.device)
                     for k, v in pair_layout(pairs.subset(idx), pad_id).items()}
            ref[idx] = response_logprobs(policy.lm, **batch).float().view(2, -1).T
    if accelerator.num_processes > 1:
        ref = accelerator.reduce(ref, reduction="sum")
    return ref.cpu()


# -- one step -----------------------------------------------------------------------------------

def train_step(model, optimizer, scheduler, accelerator, pairs: PreferencePairs, micro: int,
               pad_id: int, beta: float, loss_type: str) -> dict[str, float]:
    """One optimizer step on this process's pairs, `micro` pairs per forward pass."""
    pairs = pairs.subset(pairs.by_length())
    n, logps, losses = len(pairs), [], []
    for start in range(0, n, micro):
        part = pairs.subset(range(start, min(n, start + micro)))
        batch = {k: v.to(accelerator.device) for k, v in pair_layout(part, pad_id).items()}
        last = start + micro >= n  # DDP all-reduces the gradients only after the last one
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            lp = model(**batch).view(2, -1)  # (2, m): chosen, rejected
            tokens = batch["response_mask"].sum(-1).view(2, -1)
            ref = part.reference.to(lp.device).T  # (2, m)
            loss = dpo_math.dpo_loss(lp[0], lp[1], ref[0], ref[1], beta, loss_type,
                                     tokens[0], tokens[1])
            # sum / n: the accumulated gradient is that of the mean over this process's
            # pairs; DDP averages the (equal-sized) processes -> the global mean.
            accelerator.backward(loss.sum() / n)
        logps.append(lp.detach())
        losses.append(loss.detach())
    grad_norm = training.optimizer_step(accelerator, model, optimizer, scheduler)
    lp, ref = torch.cat(logps, 1).cpu(), pairs.reference.T
    return {"loss": torch.cat(losses).mean().item(), "grad_norm": float(grad_norm),
            **dpo_math.dpo_statistics(lp[0], lp[1], ref[0], ref[1], beta)}


# -- checkpoints --------------------------------------------------------------------------------

def _trainable(lm) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in lm.named_parameters() if p.requires_grad}


def save_checkpoint(stage: Path, step: int, policy: Policy, optimizer, scheduler,
                    reference: torch.Tensor, h: str) -> Path:
    """checkpoint-{step}/: trained weights, optimizer, scheduler, RNG state, the
    reference log-probabilities; the data position is a function of the step."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(policy.lm).items()},
                  str(tmp / "trainable.safetensors"))
        save_file({"reference": reference.contiguous()}, str(tmp / REFERENCE_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / "optimizer.pt")
        state = {"step": step, "config_hash": h, "rng": runstate.rng_state()}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")

    return runstate.save_checkpoint(stage, step, write)


def resume(stage: Path, h: str, policy: Policy, optimizer, scheduler, accelerator
           ) -> tuple[int, torch.Tensor | None]:
    """(step to start from, reference log-probabilities) of the newest checkpoint made with
    these parameters; else (0, None), and what RUN/policy held (another run's checkpoints,
    a PPO policy) goes."""
    from safetensors.torch import load_file

    found = runstate.latest_checkpoint(stage)
    state = json.loads((found[1] / "state.json").read_text()) if found else None
    if state is None or state.get("config_hash") != h:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and stage.exists():
            if found:
                log.notice(f"{stage}: checkpoints of a run with other parameters; starting over")
            shutil.rmtree(stage)
        accelerator.wait_for_everyone()
        return 0, None
    path = found[1]
    weights, params = load_file(str(path / "trainable.safetensors")), _trainable(policy.lm)
    if set(weights) != set(params):
        raise RlhfkitError(f"{path}: checkpoint does not match the model; delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    runstate.set_rng_state(state["rng"])
    log.info(f"dpo: resuming from {path} (step {state['step']})")
    return state["step"], load_file(str(path / REFERENCE_FILE))["reference"]


# -- the stage ----------------------------------------------------------------------------------

@dataclass
class _Saved:
    """The names `policy_files.write_outputs` reads from a trainer."""

    cfg: DPOConfig
    roles: Policy
    accelerator: Any


def _base(cfg: DPOConfig) -> str:
    base = models.resolve_model_reference(cfg.large_model_reference)
    return str(Path(base).resolve()) if Path(base).is_dir() else base


def run(cfg: DPOConfig) -> dict[str, Any]:
    """Train (or resume, or skip when DONE) the policy with DPO; returns policy_dir,
    logs_dir, steps, final_loss, final_accuracy, skipped, resumed_from_step."""
    from rlhfkit.data import load_dataset
    from rlhfkit.policy_files import write_outputs

    stage = cfg.run_dir / STAGE_DIR
    base, records = _base(cfg), load_dataset(cfg.preference_dataset, "preference")
    h = runstate.config_hash(cfg.weights_key(base, runstate.config_hash({"pairs": records})))
    if runstate.is_done(stage / "DONE", h):
        log.info(f"dpo: {stage} is done with these parameters; skipping")
        return _outputs(cfg, json.loads((stage / runstate.META_FILE).read_text()), True, None)
    accelerator = training.make_accelerator(cpu_allocator=cfg.params.cpu_allocator)
    world, total = accelerator.num_processes, cfg.reinforcement_learning_train_steps
    if cfg.batch_size % world:
        raise RlhfkitError(f"batch_size ({cfg.batch_size}) must be divisible by the number "
                           f"of processes ({world}): every process takes an equal share")
    local = cfg.batch_size // world
    micro = min(cfg.micro_batch_size or local, local)
    runstate.seed_everything(cfg.seed)
    policy = build_policy(base, cfg.policy_lora_dim, cfg.trust_remote_code,
                          models.pick_dtype(accelerator.device))
    pad_id = policy.tokenizer.pad_token_id
    train = encode(policy.tokenizer, records, cfg.instruction, cfg.prompt_sequence_length,
                   cfg.target_sequence_length)
    optimizer = torch.optim.AdamW(list(_trainable(policy.lm).values()), lr=cfg.learning_rate,
                                  weight_decay=0.0)
    scheduler = training.warmup_decay_schedule(optimizer, total)
    start, train.reference = resume(stage, h, policy, optimizer, scheduler, accelerator)
    model, optimizer = accelerator.prepare(PolicyLM(policy.lm), optimizer)
    if train.reference is None:  # before any update: the base model's log-probabilities
        visited = visited_pairs(len(train), total, cfg.batch_size, cfg.seed)
        t0 = time.monotonic()
        train.reference = reference_logprobs(policy, train, visited, micro, pad_id, accelerator)
        log.info(f"dpo: reference log-probabilities of {len(visited)} pairs in "
                 f"{time.monotonic() - t0:.1f}s")
    trained = sum(p.numel() for p in _trainable(policy.lm).values())
    log.info(f"dpo: base {base}, " + (f"LoRA rank {cfg.policy_lora_dim}" if cfg.policy_lora_dim
                                      else "full tuning") +
             f", {trained:,} trained weights, {len(train)} pairs, {total} steps of "
             f"{cfg.batch_size} pairs on {world} process(es), {cfg.dpo_loss} loss, beta "
             f"{cfg.dpo_beta}, lr {cfg.learning_rate:.3g}")
    metrics = _loop(cfg, model, optimizer, scheduler, accelerator, policy, train, start, h,
                    micro, pad_id)
    final = {"tuning_method": "dpo", "dpo_beta": cfg.dpo_beta, "dpo_loss": cfg.dpo_loss,
             "final_loss": metrics.get("loss"),
             "final_reward_accuracy": metrics.get("rewards/accuracies"),
             "final_reward_margin": metrics.get("rewards/margins")}
    meta = write_outputs(_Saved(cfg, policy, accelerator), h, final)
    return _outputs(cfg, meta, False, start)


def _loop(cfg: DPOConfig, model, optimizer, scheduler, accelerator, policy: Policy,
          train: PreferencePairs, start: int, h: str, micro: int, pad_id: int
          ) -> dict[str, float]:
    """Steps start + 1 .. total; returns the last step's statistics."""
    from rlhfkit.reward_data import rank_slice

    total, world = cfg.reinforcement_learning_train_steps, accelerator.num_processes
    tb = training.TensorBoard(cfg.run_dir / LOGS_DIR, purge_step=start + 1)
    every, metrics = max(1, total // 20), {}
    t_start = time.monotonic()
    try:
        for step in range(start + 1, total + 1):
            batch = global_batch(step - 1, cfg.batch_size, len(train), cfg.seed)
            pairs = train.subset(rank_slice(batch, accelerator.process_index, world))
            lr = scheduler.get_last_lr()[0]
            metrics = training.reduce_mean(accelerator, train_step(
                model, optimizer, scheduler, accelerator, pairs, micro, pad_id, cfg.dpo_beta,
                cfg.dpo_loss))
            training.check_finite(step, loss=metrics["loss"])
            metrics["learning_rate"] = lr
            tb.scalars(metrics, step)
            if step % every == 0 or step == total:
                log.info(f"dpo step {step}/{total}  loss {metrics['loss']:.4f}  reward accuracy "
                         f"{metrics['rewards/accuracies']:.2f}  margin "
                         f"{metrics['rewards/margins']:.3f}  "
                         f"({(time.monotonic() - t_start) / (step - start):.2f} s/step)")
            if step % cfg.checkpoint_every_steps == 0 and step < total and \
                    accelerator.is_main_process:
                save_checkpoint(cfg.run_dir / STAGE_DIR, step, policy, optimizer, scheduler,
                                train.reference, h)
    finally:
        tb.close()
    return metrics


def _outputs(cfg: DPOConfig, meta: dict, skipped: bool, start: int | None) -> dict[str, Any]:
    return {"policy_dir": str(cfg.run_dir / STAGE_DIR), "logs_dir": str(cfg.run_dir / LOGS_DIR),
            "tuning_method": "dpo", "steps": meta.get("train_steps"),
            "final_loss": meta.get("final_loss"),
            "final_reward_accuracy": meta.get("final_reward_accuracy"),
            "skipped": skipped, "resumed_from_step": start}
