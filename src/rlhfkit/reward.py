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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit import log, models, plan, runstate, training
from rlhfkit.errors import RlhfkitError
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
MAX_GRAD_NORM = 1.0  # global L2 norm the gradient is clipped to before each step
KEEP_CHECKPOINTS = 2  # newest checkpoints kept on disk while training
# Held-out evaluations per run (plus one at the last step) when eval_every_steps is None:
# enough points for a TensorBoard curve; each one scores every held-out pair twice.
EVALS_PER_RUN = 8

STAGE_DIR, LOGS_DIR = "reward_model", "reward-logs"


@dataclass
class RewardConfig:
    """Everything the stage depends on; names as in PipelineParams. Lengths in tokens,
    batch sizes in preference pairs, steps in optimizer steps."""

    preference_dataset: str
    large_model_reference: str
    output_dir: str  # RUN: writes RUN/reward_model/ and RUN/reward-logs/
    eval_dataset: str | None = None
    reward_model_reference: str | None = None  # None: Vertex's choice for the policy
    instruction: str | None = None
    prompt_sequence_length: int = 512
    target_sequence_length: int = 64
    reward_model_train_steps: int = 1000
    reward_model_learning_rate_multiplier: float = 1.0
    batch_size: int = 64  # pairs per optimizer step, over all processes
    micro_batch_size: int | str | None = None  # pairs per forward pass per process; None = all
    gradient_checkpointing: bool | str = False  # "auto": rlhfkit.plan decides
    reward_lora_dim: int = 4  # 0 = full tuning
    reward_holdout_fraction: float = 0.1
    seed: int = 0
    checkpoint_every_steps: int = 50
    eval_every_steps: int | None = None  # None: EVALS_PER_RUN times per run
    trust_remote_code: bool = False
    progress: bool = True  # the live progress bar (rank 0, terminals only)

    @classmethod
    def from_params(cls, params, output_dir: str | Path) -> RewardConfig:
        names = [f for f in cls.__dataclass_fields__ if hasattr(params, f)
                 and f != "output_dir"]
        return cls(output_dir=str(output_dir), **{n: getattr(params, n) for n in names})

    @property
    def learning_rate(self) -> float:
        base = BASE_LR_LORA if self.reward_lora_dim > 0 else BASE_LR_FULL
        return base * self.reward_model_learning_rate_multiplier

    def weights_key(self) -> dict[str, Any]:
        """The values the trained weights depend on (the DONE marker hashes these plus the
        data). Not: output_dir, micro_batch_size (memory only), cadences, progress."""
        skip = {"output_dir", "micro_batch_size", "gradient_checkpointing",
                "checkpoint_every_steps", "eval_every_steps", "progress", "trust_remote_code"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


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

    prefs = load_dataset(cfg.preference_dataset, "preference")
    if cfg.eval_dataset:
        evals = load_dataset(cfg.eval_dataset, "eval")
        if has_preferences(evals):
            return prefs, evals, "eval_dataset"
    train_idx, held_idx = split_holdout(len(prefs), cfg.reward_holdout_fraction, cfg.seed)
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
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
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


def save_checkpoint(stage_dir: Path, step: int, model: RewardModel, optimizer, scheduler,
                    position: tuple[int, int], h: str) -> Path:
    """checkpoint-{step}/: the trainable weights (adapter + head, or all) as safetensors,
    the optimizer state, scheduler, RNG states and data position."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": step, "epoch": position[0], "index": position[1],
                 "config_hash": h, "scheduler": scheduler.state_dict(),
                 "rng": runstate.rng_state()}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")

    return runstate.save_checkpoint(stage_dir, step, write, keep=KEEP_CHECKPOINTS)


def load_checkpoint(path: Path, model: RewardModel, optimizer, scheduler) -> dict:
    """Restore what `save_checkpoint` wrote (before accelerator.prepare); returns its state."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
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
    scheduler.load_state_dict(state["scheduler"])
    runstate.set_rng_state(state["rng"])
    return state


# -- the stage --------------------------------------------------------------------------------

def resolve_base(cfg: RewardConfig) -> str:
    """Vertex's reward-model base for the policy (or the explicit one), resolved to a hub id
    or an absolute local directory (so the adapter loads from any working directory)."""
    ref = models.reward_reference(cfg.large_model_reference, cfg.reward_model_reference)
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
    if cfg.batch_size <= 0 or cfg.reward_model_train_steps <= 0:
        raise RlhfkitError("batch_size and reward_model_train_steps must be > 0")
    stage_dir = Path(cfg.output_dir) / STAGE_DIR
    logs_dir = Path(cfg.output_dir) / LOGS_DIR
    base = resolve_base(cfg)
    train_recs, eval_recs, eval_source = load_data(cfg)
    data_key = runstate.config_hash({"train": train_recs, "eval": eval_recs})
    h = runstate.config_hash({**cfg.weights_key(), "base_model": base, "data": data_key})
    if runstate.is_done(stage_dir / "DONE", h):
        log.info(f"{stage_dir}: already trained with these parameters (DONE); skipping")
        meta = json.loads((stage_dir / META_FILE).read_text(encoding="utf-8"))
        return _outputs(stage_dir, logs_dir, meta, skipped=True, start=None)

    accelerator = training.make_accelerator()
    world, total = accelerator.num_processes, cfg.reward_model_train_steps
    if cfg.batch_size % world:
        raise RlhfkitError(f"batch_size ({cfg.batch_size}) must be divisible by the number "
                           f"of processes ({world}): every process takes an equal share")
    micro, ckpt = plan.reward_settings(cfg, base, world)  # "auto" resolved by the plan
    runstate.seed_everything(cfg.seed)  # same LoRA / head initialisation on every rank
    tokenizer = models.load_tokenizer(base, cfg.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    model = build_model(base, tokenizer, cfg.reward_lora_dim, cfg.trust_remote_code,
                        models.pick_dtype(accelerator.device))
    if ckpt:
        training.enable_gradient_checkpointing(model.model)
    lengths = (cfg.prompt_sequence_length, cfg.target_sequence_length)
    train = encode_pairs(tokenizer, train_recs, cfg.instruction, *lengths)
    held = encode_pairs(tokenizer, eval_recs, cfg.instruction, *lengths)
    held.chosen_prob = _demo_chosen_prob(eval_recs)
    held = _by_length(held)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = training.warmup_decay_schedule(optimizer, total)
    start = _resume(stage_dir, h, model, optimizer, scheduler, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    if cfg.micro_batch_size == "auto":  # on CUDA: one probe step, halving on OOM
        micro = plan.probe_micro(micro, lambda m: plan.reward_probe(
            model, train, m, pad_id, optimizer), accelerator.device)
    main = accelerator.is_main_process
    log.info(f"reward model: base {base}, "
             + (f"LoRA rank {cfg.reward_lora_dim}" if cfg.reward_lora_dim else "full tuning")
             + f", {models.count_parameters(raw, trainable_only=True):,} trainable parameters, "
             f"{len(train)} train / {len(held)} held-out pairs ({eval_source}), "
             f"{total} steps of {cfg.batch_size} pairs on {world} process(es), "
             f"lr {cfg.learning_rate:g}")

    tb = training.TensorBoard(logs_dir, purge_step=start + 1)  # hide what a killed run logged
    eval_every = cfg.eval_every_steps or math.ceil(total / EVALS_PER_RUN)
    metrics: dict[str, float] = {}
    t0 = time.monotonic()
    with _progress(cfg.progress and main) as progress:
        task = progress.add_task("train", total=total, completed=start, stats="")
        for step in range(start + 1, total + 1):
            batch = global_batch(step - 1, cfg.batch_size, len(train), cfg.seed)
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
            if step % cfg.checkpoint_every_steps == 0 and step < total and main:
                position = divmod(step * cfg.batch_size, len(train))
                save_checkpoint(stage_dir, step, raw, optimizer, scheduler, position, h)

    meta = _metadata(cfg, base, h, metrics, eval_source, len(train), len(held))
    tb.hparams({**cfg.weights_key(), "base_model": base, "learning_rate": cfg.learning_rate},
               {"hparam/eval_accuracy": meta["eval_accuracy"],
                "hparam/eval_rank_loss": meta["eval_rank_loss"]})
    tb.close()
    if main:
        _write_outputs(stage_dir, raw, tokenizer, meta, h)
    accelerator.wait_for_everyone()
    log.info(f"reward model: {total - start} steps in {time.monotonic() - t0:.0f}s")
    return _outputs(stage_dir, logs_dir, meta, skipped=False, start=start)


def _demo_chosen_prob(records: list[dict]) -> list[float] | None:
    """For demo-world held-out pairs, each label's probability (for the expected
    accuracy, the noise ceiling's units); None for any other data."""
    from rlhfkit.demo import world

    if not records or not all(world.is_demo_record(r) for r in records):
        return None
    return [world.chosen_probability(r) for r in records]


def _metadata(cfg: RewardConfig, base: str, h: str, metrics: dict[str, float],
              eval_source: str, n_train: int, n_held: int) -> dict[str, Any]:
    """RUN/reward_model/rlhfkit.json: what a reader needs to load and use the model."""
    return {"kind": "reward_model", "base_model": base, "lora_dim": cfg.reward_lora_dim,
            "instruction": cfg.instruction,
            "prompt_sequence_length": cfg.prompt_sequence_length,
            "target_sequence_length": cfg.target_sequence_length, "append_eos": True,
            "eval_accuracy": metrics["eval/accuracy"],
            "eval_rank_loss": metrics["eval/rank_loss"], "eval_source": eval_source,
            "eval_expected_accuracy": metrics.get("eval/expected_accuracy"),
            "eval_pairs": n_held, "train_pairs": n_train,
            "steps": cfg.reward_model_train_steps, "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate, "seed": cfg.seed, "config_hash": h}


def _resume(stage_dir: Path, h: str, model, optimizer, scheduler, accelerator) -> int:
    """The step to start from: the newest checkpoint's, or 0. Checkpoints written with
    other parameters are removed (by rank 0, once every rank has looked)."""
    found = runstate.latest_checkpoint(stage_dir)
    if found is None:
        return 0
    step, path = found
    stale = json.loads((path / "state.json").read_text(encoding="utf-8"))["config_hash"] != h
    if not stale:
        load_checkpoint(path, model, optimizer, scheduler)
        log.info(f"reward model: resuming from {path}")
        return step
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        log.notice(f"{stage_dir}: removing checkpoints of a run with other parameters")
        runstate.remove_checkpoints(stage_dir)
    accelerator.wait_for_everyone()
    return 0


def _write_outputs(stage_dir: Path, model: RewardModel, tokenizer, meta: dict, h: str) -> None:
    """RUN/reward_model/ replaced atomically by the final files, DONE written last inside
    it; the checkpoints go with the old directory."""
    from rlhfkit.io import atomic_dir, atomic_write_json

    with quiet_transformers(), atomic_dir(stage_dir) as tmp:
        # peft: adapter_model.safetensors (LoRA + score head) + adapter_config.json;
        # full tuning: model.safetensors + config.json.
        model.model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's placeholder model card
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / META_FILE, meta)
        runstate.mark_done(tmp / "DONE", h)


def _outputs(stage_dir: Path, logs_dir: Path, meta: dict, skipped: bool,
             start: int | None) -> dict[str, Any]:
    """What `run` returns; `resumed_from_step`: the checkpoint's step (0: a fresh start,
    None: skipped)."""
    return {"reward_model_dir": str(stage_dir), "logs_dir": str(logs_dir),
            "resumed_from_step": start,
            "eval_accuracy": meta["eval_accuracy"], "eval_rank_loss": meta["eval_rank_loss"],
            "eval_expected_accuracy": meta.get("eval_expected_accuracy"),
            "eval_source": meta["eval_source"], "steps": meta["steps"], "skipped": skipped}
