"""What a stage asks of the memory plan (rlhfkit.plan) when it starts: its micro-batch and
gradient checkpointing with `auto` resolved, and on CUDA one probe step that confirms the
micro-batch, halving on out-of-memory. Called by the reward and policy stages; the plan's
estimator and its table stay in plan.py."""

from __future__ import annotations

import math
from dataclasses import replace

from rlhfkit.errors import RlhfkitError
from rlhfkit.plan import (
    USABLE_FRACTION,
    Device,
    StageMemory,
    choose,
    detect_device,
    for_params,
    load_shape,
    policy_memory,
    reward_memory,
    shards,
)


def _budget(cfg, processes: int) -> tuple[Device, int]:
    """The device and the bytes one process may use (CPU processes share the RAM)."""
    dev = for_params(detect_device(), cfg)
    share = processes if dev.kind == "cpu" else 1
    return dev, int(dev.memory * USABLE_FRACTION) // share


def _explicit(micro, ckpt, local: int) -> tuple[int, bool] | None:
    if micro == "auto" or ckpt == "auto":
        return None
    return min(micro or local, local), bool(ckpt)


def reward_settings(cfg, base: str, processes: int) -> tuple[int, bool]:
    """(micro-batch, checkpointing) of the reward stage (a `reward.RewardConfig`)."""
    local = cfg.batch_size // processes
    chosen = _explicit(cfg.micro_batch_size, cfg.gradient_checkpointing, local)
    if chosen:
        return chosen
    shape, (dev, budget) = load_shape(base, cfg.trust_remote_code), _budget(cfg, processes)
    p, t = cfg.prompt_sequence_length, cfg.target_sequence_length
    m, c, _ = choose(lambda m, c: reward_memory(shape, cfg.reward_lora_dim, cfg.batch_size,
                                                m, p, t, dev, c),
                     local, cfg.micro_batch_size or local, cfg.gradient_checkpointing, budget)
    return m, c


def policy_settings(cfg, processes: int) -> tuple[int, bool]:
    """(micro-batch, checkpointing) of the PPO stage (a `policy.PolicyConfig`); the
    reward model's shape and sharing are read from RUN/reward_model."""
    from rlhfkit.models import resolve_model_reference
    from rlhfkit.policy_model import read_reward_info, same_model

    local = cfg.batch_size // processes
    mini = max(1, local // cfg.num_minibatches)
    chosen = _explicit(cfg.micro_batch_size, cfg.gradient_checkpointing, mini)
    if chosen:
        return chosen
    shape, (dev, budget) = load_shape(cfg.large_model_reference,
                                      cfg.trust_remote_code), _budget(cfg, processes)
    info = read_reward_info(cfg.reward_dir)
    shares = (cfg.policy_lora_dim > 0 and info.lora_dim > 0
              and same_model(info.base_model, resolve_model_reference(cfg.large_model_reference)))
    reward_shape = shape if shares else load_shape(
        info.base_model if info.lora_dim else str(info.path), cfg.trust_remote_code)
    p, t = cfg.prompt_sequence_length, cfg.target_sequence_length

    def fn(m: int, c: bool) -> StageMemory:
        return policy_memory(shape, reward_shape, cfg.policy_lora_dim, info.lora_dim, shares,
                             cfg.kl_coeff, cfg.batch_size, m, p, t, dev, c,
                             shards=shards(cfg, processes))

    m, c, _ = choose(fn, mini, cfg.micro_batch_size or mini, cfg.gradient_checkpointing,
                     budget)
    return m, c


def probe_micro(micro: int, try_step, device) -> int:
    """On CUDA, confirm `micro` with one forward + backward at the longest lengths
    (`try_step(m)`, gradients discarded by the caller), halving on out-of-memory: the plan
    is an estimate, the allocator has the last word. Elsewhere `micro` as planned (an
    out-of-memory on CPU is the kernel's OOM killer, which cannot be caught)."""
    import torch

    if torch.device(device).type != "cuda":
        return micro
    while True:
        try:
            try_step(micro)
            return micro
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if micro == 1:
                raise RlhfkitError("out of GPU memory with micro_batch_size 1; try "
                                   "gradient_checkpointing: true, LoRA or a larger GPU"
                                   ) from None
            micro = math.ceil(micro / 2)
            from rlhfkit import log

            log.notice(f"out of GPU memory in the probe step: micro_batch_size -> {micro}")


def reward_probe(model, pairs, micro: int, pad_id: int, optimizer) -> None:
    """One forward + backward of the reward model on the `micro` longest training pairs
    (gradients discarded): the probe step of `micro_batch_size: auto`."""
    import torch

    from rlhfkit.models import left_pad
    from rlhfkit.reward_data import pair_batch

    order = sorted(range(len(pairs)), key=lambda i: len(pairs.chosen[i]) + len(pairs.rejected[i]))
    part = pairs.subset(order[-micro:])
    batch = pair_batch(part, pad_id) or left_pad(part.chosen + part.rejected, pad_id)
    device = next(model.parameters()).device
    scores = model(**{k: v.to(device) for k, v in batch.items()})
    (scores.sum() * 0).backward()
    optimizer.zero_grad(set_to_none=True)
    del scores
    torch.cuda.empty_cache()


def policy_probe(roles, micro: int, prompt_len: int, target_len: int, optimizer) -> None:
    """One PPO update's forward + backward passes (policy logits, then values) on `micro`
    rows of the longest shape (P + T tokens; the ids do not matter for memory)."""
    import torch

    device = next(roles.parameters()).device
    vocab = roles.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (micro, prompt_len + target_len), device=device)
    mask = torch.ones_like(ids)
    logits = roles.logits(ids, mask, target_len)
    (torch.log_softmax(logits.float(), -1).mean() * 0).backward()
    del logits
    (roles.values(ids, mask, target_len).sum() * 0).backward()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()


def fit_memory(cfg, roles, optimizer, accelerator):
    """The PPO config with micro_batch_size and gradient_checkpointing decided (`auto`
    resolved by the plan, on CUDA confirmed by a probe step) and checkpointing turned on
    in the policy model when chosen."""
    from rlhfkit.training import enable_gradient_checkpointing

    micro, ckpt = policy_settings(cfg, accelerator.num_processes)
    if ckpt:
        enable_gradient_checkpointing(roles.lm)
    if cfg.micro_batch_size == "auto":
        micro = probe_micro(micro, lambda m: policy_probe(
            roles, m, cfg.prompt_sequence_length, cfg.target_sequence_length, optimizer),
            accelerator.device)
    if cfg.micro_batch_size is None and not ckpt:
        micro = None  # unchanged: the whole batch / minibatch per pass
    # The PipelineParams are the one home of both keys: the stage's copy gets the resolved values.
    return replace(cfg, params=replace(cfg.params, micro_batch_size=micro,
                                       gradient_checkpointing=ckpt))
