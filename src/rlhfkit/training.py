"""What the reward and policy training loops share: the accelerator, LoRA settings, the
learning-rate schedule, TensorBoard logging and cross-process reduction.

Multi-process runs (`torchrun --nproc_per_node N`, gloo on CPU, NCCL on GPUs) and FSDP /
DeepSpeed are `accelerate` configuration; nothing here assumes CUDA.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from rlhfkit import log


def make_accelerator(gradient_accumulation_steps: int = 1, cpu_allocator: str = "cache"):
    """An `accelerate.Accelerator` on the GPU when one is present, else the CPU (with the
    `cpu_allocator` setting applied: PipelineParams).

    Mixed precision stays off on CPU (bf16 matmuls are ~60x slower there); on GPUs with
    bf16 support the weights are loaded in bf16 by `models.pick_dtype` instead.
    """
    from accelerate import Accelerator

    if cpu_allocator == "release" and not torch.cuda.is_available():
        return_freed_memory()
    return Accelerator(cpu=not torch.cuda.is_available(),
                       gradient_accumulation_steps=gradient_accumulation_steps)


# glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h) and its initial value, 128 KiB.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """`cpu_allocator: release`: freed tensor buffers go back to the OS at once (Linux /
    glibc); True if set.

    glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap, and
    returns it to the OS on free; but the first such free raises the threshold to that
    size (up to 32 MiB), after which activations come from the heap and stay resident when
    freed. Measured at the ~250M Llama shape, one LoRA PPO step: the update's forward
    raises RSS by 1012 MiB for 470 MiB of saved tensors with glibc's default, by 470 MiB
    with the threshold fixed at 128 KiB; peak RSS 2707 -> 1865 MiB
    (benchmarks/activation_profile.py). The cost is an mmap and fresh zeroed pages per
    large allocation: ~20% more CPU time per step at 250M, ~2x at the demo's size, where
    steps are allocation-bound (docs/gpu.md). A MALLOC_MMAP_THRESHOLD_ in the environment
    (glibc's own setting) is left to rule."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        libc.malloc_trim(0)  # what the heap already holds
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return False
    return ok


# T5's attention (q, k, v, o: self-, cross-) and feed-forward projections (wi, wo; gated in
# T5 1.1 / Flan-T5: wi_0, wi_1); its scalar head `classification_head` trains in full.
T5_LORA_TARGETS = ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"]


def lora_config(rank: int, task_type: str, alpha: int | None = None, dropout: float = 0.0,
                seq2seq: bool = False):
    """LoRA on every linear layer of the transformer blocks (not the LM head / scalar head);
    for an encoder-decoder (`seq2seq`), T5's projections in encoder and decoder.

    Vertex uses rank 1 for the policy and rank 4 for the reward model. alpha defaults to
    2 * rank so the adapter's effective scale (alpha / rank = 2) does not change with rank.
    """
    from peft import LoraConfig

    extra = {}
    if seq2seq:
        extra["target_modules"] = T5_LORA_TARGETS
        if task_type == "SEQ_CLS":
            extra["modules_to_save"] = ["classification_head"]
    return LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout,
                      task_type=task_type, bias="none",
                      **{"target_modules": "all-linear", **extra})


def warmup_decay_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                          warmup_fraction: float = 0.05, min_ratio: float = 0.1):
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to
    `min_ratio` x the base learning rate at the last step."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


MAX_GRAD_NORM = 1.0  # global L2 norm the gradient is clipped to before each step


def optimizer_step(accelerator, model, optimizer, scheduler) -> float:
    """Clip the accumulated gradient to MAX_GRAD_NORM, step the optimizer and the schedule,
    clear the gradient. Returns the norm before clipping."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def reduce_mean(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over processes (a no-op with one process)."""
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist(), strict=True))


class TensorBoard:
    """A SummaryWriter on the main process only; other ranks get no-ops. A resumed run
    passes `purge_step` = its first step: events a killed run logged past its checkpoint
    are hidden, so the curves show each step once."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled and log.is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is not None:
            clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                     for k, v in hparams.items()}
            self.writer.add_hparams(clean, metrics, run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def check_finite(step: int, all_reduce=None, **values: torch.Tensor | float) -> None:
    """Stop with a clear message naming the step when a loss or logits go NaN / inf.
    `all_reduce` (sums a tensor over processes) makes every rank agree, so all raise
    together: one rank raising alone would leave the others waiting in a collective."""
    from rlhfkit.errors import RlhfkitError

    bad = torch.tensor([float(not torch.isfinite(torch.as_tensor(v)).all())
                        for v in values.values()])
    if all_reduce is not None:
        device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), None)
        bad = all_reduce(bad if device is None else bad.to(device)).cpu()
    for name, flag in zip(values, bad.tolist(), strict=True):
        if flag:
            raise RlhfkitError(
                f"step {step}: {name} is not finite (NaN or inf); the last good checkpoint "
                "is kept. Lower the learning-rate multiplier or check the data.")


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass instead of
    keeping them (Chen et al. 2016): activation memory falls from layers x a block's
    tensors to layers x its input + one block, for ~1/3 more compute.

    `model`: a transformers model or a peft model wrapping one. Non-reentrant
    `torch.utils.checkpoint` (exact: the recomputed forward is the same function, so
    losses and gradients equal the plain run's; a test checks it). With LoRA the
    embeddings are frozen, so their output is made to require grad
    (`enable_input_require_grads`): without it a reentrant checkpoint would see inputs
    that need no gradient and give the adapters none.

    transformers checkpoints a block only in training mode; rlhfkit's models run in eval
    mode (no dropout: PPO's first ratio must be 1), so only the blocks' own `training`
    flag is set -- not their children's, whose dropout stays off. A checkpointed block is
    replayed in backward with the adapter active then, so each loss must be
    back-propagated before the next pass switches adapters (PPO's update does so).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(hf, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5.x
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(hf, "enable_input_require_grads"):
        hf.enable_input_require_grads()
    for module in hf.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True  # this module only: its dropouts stay in eval mode


def checkpointing_enabled(model: torch.nn.Module) -> bool:
    """Is gradient checkpointing on in `model` (any wrapper: DDP, peft, RewardModel)?"""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
