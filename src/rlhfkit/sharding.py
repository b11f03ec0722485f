"""Sharded full tuning (`sharding: fsdp`): the policy's weights, gradients and Adam state
split across processes with torch's FSDP2 (`fully_shard`), checkpoints gathered to full
state dicts.

Why FSDP2 directly and not `accelerator.prepare`: the RL stage already owns its loop
(several forward passes per step under different roles, its own gradient sum over ranks),
so it needs the three things FSDP does -- shard each transformer block, all-gather it for
its forward, reduce-scatter its gradient -- and nothing of a prepared training loop.

What it costs and where it holds: every forward of a sharded block all-gathers its
weights (each token of sampling too, so sampling gathers the whole policy once and keeps
it for the response: `gathered`, as DeepSpeed ZeRO-3 users gather for generation in TRL
and OpenRLHF); the reference model is sharded the same way; the reward model and the
value head stay whole on every rank (a head is one vector; the reward model does not
train). On CPU it runs on gloo (the tests: 2 processes); on GPUs, NCCL.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch


def _fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module | None) -> bool:
    return model is not None and bool(_fsdp_modules(model))


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over every transformer block of `model` (transformers marks them as
    `GradientCheckpointingLayer`s), then the rest (embeddings, final norm, LM head) as the
    root group. Call in a process group (torchrun), before building the optimizer: the
    parameters become DTensors sharded on dim 0.

    FSDP averages gradients over ranks by default; each rank's loss here already carries
    its share of the global token count (policy.Counts), so the ranks' gradients are
    summed instead (divide factor 1), as `policy._sync_gradients` sums them unsharded."""
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not blocks:
        from rlhfkit.errors import RlhfkitError

        raise RlhfkitError(f"sharding: fsdp found no transformer blocks in "
                           f"{type(model).__name__} to shard")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    for m in _fsdp_modules(model):  # each group's own setting (not recursive)
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model


def is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over a mix of sharded (DTensor) and whole
    parameters (the value head): one global L2 norm, both groups scaled by it. Returns
    the norm before clipping, a plain tensor."""
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    groups = [[p for p in params if p.grad is not None and is_dtensor(p) == sharded]
              for sharded in (True, False)]
    norms = []
    for group in groups:
        if group:
            n = get_total_norm([p.grad for p in group])
            norms.append(n.full_tensor() if is_dtensor(n) else n)
    if not norms:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    for group in groups:
        if group:
            clip_grads_with_norm_(group, max_norm, total)
    return total


@contextmanager
def gathered(model: torch.nn.Module):
    """Hold `model`'s full weights on every rank for the duration (a no-op if it is not
    sharded). Sampling needs it: its rows stop at EOS, so ranks run different numbers of
    forward passes, which per-block all-gathers would deadlock on; gathered once, the
    passes need no collective. Peak memory: the whole model in its dtype, for the
    response (the plan's weights line, unsharded)."""
    modules = _fsdp_modules(model)
    if not modules:
        yield model
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    for m in modules:
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
        for m in modules[1:]:  # the root keeps FSDP's own setting: no reshard after forward
            m.set_reshard_after_forward(True, recurse=False)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict), full tensors on CPU on rank 0 (empty on
    the others). A collective: every rank calls it. Keys are the modules' names
    (`lm.model.layers.0...`), the optimizer's state keyed by them too."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optim = None
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return weights, optim


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict, optim: dict) -> None:
    """Load full state dicts (read on rank 0; `{}` elsewhere) into the sharded model and
    its optimizer: rank 0 broadcasts, each rank keeps its shard. A collective."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = _options(broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, optim, options=opts)


def save_pretrained(lm, out: Path, weights: dict) -> None:
    """`lm.save_pretrained` from a gathered state dict (rank 0): a plain transformers
    checkpoint. FSDP2 renames the class it wraps (FSDPLlamaForCausalLM); the config names
    the model's own class, so transformers and vLLM load it as usual."""
    import json

    lm.save_pretrained(str(out), state_dict=weights)
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [a.removeprefix("FSDP") for a in config.get("architectures", [])]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
