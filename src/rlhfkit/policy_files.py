"""What the RL stage writes: checkpoints (and resuming from them) and RUN/policy, through
the shared stage machinery (`runstate.Stage`: same checkpoint, resume, pruning and
publish as the reward model).

RUN/policy/checkpoint-N/ holds what step N needs to continue exactly: the trained weights
(adapters + value head, or the full policy + value head), optimizer and scheduler state,
the KL controller's coefficient, the prompt loader's position and the reward
normalisation, plus the RNG state every stage's checkpoint carries (the policy also reseeds
every step from (seed, step, rank), so a resumed run draws the numbers an uninterrupted
one would).

RUN/policy/ at the end: the policy adapter (a plain peft adapter of the base causal LM:
adapter_config.json + adapter_model.safetensors) or the full weights, the tokenizer,
rlhfkit.json, optionally merged/ (a full model), then DONE, published in one rename.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlhfkit import sharding
from rlhfkit.io import atomic_write_json
from rlhfkit.models import resolve_model_reference
from rlhfkit.runstate import META_FILE, Stage

# The policy stage's trainer (rlhfkit.policy.Trainer), duck-typed so this module does not
# import the stage that imports it: cfg, roles, optimizer, scheduler, kl_ctl, order,
# reward_norm, accelerator.
Trainer = Any

STAGE_DIR = "policy"
__all__ = ["META_FILE", "STAGE_DIR", "resume", "save_policy", "save_state", "write_outputs"]


def _stage(t: Trainer, h: str) -> Stage:
    return Stage(Path(t.cfg.run_dir) / STAGE_DIR, h)


# -- checkpoints ------------------------------------------------------------------------------

def _trained(t: Trainer) -> torch.nn.Module:
    """The trained modules under their checkpoint names (`lm.*`, `value_head.*`): what a
    sharded run gathers and loads as full state dicts."""
    modules = {"lm": t.roles.lm}
    if t.roles.value_head is not None:
        modules["value_head"] = t.roles.value_head
    return torch.nn.ModuleDict(modules)


def save_state(t: Trainer, step: int, h: str) -> None:
    """RUN/policy/checkpoint-{step}: trained weights (adapters + value head, or the full
    policy), optimizer, scheduler, KL controller, prompt position, reward normalisation.
    Sharded (FSDP): every rank joins in gathering the full weights and Adam state, rank 0
    writes them (the optimizer's state keyed by weight name, any process count resumes)."""
    from safetensors.torch import save_file

    names = t.roles.trainable_parameters()
    if sharding.is_sharded(t.roles.lm):
        full, optim = sharding.full_state(_trained(t), t.optimizer)
        weights = {n: full[n].contiguous() for n in names if n in full}
    elif t.accelerator.is_main_process:  # every rank holds the same weights
        weights = {n: p.detach().cpu().contiguous() for n, p in names.items()}
        optim = t.optimizer.state_dict()
    if t.accelerator.is_main_process:
        def write(tmp: Path) -> None:
            save_file(weights, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": optim, "scheduler": t.scheduler.state_dict()},
                       tmp / "optimizer.pt")

        _stage(t, h).save_checkpoint(step, write, {
            "kl_coeff": t.kl_ctl.value, "prompts": t.order.state(),
            "reward_norm": t.reward_norm})
    t.accelerator.wait_for_everyone()


def resume(t: Trainer, h: str) -> int:
    """Load the newest checkpoint made with the same parameters; return its step (the
    steps done; 0 for a fresh start). Checkpoints of other parameters are removed."""
    from safetensors.torch import load_file

    found = _stage(t, h).resume(t.accelerator)
    if found is None:
        return 0
    path, state = found.path, found.state
    sharded = sharding.is_sharded(t.roles.lm)
    main = t.accelerator.is_main_process
    weights = load_file(str(path / "trainable.safetensors")) if main or not sharded else {}
    device = "cpu" if sharded else t.accelerator.device
    opt = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    if sharded:  # rank 0 broadcasts the full state, each rank keeps its shard
        sharding.load_full_state(_trained(t), t.optimizer, weights,
                                 opt["optimizer"] if main else {})
    else:
        with torch.no_grad():
            for name, p in t.roles.trainable_parameters().items():
                p.copy_(weights[name].to(p.device))
        t.optimizer.load_state_dict(opt["optimizer"])
    t.scheduler.load_state_dict(opt["scheduler"])
    t.kl_ctl.value = state["kl_coeff"]
    t.order.epoch, t.order.position = state["prompts"]["epoch"], state["prompts"]["position"]
    t.reward_norm = tuple(state["reward_norm"]) if state["reward_norm"] else None
    return found.step


# -- outputs ------------------------------------------------------------------------------------

def save_policy(t: Trainer, out: Path, final: dict, full: dict | None = None) -> dict:
    """RUN/policy: the policy adapter (a plain peft adapter of the base causal LM) or the
    full weights, the tokenizer, rlhfkit.json; with merge_adapter also merged/, a full
    model plain `transformers` loads. Merging consumes the shared model: call last."""
    import copy

    from safetensors.torch import save_file

    cfg, roles = t.cfg, t.roles
    base = resolve_model_reference(cfg.large_model_reference)
    if Path(base).is_dir():
        base = str(Path(base).resolve())
    if roles.peft is not None:
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(roles.peft, adapter_name="policy")
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  str(out / "adapter_model.safetensors"))
        config = copy.deepcopy(roles.peft.peft_config["policy"])
        config.base_model_name_or_path, config.inference_mode = base, True
        config.save_pretrained(str(out))
    elif full is not None:
        sharding.save_pretrained(roles.lm, out, full)
    else:
        roles.lm.save_pretrained(str(out))
    roles.tokenizer.save_pretrained(str(out))
    merged = cfg.merge_adapter and roles.peft is not None
    meta = {"kind": "policy", "base_model": base, "lora_dim": cfg.policy_lora_dim,
            "merged": "merged" if merged else None, "instruction": cfg.instruction,
            "prompt_sequence_length": cfg.prompt_sequence_length,
            "target_sequence_length": cfg.target_sequence_length,
            "train_steps": cfg.reinforcement_learning_train_steps,
            "learning_rate": cfg.learning_rate, "kl_coeff": cfg.kl_coeff, **final}
    atomic_write_json(out / META_FILE, meta)
    if merged:
        model = roles.peft.merge_and_unload(adapter_names=["policy"])
        model.save_pretrained(str(out / "merged"))
        roles.tokenizer.save_pretrained(str(out / "merged"))
    return meta


def write_outputs(t: Trainer, h: str, final: dict) -> dict:
    """Publish RUN/policy (outputs, then DONE, in one rename; the checkpoints go with the
    old directory) and return its rlhfkit.json."""
    stage = _stage(t, h)
    full = sharding.full_state(t.roles.lm)[0] if sharding.is_sharded(t.roles.lm) else None
    if t.accelerator.is_main_process:
        stage.publish(lambda tmp: save_policy(t, tmp, final, full))
    t.accelerator.wait_for_everyone()
    return json.loads((stage.dir / META_FILE).read_text())
