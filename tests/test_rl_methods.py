"""One-pass PPO (value head on the policy's trunk), LoRA value_model shared | separate,
RLOO and GRPO on tiny models: gradients, rollout values, no value model, end-to-end CLI
runs and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_policy import TINY, changed, lora_weights, make_config
from typer.testing import CliRunner

from rlhfkit import policy
from rlhfkit import ppo_math as pm
from rlhfkit.cli import app
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import encode_prompts
from rlhfkit.params import PipelineParams
from rlhfkit.policy_model import build_roles
from rlhfkit.policy_rollout import Rollout, micro_slices, pieces
from rlhfkit.training import make_accelerator


def _batch(roles, n_new: int = 6):
    q = encode_prompts(roles.tokenizer, ["a", "a much longer prompt about my dog"], 16)
    torch.manual_seed(0)
    out = roles.sample(q["input_ids"], q["attention_mask"], n_new, with_values=True)
    ids = torch.cat([q["input_ids"], out.tokens], 1)
    attn = torch.cat([q["attention_mask"], torch.ones_like(out.tokens)], 1)
    return out, ids, attn, pm.response_mask(out.tokens, roles.eos_ids)


def _nonzero_head(roles):
    with torch.no_grad():  # V = 0 at first would make every value comparison trivial
        roles.value_head.weight.normal_(0, 0.5)


@pytest.mark.parametrize("lora_dim,arch", [(0, "llama"), (1, "qwen2"), (1, "gpt2")])
def test_sampler_values_equal_a_forward_pass(lora_dim, arch, tiny_model_dirs, reward_models):
    # Where the head shares the policy's trunk the rollout takes V(s_t) from the sampler's
    # KV-cached hidden states; they must equal a batched forward pass's (one pass of
    # logits and values, and a values-only pass) within float tolerance.
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], lora_dim, True,
                        value_model="shared")
    assert roles.shared_value
    _nonzero_head(roles)
    out, ids, attn, mask = _batch(roles)
    assert out.values is not None and out.values.shape == out.tokens.shape
    with torch.no_grad():
        logits, values = roles.policy_and_values(ids, attn, out.tokens.shape[1])
        alone = roles.values(ids, attn, out.tokens.shape[1])
        plain_logits = roles.logits(ids, attn, out.tokens.shape[1])
    assert torch.allclose(values * mask, out.values * mask, atol=1e-4)
    assert torch.allclose(values, alone, atol=1e-5)
    assert torch.allclose(logits, plain_logits, atol=1e-5)
    assert values.abs().max() > 1e-3


def _grads(roles) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in roles.trainable_parameters().items()
            if p.grad is not None}


def grouped_rollout(roles, k: int = 3) -> Rollout:
    """Two prompts (one short: left padding) x k responses; the short prompt's responses
    all end at their 3rd token (EOS, then padding), so its rows trim both sides."""
    tok = roles.tokenizer
    q = encode_prompts(tok, ["a", "a much longer prompt about my dog"], 16)
    q = {key: v.repeat_interleave(k, 0) for key, v in q.items()}
    g = torch.Generator().manual_seed(3)
    responses = torch.randint(3, tok.vocab_size, (2 * k, 6), generator=g)
    responses[responses == tok.eos_token_id] = 3
    responses[:k, 2], responses[:k, 3:] = tok.eos_token_id, tok.pad_token_id
    mask = pm.response_mask(responses, roles.eos_ids)
    ids = torch.cat([q["input_ids"], responses], 1)
    attn = torch.cat([q["attention_mask"], torch.ones_like(responses)], 1)
    zeros, lp = torch.zeros(2 * k), torch.zeros(responses.shape)
    return Rollout(q["input_ids"], q["attention_mask"], responses, mask, ids, attn, lp, lp,
                   None, zeros, zeros, zeros, zeros.bool())


def check_prompt_once(roles, k: int = 3) -> None:
    """Logits and gradient of one prompt pass shared by k responses (RLOO / GRPO) and of
    trimmed pieces equal k full passes over each prompt and response joined."""
    roll = grouped_rollout(roles, k)
    width = roll.responses.shape[1]
    short = roll.piece(torch.arange(k))
    assert short.query_ids.shape[1] < roll.query_ids.shape[1] and short.width == 3
    # micro-batches hold whole groups: micro_batch_size rounds down to k rows (at least k)
    assert [len(p) for p in pieces(roll, torch.arange(2 * k), k + 1, k)] == [k, k]
    assert [len(p) for p in pieces(roll, torch.arange(2 * k), 1, k)] == [k, k]
    assert [len(p) for p in pieces(roll, torch.arange(2 * k), None, k)] == [2 * k]
    assert list(micro_slices(2 * k, k + 1, k)) == [slice(0, k), slice(k, 2 * k)]
    # sorted longest first when split: the long prompt's group comes first
    assert [int(p.rows[0]) for p in pieces(roll, torch.arange(2 * k), k, k)] == [k, 0]
    w = torch.randn(roll.mask.shape, generator=torch.Generator().manual_seed(4)) * roll.mask

    def loss(logits, p):  # a weighted sum of the response log-probs, as the RL losses
        return (pm.logprobs_from_logits(logits, p.responses) * p.cut(w)).sum()

    for reference in (False, True):
        with torch.no_grad():
            full = roles.logits(roll.ids, roll.attn, width, reference=reference)
        for rows in (torch.arange(2 * k), torch.arange(k), torch.arange(k, 2 * k)):
            p = roll.piece(rows)
            once = roles.response_logits(p, k, reference=reference)
            assert once.shape == (len(rows), p.width, full.shape[-1])
            assert torch.allclose(once, full[rows, :p.width], atol=1e-4, rtol=1e-4), (reference, rows)
    roles.zero_grad(set_to_none=True)
    p = roll.piece(torch.arange(2 * k))
    loss(roles.response_logits(p, k), p).backward()
    once = _grads(roles)
    roles.zero_grad(set_to_none=True)
    loss(roles.logits(roll.ids, roll.attn, width), roll.piece(torch.arange(2 * k))).backward()
    full = _grads(roles)
    assert once.keys() == full.keys() and once
    for name in once:
        scale = full[name].abs().max()
        assert (once[name] - full[name]).abs().max() <= 1e-4 * scale + 1e-6, name
    assert any(g.abs().max() > 0 for g in once.values())


def check_sampler_groups(roles, k: int = 3) -> None:
    """The sampler with k (one prompt pass per group of k copies) draws what the sampler
    without it draws from the same seed, with the same log-probs and values."""
    q = encode_prompts(roles.tokenizer, ["a", "a much longer prompt about my dog"], 16)
    q = {key: v.repeat_interleave(k, 0) for key, v in q.items()}
    draws = []
    for kk in (1, k):
        torch.manual_seed(5)
        draws.append(roles.sample(q["input_ids"], q["attention_mask"], 6, with_values=True, k=kk))
    a, b = draws
    assert torch.equal(a.tokens, b.tokens) and len({tuple(r) for r in a.tokens.tolist()}) > 2
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert (a.values is None) == (b.values is None)
    if a.values is not None:
        assert torch.allclose(a.values, b.values, atol=1e-5)


@pytest.mark.parametrize("value_model", ["none", "shared"])
def test_sampler_runs_each_prompt_once_per_group(value_model, tiny_model_dirs, reward_models):
    roles = build_roles(str(tiny_model_dirs["llama"]), reward_models["llama"], 1, True,
                        value_model=value_model)
    if roles.value_head is not None:
        _nonzero_head(roles)
    check_sampler_groups(roles)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_prompt_once_for_k_responses_equals_k_passes(arch, tiny_model_dirs, reward_models):
    # RLOO / GRPO continue each prompt's KV cache with its k responses; a piece drops the
    # columns no row needs. Same logits (policy and reference) and same gradient.
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], 1, True,
                        value_model="none")
    with torch.no_grad():  # a policy that differs from the reference
        for n, p in roles.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    check_prompt_once(roles)


@pytest.mark.parametrize("lora_dim", [0, 1])
def test_one_pass_gradient_equals_two_passes(lora_dim, tiny_model_dirs, reward_models):
    # pg + vf_coef * vf from ONE forward of the shared trunk, back-propagated once, has the
    # same gradient as the policy pass and the value pass back-propagated one after the
    # other: the weights do not change before optimizer.step.
    arch = "llama"
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], lora_dim, True,
                        value_model="shared")
    _nonzero_head(roles)
    out, ids, attn, mask = _batch(roles)
    width = out.tokens.shape[1]
    g = torch.Generator().manual_seed(1)
    adv, ret = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g)
    old_v = out.values + 0.1 * torch.randn(mask.shape, generator=g)

    def losses(logits, values):
        logp = pm.logprobs_from_logits(logits, out.tokens)
        pg, _ = pm.policy_loss(logp, out.logprobs - 0.05, adv, mask, 0.2)
        vf, _ = pm.value_loss(values, old_v, ret, mask, 0.2)
        return pg, vf

    roles.zero_grad(set_to_none=True)
    pg, vf = losses(*roles.policy_and_values(ids, attn, width))
    (pg + 0.1 * vf).backward()
    one = _grads(roles)
    roles.zero_grad(set_to_none=True)
    pg2, _ = losses(roles.logits(ids, attn, width), old_v)
    pg2.backward()
    _, vf2 = losses(roles.logits(ids, attn, width).detach(), roles.values(ids, attn, width))
    (0.1 * vf2).backward()
    two = _grads(roles)
    assert one.keys() == two.keys() and "value_head.weight" in one
    assert torch.allclose(pg, pg2) and torch.allclose(vf, vf2)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().max() > 0 for g in one.values())


def test_lora_shared_value_model_step(tiny_model_dirs, reward_models, prompts, tmp_path):
    arch = "gpt_neox"
    cfg = make_config(tmp_path, tiny_model_dirs[arch], reward_models[arch], prompts,
                      value_model="shared")
    t = policy.build_trainer(cfg, make_accelerator())
    assert t.roles.shared_value
    assert not [n for n, _ in t.roles.lm.named_parameters() if ".value." in n]  # no adapter
    before, head = lora_weights(t.roles, "policy"), t.roles.value_head.weight.detach().clone()
    calls = {"values": 0}
    real = t.roles.values

    def counted(*a, **kw):
        calls["values"] += 1
        return real(*a, **kw)

    t.roles.values = counted
    stats, roll = policy.train_step(t, 1)
    assert calls["values"] == 0  # rollout and update take values from the policy's passes
    assert roll.values is not None and {"ppo/loss/value", "ppo/val/vpred"} <= stats.keys()
    assert changed(before, lora_weights(t.roles, "policy"))
    assert not torch.equal(head, t.roles.value_head.weight)


@pytest.mark.parametrize("algorithm,loss_type", [("rloo", "dapo"), ("grpo", "grpo"),
                                                 ("grpo", "dr_grpo"), ("grpo", "dapo")])
def test_rloo_grpo_step_builds_no_value_model(algorithm, loss_type, tiny_model_dirs,
                                              reward_models, prompts, tmp_path):
    arch = "llama"
    cfg = make_config(tmp_path, tiny_model_dirs[arch], reward_models[arch], prompts,
                      rl_algorithm=algorithm, num_generations=3, loss_type=loss_type,
                      micro_batch_size=4)
    t = policy.build_trainer(cfg, make_accelerator())
    assert t.roles.value_head is None
    assert not [n for n, _ in t.roles.lm.named_parameters() if ".value." in n]
    assert not [n for n in t.roles.trainable_parameters() if "value" in n]
    before = lora_weights(t.roles, "policy")
    stats, roll = policy.train_step(t, 1)
    assert len(roll) == TINY["batch_size"] * 3 and roll.values is None
    # episodes i*k .. i*k + k - 1 answer the same prompt
    q = roll.query_ids.reshape(TINY["batch_size"], 3, -1)
    assert (q == q[:, :1]).all()
    assert {"reward", "kl_loss", "objective/kl", f"{algorithm}/loss/policy",
            f"{algorithm}/policy/clipfrac", f"{algorithm}/learning_rate"} <= stats.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert changed(before, lora_weights(t.roles, "policy"))


def test_bad_rl_options_fail_before_any_work(tiny_model_dirs, prompts, tmp_path):
    base = {"preference_dataset": str(prompts), "prompt_dataset": str(prompts),
            "large_model_reference": str(tiny_model_dirs["llama"])}
    with pytest.raises(RlhfkitError, match="'ppo', 'rloo', 'grpo'.*got 'a2c'"):
        PipelineParams.from_dict({**base, "rl_algorithm": "a2c"})
    with pytest.raises(RlhfkitError, match="num_generations must be >= 2 for rloo"):
        PipelineParams.from_dict({**base, "rl_algorithm": "rloo", "num_generations": 1})
    with pytest.raises(RlhfkitError, match="loss_type must be one of"):
        PipelineParams.from_dict({**base, "loss_type": "bnpo"})
    with pytest.raises(RlhfkitError, match="value_model must be one of"):
        PipelineParams.from_dict({**base, "value_model": "tied"})
    assert PipelineParams.from_dict({**base, "rl_algorithm": "grpo"}).generations_per_prompt == 4
    assert PipelineParams.from_dict(base).generations_per_prompt == 1
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**base, "rl_algorithm": "dpo"}))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-policy", str(params), "--output-dir", str(run)])
    assert isinstance(result.exception, RlhfkitError) and "rl_algorithm" in str(result.exception)
    assert not run.exists()


# -- end to end: the real CLI, each method ----------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ppo-shared", "rloo", "grpo"])
def test_cli_train_policy_each_method(algorithm, tiny_model_dirs, reward_models,
                                      prompts, tmp_path):
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    arch = "qwen2"
    extra = ({"value_model": "shared"} if algorithm == "ppo-shared" else
             {"rl_algorithm": algorithm, "num_generations": 2})
    name = extra.get("rl_algorithm", "ppo")
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "preference_dataset": str(prompts), "prompt_dataset": str(prompts),
        "large_model_reference": str(tiny_model_dirs[arch]), **TINY,
        "reinforcement_learning_train_steps": 3, "checkpoint_every_steps": 2, **extra}))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-policy", str(params), "--output-dir", str(run),
                                      "--reward-model", str(reward_models[arch])])
    assert result.exit_code == 0, result.output
    out = run / "policy"
    assert (out / "DONE").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not [k for k in load_file(str(out / "adapter_model.safetensors")) if "value" in k]
    events = EventAccumulator(str(run / "reinforcer-logs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"reward", "kl_loss", "objective/kl", "objective/scores",
            f"{name}/loss/policy", f"{name}/learning_rate"} <= tags
    assert len(events.Scalars("reward")) == 3


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_interrupted_run_resumes_to_the_same_policy(algorithm, tiny_model_dirs, reward_models,
                                                    prompts, tmp_path, monkeypatch):
    # Stopped after the step-2 checkpoint, rerun: the same adapter as one uninterrupted run.
    from safetensors.torch import load_file

    arch = "gpt2"
    kw = dict(rl_algorithm=algorithm, num_generations=2, reinforcement_learning_train_steps=3,
              checkpoint_every_steps=2)
    whole = policy.run(make_config(tmp_path / "whole", tiny_model_dirs[arch],
                                   reward_models[arch], prompts, **kw))
    cfg = make_config(tmp_path / "cut", tiny_model_dirs[arch], reward_models[arch], prompts, **kw)
    real = policy.train_step

    def stop_at_3(t, step):
        if step == 3:
            raise RlhfkitError("interrupted")
        return real(t, step)

    monkeypatch.setattr(policy, "train_step", stop_at_3)
    with pytest.raises(RlhfkitError, match="interrupted"):
        policy.run(cfg)
    saved = load_file(str(tmp_path / "cut" / "policy" / "checkpoint-2" / "trainable.safetensors"))
    assert saved and not [k for k in saved if "value" in k]
    monkeypatch.setattr(policy, "train_step", real)
    assert policy.run(cfg)["resumed_from_step"] == 2
    a = load_file(str(Path(whole["policy_dir"]) / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "policy" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_two_processes_grpo(tiny_model_dirs, reward_models, prompts, tmp_path):
    # Each rank samples whole groups (k responses to each of its prompts), so group
    # baselines need no communication; losses and gradients are the global batch's.
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_policy import _env, _params_file

    params = _params_file(tmp_path / "params.json", tiny_model_dirs["llama"], prompts,
                          rl_algorithm="grpo", num_generations=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "rlhfkit", "train-policy", str(params), "--output-dir", str(run),
           "--reward-model", str(reward_models["llama"])]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "grpo" in done.stderr and "on 2 process(es)" in done.stderr
    assert (run / "policy" / "DONE").is_file()
    events = EventAccumulator(str(run / "reinforcer-logs")).Reload()
    assert len(events.Scalars("grpo/loss/policy")) == TINY["reinforcement_learning_train_steps"]
