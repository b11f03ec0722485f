"""Sharded full tuning (`sharding: fsdp`, rlhfkit.sharding): the parameter's checks, the
mixed-group gradient clipping, and 2 CPU processes (gloo) running the real CLI -- killed
after a checkpoint, resumed, ending with the weights of an unsharded 2-process run (DDP)
and a policy plain transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import kill_after_first_checkpoint

from rlhfkit import sharding
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams

REPO = Path(__file__).resolve().parents[1]


REQUIRED = dict(preference_dataset="p.jsonl", prompt_dataset="q.jsonl",
                large_model_reference="gpt2")


def test_sharding_values_are_checked():
    with pytest.raises(RlhfkitError, match="sharding must be one of 'none', 'fsdp'"):
        PipelineParams(**REQUIRED, sharding="zero3").validate()
    with pytest.raises(RlhfkitError, match="shards full tuning"):
        PipelineParams(**REQUIRED, sharding="fsdp", policy_lora_dim=1).validate()
    with pytest.raises(RlhfkitError, match="not yet for DPO"):
        PipelineParams(**REQUIRED, sharding="fsdp", policy_lora_dim=0, tuning_method="dpo").validate()
    PipelineParams(**REQUIRED, sharding="fsdp", policy_lora_dim=0).validate()


def test_clip_grad_norm_matches_torch_on_whole_parameters():
    # Gradients (3, 4) and (2,): norm sqrt(9 + 16 + 0 + 4 + 0 + ...) by hand below.
    a = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    b.grad = torch.tensor([0.0, 12.0])
    norm = sharding.clip_grad_norm_([a, b, torch.nn.Parameter(torch.ones(1))], 1.0)
    assert float(norm) == pytest.approx(13.0)  # sqrt(9 + 16 + 144); a grad-less one skipped
    assert float(torch.cat([a.grad.flatten(), b.grad]).norm()) == pytest.approx(1.0, rel=1e-5)
    assert not sharding.is_sharded(torch.nn.Linear(2, 2))


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(REPO / "src")}
    env.pop("RANK", None)
    return env


def _run_cmd(params: Path, run: Path, reward: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", "-m", "rlhfkit", "train-policy", str(params),
            "--output-dir", str(run), "--reward-model", str(reward)]


@pytest.mark.slow
def test_fsdp_two_processes_resume_and_match_ddp(tiny_model_dirs, reward_models, prompts,
                                                  tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base, reward = tiny_model_dirs["llama"], reward_models["llama"]
    values = {"preference_dataset": str(prompts), "prompt_dataset": str(prompts),
              "large_model_reference": str(base), "prompt_sequence_length": 16,
              "target_sequence_length": 6, "batch_size": 4, "ppo_epochs": 2,
              "num_minibatches": 2, "micro_batch_size": 1, "policy_lora_dim": 0,
              "kl_coeff": 0.1, "reinforcement_learning_train_steps": 12,
              "checkpoint_every_steps": 3}
    fsdp_params, ddp_params = tmp_path / "fsdp.json", tmp_path / "ddp.json"
    fsdp_params.write_text(json.dumps({**values, "sharding": "fsdp"}))
    ddp_params.write_text(json.dumps(values))

    run = tmp_path / "fsdp"
    cmd = _run_cmd(fsdp_params, run, reward)
    kill_after_first_checkpoint(cmd, _env(), run / "policy")  # launcher and both ranks
    assert not (run / "policy" / "DONE").exists(), "killed too late to test resuming"
    checkpoint = next((run / "policy").glob("checkpoint-*"))
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    base_model = AutoModelForCausalLM.from_pretrained(base)
    q = "lm.model.layers.0.self_attn.q_proj.weight"
    assert saved[q].shape == base_model.model.layers[0].self_attn.q_proj.weight.shape  # full

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr and "on 2 process(es)" in done.stderr
    ddp = subprocess.run(_run_cmd(ddp_params, tmp_path / "ddp", reward), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    sharded = AutoModelForCausalLM.from_pretrained(run / "policy")  # plain transformers
    assert json.loads((run / "policy" / "config.json").read_text())["architectures"] == \
        [type(base_model).__name__]
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "policy")
    a, b = sharded.state_dict(), whole.state_dict()
    assert a.keys() == b.keys()
    start = base_model.state_dict()
    moved = sum(float((b[k] - start[k]).pow(2).sum()) for k in b) ** 0.5
    apart = sum(float((a[k] - b[k]).pow(2).sum()) for k in b) ** 0.5
    assert moved > 1e-3  # the runs trained: not the equality of two untouched bases
    assert apart < 1e-3 * moved  # float order only (measured 3e-6; averaged grads: 5e-2)
    # Adam is blind to a gradient's scale: the logged norms show the ranks' gradients are
    # summed, not averaged (step 1, before any weight differs: the same to float order).
    norms = [_scalars(r / "reinforcer-logs", "ppo/grad_norm") for r in (run, tmp_path / "ddp")]
    assert len(norms[0]) == len(norms[1]) == values["reinforcement_learning_train_steps"]
    assert norms[0][0] == pytest.approx(norms[1][0], rel=1e-4)


def _scalars(logs: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [e.value for e in EventAccumulator(str(logs)).Reload().Scalars(tag)]
