"""Stage 2: the reward model, trained on preference pairs (Vertex's "reward model trainer").

The model is the base LM with a scalar head (`AutoModelForSequenceClassification`,
num_labels=1): LoRA of rank `reward_lora_dim` (4, as Vertex from 2.10; 0 = full tuning,
as Vertex before) on every linear layer, the freshly initialised head always trained. Each
(prompt, response) is laid out as in `reward_data` and scored at its last real token.

Loss (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1; Vertex logs it as `rank_loss`):

    rank_loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

Each optimizer step reads `batch_size` pairs (Vertex: 64) from a seeded per-epoch
permutation, in micro-batches of `micro_batch_size` pairs whose gradients accumulate; in
each micro-batch the prompt a pair shares runs once and its chosen and rejected
continuations run together (`reward_model.pair_scores`: the same scores and gradients as
scoring both full sequences, ~1.4-1.5x faster on the demo models). Under
`torchrun --nproc_per_node N` every process takes its 1/N slice of the same global batch
and DDP averages the gradients, so the run is the same run on any number of processes.

Held-out accuracy (the fraction of pairs with r(chosen) > r(rejected); a tie counts as
wrong, so a constant model scores 0, not 50 or 100) is measured on the eval dataset's
preference pairs when it has them (as Vertex >= 2.11), else on a seeded
`reward_holdout_fraction` of the preference data, every `eval_every_steps` and at the end.

Outputs: RUN/reward_model/ (adapter + head, or the full model; tokenizer; rlhfkit.json;
DONE) and TensorBoard logs in RUN/reward-logs/ (tags in docs/metrics.md). Checkpoints
every `checkpoint_every_steps` in RUN/reward_model/checkpoint-N/; a restarted run resumes
from the newest and ends with the same weights as an uninterrupted one.

Read with: `reward_data` (token layout, pairs, data order) and `reward_model` (the scalar
model, scoring at the last real token, `RewardScorer`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit import log, models, plan_fit, runstate, training
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams
from rlhfkit.reward_data import (
    Pairs,
    encode_pairs,
    global_batch,
    pair_batch,
    rank_slice,
    split_holdout,
)
from rlhfkit.reward_model import (  # noqa: F401 (re-exported: rlhfkit.reward.RewardScorer)
    META_FILE,
    RewardModel,
    RewardScorer,
    build_model,
    load_reward_model,
    quiet_transformers,
    reward_scores,
    score_records,
)

# Base learning rates, multiplied by `reward_model_learning_rate_multiplier` (Vertex: 1.0).
# Vertex does not publish its own. Full tuning: 1e-5, the range used to fine-tune
# 1-10B-parameter reward models end to end (InstructGPT 9e-6 for its 6B RM; Stiennon et al.
# 2020 ~1.5e-5). LoRA updates a low-rank delta that starts at zero and needs a ~10x larger
# step (Hu et al. 2021 and QLoRA use 1e-4 to 2e-4 on 7B models): 1e-4.
BASE_LR_LORA = 1e-4
BASE_LR_FULL = 1e-5
WEIGHT_DECAY = 0.0  # none: few steps, and the LoRA delta / head start at small values
# Held-out evaluations per run (plus one at the last step) when eval_every_steps is None:
# enough points for a TensorBoard curve; each one scores every held-out pair twice.
EVALS_PER_RUN = 8

STAGE_DIR, LOGS_DIR = "reward_model", "reward-logs"
CHOSEN_PROBABILITY = "chosen_probability"  # optional key of a preference record (see below)


# The parameters the trained weights depend on (besides the base model's and the data's
# content): the DONE hash covers these. Not: micro_batch_size (memory only), cadences.
WEIGHTS_FIELDS = ("instruction", "prompt_sequence_length", "target_sequence_length",
                  "reward_model_train_steps", "reward_model_learning_rate_multiplier",
                  "batch_size", "reward_lora_dim", "reward_holdout_fraction", "seed")


@dataclass
class RewardConfig:
    """The stage's inputs: the pipeline's `params` (every name, default, unit and check
    lives in PipelineParams) plus the options of this stage alone."""

    params: PipelineParams
    output_dir: str  # RUN: writes RUN/reward_model/ and RUN/reward-logs/
    eval_every_steps: int | None = None  # None: EVALS_PER_RUN times per run
    progress: bool = True  # the live progress bar (rank 0, terminals only)

    @classmethod
    def from_params(cls, params: PipelineParams, output_dir: str | Path,
                    **options: Any) -> RewardConfig:
        return cls(params=params, output_dir=str(output_dir), **options)

    @property
    def learning_rate(self) -> float:
        base = BASE_LR_LORA if self.params.reward_lora_dim > 0 else BASE_LR_FULL
        return base * self.params.reward_model_learning_rate_multiplier

    def weights_key(self) -> dict[str, Any]:
        """The parameter values the trained weights depend on."""
        return self.params.subset(*WEIGHTS_FIELDS)


# -- maths (pure functions) -----------------------------------------------------------------

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair `-log sigmoid(r_chosen - r_rejected)`: the negative log-likelihood that
    the chosen response wins under the Bradley-Terry model. 0 when the chosen one scores
    far higher, log 2 on a tie, ~ the margin when the rejected one scores far higher."""
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected)


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """1.0 where the chosen response scores strictly higher (a tie is wrong), else 0.0."""
    return (r_chosen > r_rejected).float()


# -- training -------------------------------------------------------------------------------

def expected_agreement(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       chosen_prob: torch.Tensor) -> torch.Tensor:
    """Per pair (B,): the probability that the label agrees with the model's pick, given
    the probability `chosen_prob` that a labeller prefers the chosen candidate; 0 on a tie
    (a tie counts as wrong, as in `pair_accuracy`). Its mean is the accuracy in
    expectation over the label noise, the units of the demo world's noise ceiling."""
    margin = r_chosen - r_rejected
    return torch.where(margin > 0, chosen_prob,
                       torch.where(margin < 0, 1 - chosen_prob, torch.zeros_like(chosen_prob)))


def load_data(cfg: RewardConfig) -> tuple[list[dict], list[dict], str]:
    """(train records, held-out records, where the held-out pairs come from)."""
    from rlhfkit.data import has_preferences, load_dataset

    prefs = load_dataset(cfg.params.preference_dataset, "preference")
    if cfg.params.eval_dataset:
        evals = load_dataset(cfg.params.eval_dataset, "eval")
        if has_preferences(evals):
            return prefs, evals, "eval_dataset"
    train_idx, held_idx = split_holdout(len(prefs), cfg.params.reward_holdout_fraction,
                                        cfg.params.seed)
    log.info(f"reward model: holding out {len(held_idx)} of {len(prefs)} preference pairs "
             "for accuracy (the eval dataset, if any, has no preference fields)")
    return [prefs[i] for i in train_idx], [prefs[i] for i in held_idx], "holdout"


def _score_pairs(model, pairs: Pairs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected of every pair in one call -> (r_chosen, r_rejected): the prompt
    they share runs once (`reward_model.pair_scores`), the two continuations together."""
    batch = pair_batch(pairs, pad_id) or models.left_pad(pairs.chosen + pairs.rejected, pad_id)
    scores = model(**{k: v.to(device) for k, v in batch.items()})
    return scores[:len(pairs)], scores[len(pairs):]


def train_step(model, optimizer, scheduler, accelerator, pairs: Pairs, micro: int,
               pad_id: int) -> dict[str, float]:
    """One optimizer step on this process's pairs, `micro` pairs per forward pass."""
    pairs = _by_length(pairs)  # micro-batches of similar length carry little padding
    n, r_c, r_r = len(pairs), [], []
    for start in range(0, n, micro):
        part = pairs.subset(range(start, min(n, start + micro)))
        last = start + micro >= n  # DDP all-reduces the gradients only after the last one
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            c, r = _score_pairs(model, part, pad_id, accelerator.device)
            # sum / n: the accumulated gradient is that of the mean over this process's
            # pairs; DDP then averages the (equal-sized) processes -> the global mean.
            accelerator.backward(bradley_terry_loss(c, r).sum() / n)
        r_c.append(c.detach())
        r_r.append(r.detach())
    grad_norm = training.optimizer_step(accelerator, model, optimizer, scheduler)
    c, r = torch.cat(r_c), torch.cat(r_r)
    return {"rank_loss": bradley_terry_loss(c, r).mean().item(),
            "accuracy": pair_accuracy(c, r).mean().item(),
            "reward/chosen": c.mean().item(), "reward/rejected": r.mean().item(),
            "reward/mean": torch.cat([c, r]).mean().item(),
            "reward/margin": (c - r).mean().item(), "grad_norm": float(grad_norm)}


@torch.no_grad()
def evaluate(model: RewardModel, pairs: Pairs, pad_id: int, accelerator,
             batch_pairs: int) -> dict[str, float]:
    """Held-out rank_loss, accuracy and reward statistics (and the expected accuracy when
    the pairs carry `chosen_prob`); each process scores every N-th pair and the sums are
    added up over processes."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(pairs), world))
    sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, margin, reward, pairs, expected
    for start in range(0, len(mine), batch_pairs):
        part = pairs.subset(mine[start:start + batch_pairs])
        c, r = _score_pairs(model, part, pad_id, accelerator.device)
        expected = (0.0 if part.chosen_prob is None else expected_agreement(
            c, r, torch.tensor(part.chosen_prob, device=c.device)).sum().item())
        sums += torch.tensor([bradley_terry_loss(c, r).sum().item(),
                              pair_accuracy(c, r).sum().item(), (c - r).sum().item(),
                              (c + r).sum().item() / 2, len(c), expected], dtype=torch.float64)
    if world > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    loss, correct, margin, reward, count, expected = sums.tolist()
    out = {"eval/rank_loss": loss / count, "eval/accuracy": correct / count,
           "eval/reward_margin": margin / count, "eval/reward_mean": reward / count}
    if pairs.chosen_prob is not None:
        out["eval/expected_accuracy"] = expected / count
    return out


def _by_length(pairs: Pairs) -> Pairs:
    """Pairs sorted by length, so eval batches carry little padding."""
    order = sorted(range(len(pairs)),
                   key=lambda i: max(len(pairs.chosen[i]), len(pairs.rejected[i])))
    return pairs.subset(order)


# -- checkpoints ------------------------------------------------------------------------------

def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(stage: runstate.Stage, step: int, model: RewardModel, optimizer,
                    scheduler, position: tuple[int, int]) -> Path:
    """checkpoint-{step}/: the trainable weights (adapter + head, or all) as safetensors,
    the optimizer state, scheduler and data position (+ the RNG state `Stage` adds)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")

    return stage.save_checkpoint(step, write, {
        "epoch": position[0], "index": position[1], "scheduler": scheduler.state_dict()})


def load_checkpoint(found: runstate.Checkpoint, model: RewardModel, optimizer,
                    scheduler) -> None:
    """Restore what `save_checkpoint` wrote (before accelerator.prepare)."""
    from safetensors.torch import load_file

    path = found.path
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != wanted:
        raise RlhfkitError(f"{path}: checkpoint does not match the model ({len(tensors)} "
                           f"tensors, {len(wanted)} trainable); delete it to start over")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(found.state["scheduler"])


# -- the stage --------------------------------------------------------------------------------

def resolve_base(cfg: RewardConfig) -> str:
    """Vertex's reward-model base for the policy (or the explicit one), resolved to a hub id
    or an absolute local directory (so the adapter loads from any working directory)."""
    p = cfg.params
    ref = models.reward_reference(p.large_model_reference, p.reward_model_reference)
    base = models.resolve_model_reference(ref)
    return str(Path(base).resolve()) if Path(base).is_dir() else base


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("reward model"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=log.console,
                    disable=not enabled)


def _summary(step: int, total: int, m: dict[str, float]) -> str:
    shown = [k for k in ("rank_loss", "accuracy", "eval/rank_loss", "eval/accuracy") if k in m]
    return f"step {step}/{total}: " + "  ".join(f"{k} {m[k]:.4f}" for k in shown)


def run(cfg: RewardConfig) -> dict[str, Any]:
    """Train (or resume, or skip when DONE) the reward model; returns outputs and metrics."""
    from rlhfkit.io import check_output_dir

    check_output_dir(cfg.output_dir)  # before any work: a bad location fails in one line
    stage_dir = Path(cfg.output_dir) / STAGE_DIR
    logs_dir = Path(cfg.output_dir) / LOGS_DIR
    base = resolve_base(cfg)
    train_recs, eval_recs, eval_source = load_data(cfg)
    # Content, not paths: the records used and the base model's files.
    data_key = runstate.config_hash({"train": train_recs, "eval": eval_recs})
    h = runstate.config_hash({**cfg.weights_key(), "base_model": runstate.model_fingerprint(
        base), "data": data_key})
    stage = runstate.Stage(stage_dir, h)
    if stage.is_done():
        log.info(f"{stage_dir}: already trained with these parameters (DONE); skipping")
        meta = json.loads((stage_dir / META_FILE).read_text(encoding="utf-8"))
        return _outputs(stage_dir, logs_dir, meta, skipped=True, start=None)

    accelerator = training.make_accelerator(cpu_allocator=cfg.params.cpu_allocator)
    world, total = accelerator.num_processes, cfg.params.reward_model_train_steps
    if cfg.params.batch_size % world:
        raise RlhfkitError(f"batch_size ({cfg.params.batch_size}) must be divisible by the number "
                           f"of processes ({world}): every process takes an equal share")
    micro, ckpt = plan_fit.reward_settings(cfg.params, base, world)  # "auto" resolved by the plan
    runstate.seed_everything(cfg.params.seed)  # same LoRA / head initialisation on every rank
    tokenizer = models.load_tokenizer(base, cfg.params.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    model = build_model(base, tokenizer, cfg.params.reward_lora_dim, cfg.params.trust_remote_code,
                        models.pick_dtype(accelerator.device))
    if ckpt:
        training.enable_gradient_checkpointing(model.model)
    lengths = (cfg.params.prompt_sequence_length, cfg.params.target_sequence_length)
    seq2seq = model.seq2seq  # encoder-decoder: pairs split at the prompt (encoder | decoder)
    train = encode_pairs(tokenizer, train_recs, cfg.params.instruction, *lengths, seq2seq)
    held = encode_pairs(tokenizer, eval_recs, cfg.params.instruction, *lengths, seq2seq)
    held.chosen_prob = chosen_probabilities(eval_recs)
    held = _by_length(held)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = training.warmup_decay_schedule(optimizer, total)
    found = stage.resume(accelerator)
    if found is not None:
        load_checkpoint(found, model, optimizer, scheduler)
    start = found.step if found is not None else 0
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    if cfg.params.micro_batch_size == "auto":  # on CUDA: one probe step, halving on OOM
        micro = plan_fit.probe_micro(micro, lambda m: plan_fit.reward_probe(
            model, train, m, pad_id, optimizer), accelerator.device)
    main = accelerator.is_main_process
    log.info(f"reward model: base {base}, "
             + (f"LoRA rank {cfg.params.reward_lora_dim}" if cfg.params.reward_lora_dim
                else "full tuning")
             + f", {models.count_parameters(raw, trainable_only=True):,} trainable parameters, "
             f"{len(train)} train / {len(held)} held-out pairs ({eval_source}), "
             f"{total} steps of {cfg.params.batch_size} pairs on {world} process(es), "
             f"lr {cfg.learning_rate:g}")

    tb = training.TensorBoard(logs_dir, purge_step=start + 1)  # hide what a killed run logged
    eval_every = cfg.eval_every_steps or math.ceil(total / EVALS_PER_RUN)
    metrics: dict[str, float] = {}
    t0 = time.monotonic()
    with _progress(cfg.progress and main) as progress:
        task = progress.add_task("train", total=total, completed=start, stats="")
        for step in range(start + 1, total + 1):
            batch = global_batch(step - 1, cfg.params.batch_size, len(train), cfg.params.seed)
            pairs = train.subset(rank_slice(batch, accelerator.process_index, world))
            lr = scheduler.get_last_lr()[0]
            metrics = training.reduce_mean(
                accelerator, train_step(model, optimizer, scheduler, accelerator, pairs,
                                        micro, pad_id))
            training.check_finite(step, rank_loss=metrics["rank_loss"])
            metrics["learning_rate"] = lr
            if step % eval_every == 0 or step == total:
                metrics.update(evaluate(raw, held, pad_id, accelerator, micro))
                log.info(_summary(step, total, metrics))
            tb.scalars(metrics, step)
            progress.update(task, completed=step, stats=f"rank_loss {metrics['rank_loss']:.3f}"
                            f"  accuracy {metrics['accuracy']:.2f}")
            if step % cfg.params.checkpoint_every_steps == 0 and step < total and main:
                position = divmod(step * cfg.params.batch_size, len(train))
                save_checkpoint(stage, step, raw, optimizer, scheduler, position)

    meta = _metadata(cfg, base, h, metrics, eval_source, len(train), len(held),
                     label_noise(held.chosen_prob))
    tb.hparams({**cfg.weights_key(), "base_model": base, "learning_rate": cfg.learning_rate},
               {"hparam/eval_accuracy": meta["eval_accuracy"],
                "hparam/eval_rank_loss": meta["eval_rank_loss"]})
    tb.close()
    if main:
        _write_outputs(stage, raw, tokenizer, meta)
    accelerator.wait_for_everyone()
    log.info(f"reward model: {total - start} steps in {time.monotonic() - t0:.0f}s")
    return _outputs(stage_dir, logs_dir, meta, skipped=False, start=start)


def chosen_probabilities(records: list[dict]) -> list[float] | None:
    """Each held-out pair's `chosen_probability` (the probability a labeller prefers the
    chosen candidate, e.g. the demo world's gold annotator, or the vote share of several
    human labellers), when every record carries one in [0, 1]; else None."""
    probs = [r.get(CHOSEN_PROBABILITY) for r in records]
    if not probs or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                            and 0.0 <= p <= 1.0 for p in probs):
        return None
    return [float(p) for p in probs]


def label_noise(chosen_prob: list[float] | None) -> dict[str, float | None]:
    """What the labels' noise allows, from each pair's probability p that a labeller prefers
    the chosen candidate: the noise ceiling mean(max(p, 1 - p)) (the best EXPECTED accuracy
    of any reward model) and how often the label agrees with the noiseless preference
    (p > 0.5; pairs with p = 0.5 have none)."""
    if not chosen_prob:
        return {"noise_ceiling": None, "label_agreement": None}
    decided = [p for p in chosen_prob if p != 0.5]
    return {"noise_ceiling": sum(max(p, 1 - p) for p in chosen_prob) / len(chosen_prob),
            "label_agreement": (sum(p > 0.5 for p in decided) / len(decided)
                                if decided else None)}


def _metadata(cfg: RewardConfig, base: str, h: str, metrics: dict[str, float],
              eval_source: str, n_train: int, n_held: int,
              noise: dict[str, float | None]) -> dict[str, Any]:
    """RUN/reward_model/rlhfkit.json: what a reader needs to load and use the model."""
    return {"kind": "reward_model", "base_model": base, "lora_dim": cfg.params.reward_lora_dim,
            "instruction": cfg.params.instruction,
            "prompt_sequence_length": cfg.params.prompt_sequence_length,
            "target_sequence_length": cfg.params.target_sequence_length, "append_eos": True,
            "eval_accuracy": metrics["eval/accuracy"],
            "eval_rank_loss": metrics["eval/rank_loss"], "eval_source": eval_source,
            "eval_expected_accuracy": metrics.get("eval/expected_accuracy"),
            "eval_pairs": n_held, "train_pairs": n_train,
            "steps": cfg.params.reward_model_train_steps, "batch_size": cfg.params.batch_size,
            "learning_rate": cfg.learning_rate, "seed": cfg.params.seed, "config_hash": h,
            **{f"eval_{k}": v for k, v in noise.items()}}


def _write_outputs(stage: runstate.Stage, model: RewardModel, tokenizer, meta: dict) -> None:
    """RUN/reward_model/ published by `Stage`: the final files, DONE last, in one rename;
    the checkpoints go with the old directory."""
    from rlhfkit.io import atomic_write_json

    def write(tmp: Path) -> None:
        # peft: adapter_model.safetensors (LoRA + score head) + adapter_config.json;
        # full tuning: model.safetensors + config.json.
        model.model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's placeholder model card
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / META_FILE, meta)

    with quiet_transformers():
        stage.publish(write)


def _outputs(stage_dir: Path, logs_dir: Path, meta: dict, skipped: bool,
             start: int | None) -> dict[str, Any]:
    """What `run` returns; `resumed_from_step`: the checkpoint's step (0: a fresh start,
    None: skipped)."""
    return {"reward_model_dir": str(stage_dir), "logs_dir": str(logs_dir),
            "resumed_from_step": start,
            "eval_accuracy": meta["eval_accuracy"], "eval_rank_loss": meta["eval_rank_loss"],
            "eval_expected_accuracy": meta.get("eval_expected_accuracy"),
            "eval_noise_ceiling": meta.get("eval_noise_ceiling"),
            "eval_label_agreement": meta.get("eval_label_agreement"),
            "eval_source": meta["eval_source"], "steps": meta["steps"], "skipped": skipped}
