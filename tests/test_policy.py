"""The RL stage on tiny models: roles on one base, one PPO step per architecture,
outputs, NaN handling, kill-and-resume and a 2-process run."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import kill_after_first_checkpoint

from rlhfkit import policy
from rlhfkit import ppo_math as pm
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import encode_prompts, load_causal_lm
from rlhfkit.params import PipelineParams
from rlhfkit.policy_model import build_roles, positions
from rlhfkit.training import make_accelerator

REPO = Path(__file__).resolve().parents[1]
TINY = dict(prompt_sequence_length=16, target_sequence_length=6, batch_size=4,
            ppo_epochs=2, num_minibatches=2, micro_batch_size=2, checkpoint_every_steps=50,
            reinforcement_learning_train_steps=2)


def make_config(run: Path, base: Path, reward: Path, prompts: Path, **kw) -> policy.PolicyConfig:
    own = {f.name for f in dataclasses.fields(policy.PolicyConfig)}
    params = PipelineParams(large_model_reference=str(base), prompt_dataset=str(prompts),
                            preference_dataset=str(prompts),
                            **{k: v for k, v in {**TINY, **kw}.items() if k not in own})
    params.validate()
    return policy.PolicyConfig(params, str(run), reward_model_dir=str(reward),
                               **{k: v for k, v in kw.items() if k in own})


def lora_weights(roles, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in roles.lm.named_parameters()
            if f".{adapter}." in n}


def base_weights(roles) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in roles.lm.named_parameters() if "lora_" not in n}


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


# -- one step on every architecture ----------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_one_ppo_step_trains_policy_and_value_only(arch, tiny_model_dirs, reward_models,
                                                   prompts, tmp_path):
    cfg = make_config(tmp_path, tiny_model_dirs[arch], reward_models[arch], prompts,
                      kl_estimator="k3", target_kl=1.0, whiten_rewards=True,
                      missing_eos_penalty=1.0)
    t = policy.build_trainer(cfg, make_accelerator())
    before = {a: lora_weights(t.roles, a) for a in ("policy", "value", "reward")}
    base, head = base_weights(t.roles), t.roles.value_head.weight.detach().clone()
    stats, roll = policy.train_step(t, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    for tag in ("reward", "kl_loss", "objective/kl", "ppo/loss/policy", "ppo/val/clipfrac"):
        assert tag in stats
    # Both trained adapters and the value head moved (peft's set_adapter did not freeze
    # one of them); the reward adapter and the base did not.
    assert changed(before["policy"], lora_weights(t.roles, "policy"))
    assert changed(before["value"], lora_weights(t.roles, "value"))
    assert not torch.equal(head, t.roles.value_head.weight)
    assert not changed(before["reward"], lora_weights(t.roles, "reward"))
    assert not changed(base, base_weights(t.roles))
    # The reference is the untouched base model: its logits equal a fresh load's.
    plain = load_causal_lm(str(tiny_model_dirs[arch]))
    ids, attn, width = roll.ids, roll.attn, roll.responses.shape[1]
    with torch.no_grad():
        ref = t.roles.logits(ids, attn, width, reference=True)
        want = plain(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
        pol = t.roles.logits(ids, attn, width)
    assert torch.allclose(ref, want[:, -width - 1:-1], atol=1e-5)
    assert not torch.allclose(pol, ref, atol=1e-6)
    # peft re-enabling adapters after the reference pass resets requires_grad; the
    # trained weights must still train and the reward adapter must not.
    assert all(p.requires_grad for p in t.roles.trainable_parameters().values())
    assert not any(p.requires_grad for n, p in t.roles.lm.named_parameters()
                   if ".reward." in n or "lora_" not in n)
    assert t.kl_ctl.value != cfg.kl_coeff  # the adaptive controller moved


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_a_forward_pass(tiny_model_dirs, reward_models, prompts,
                                               temperature):
    # The KV-cached, left-padded sampler and the batched forward pass PPO uses must agree
    # on every token's logprob (at any sampling temperature), or the first PPO ratio
    # would not be 1.
    roles = build_roles(str(tiny_model_dirs["gpt2"]), reward_models["gpt2"], 1, True,
                        temperature=temperature)
    q = encode_prompts(roles.tokenizer, ["a", "a much longer prompt about my dog"], 16)
    torch.manual_seed(0)
    out = roles.sample(q["input_ids"], q["attention_mask"], 8)
    responses, sampled, entropy = out.tokens, out.logprobs, out.entropy
    ids = torch.cat([q["input_ids"], responses], 1)
    attn = torch.cat([q["attention_mask"], torch.ones_like(responses)], 1)
    with torch.no_grad():
        logits = roles.logits(ids, attn, responses.shape[1])
    mask = pm.response_mask(responses, roles.tokenizer.eos_token_id)
    recomputed = pm.logprobs_from_logits(logits, responses)
    assert torch.allclose(recomputed * mask, sampled * mask, atol=1e-4)
    assert torch.allclose(pm.entropy_from_logits(logits) * mask, entropy * mask, atol=1e-4)
    if temperature != 1.0:  # and both are the tempered distribution, not the model's own
        untempered = pm.logprobs_from_logits(logits * temperature, responses)
        assert not torch.allclose(untempered * mask, sampled * mask, atol=1e-3)


def test_shared_base_reward_equals_reward_model_loaded_alone(tiny_model_dirs, reward_models):
    from rlhfkit.reward_model import RewardScorer

    arch = "llama"
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], 1, True)
    assert roles.reward_model is None  # the reward model rides on the shared base
    tok = roles.tokenizer
    q = encode_prompts(tok, ["my dog chewed the couch [summary]: ", "a job offer"], 16)
    responses = torch.tensor([[5, 6, 7, tok.eos_token_id, tok.pad_token_id],
                              [8, 9, 10, 11, 12]])  # one finished, one never ends
    mask = pm.response_mask(responses, tok.eos_token_id)
    batch = roles.reward_inputs(q["input_ids"], q["attention_mask"], responses, mask)
    shared = roles.scores(batch["input_ids"], batch["attention_mask"])
    # The reward stage's own scorer, on its own copy of the model, from texts.
    alone = RewardScorer.load(reward_models[arch], device="cpu")
    prompts = ["my dog chewed the couch [summary]: ", "a job offer"]
    texts = tok.batch_decode([r[m.bool()] for r, m in zip(responses, mask, strict=True)],
                             skip_special_tokens=True)
    expected = alone.score_ids(prompts, [tok(x, add_special_tokens=False)["input_ids"]
                                         for x in texts])
    assert torch.allclose(shared, expected, atol=1e-5)
    assert not torch.allclose(shared[0], shared[1])


def _embedding_copies(shape) -> int:
    """Distinct storages of tensors with the embedding matrix's shape held anywhere."""
    gc.collect()
    kinds = (torch.Tensor, torch.nn.Parameter)
    ptrs = {o.untyped_storage().data_ptr() for o in gc.get_objects()
            if type(o) in kinds and tuple(o.shape) == shape}
    return len(ptrs)


def test_one_copy_of_the_base_weights(tiny_model_dirs, reward_models, tmp_path):
    # A tiny causal LM holds two (vocab, hidden) matrices (embeddings and an untied LM
    # head); a seq-cls reward model one. With LoRA every role shares one base: +2 tensors.
    # Full tuning adds a frozen reference (+2) and a separately loaded reward model (+1).
    arch = "qwen2"
    plain = load_causal_lm(str(tiny_model_dirs[arch]))
    shape = tuple(plain.get_input_embeddings().weight.shape)
    del plain
    before = _embedding_copies(shape)
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], 1, True)
    assert _embedding_copies(shape) - before == 2
    del roles
    before = _embedding_copies(shape)
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], 0, True)
    assert _embedding_copies(shape) - before == 2 + 2 + 1
    del roles
    roles = build_roles(str(tiny_model_dirs[arch]), reward_models[arch], 0, False)
    assert roles.reference is None and not roles.has_reference  # kl_coeff = 0: none at all


def test_full_tuning_step_keeps_the_reference_frozen(tiny_model_dirs, reward_models, prompts,
                                                     tmp_path):
    cfg = make_config(tmp_path, tiny_model_dirs["gpt_neox"], reward_models["gpt_neox"],
                      prompts, policy_lora_dim=0, reinforcement_learning_rate_multiplier=100)
    t = policy.build_trainer(cfg, make_accelerator())
    ref = {n: p.clone() for n, p in t.roles.reference.named_parameters()}
    pol = {n: p.detach().clone() for n, p in t.roles.lm.named_parameters()}
    stats, roll = policy.train_step(t, 1)
    # Sampled before the update, so policy == reference; the sampler's KV-cached logprobs
    # differ from the reference's batched forward pass by float rounding only.
    assert abs(stats["objective/kl"]) < 1e-4
    assert changed(pol, {n: p.detach() for n, p in t.roles.lm.named_parameters()})
    assert not changed(ref, dict(t.roles.reference.named_parameters()))
    with torch.no_grad():
        width = roll.responses.shape[1]
        ref_logits = t.roles.logits(roll.ids, roll.attn, width, reference=True)
        pol_logits = t.roles.logits(roll.ids, roll.attn, width)
    assert not torch.allclose(ref_logits, pol_logits, atol=1e-6)


# -- the stage: outputs, skip, NaN ----------------------------------------------------------------

def test_run_writes_adapter_merged_model_and_done(tiny_model_dirs, reward_models, prompts,
                                                  tmp_path, monkeypatch):
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    base = tiny_model_dirs["llama"]
    cfg = make_config(tmp_path, base, reward_models["llama"], prompts, merge_adapter=True,
                      normalize_reward=True, reinforcement_learning_rate_multiplier=30,
                      samples_every_steps=1, num_normalize_prompts=4)
    result = policy.run(cfg)
    out = Path(result["policy_dir"])
    assert result["steps"] == 2 and result["final_kl"] is not None and not result["skipped"]
    assert (out / "DONE").is_file() and not list(out.glob("checkpoint-*"))
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["kind"] == "policy" and meta["merged"] == "merged"
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                          str(out)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert torch.allclose(tuned, merged, atol=1e-5)
    assert not torch.allclose(tuned, plain, atol=1e-4)
    events = EventAccumulator(str(tmp_path / "reinforcer-logs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"reward", "kl_loss", "objective/kl", "ppo/policy/clipfrac", "ppo/returns/mean",
            "objective/response_length", "ppo/learning_rate"} <= tags
    assert events.Tags()["tensors"]  # the text samples
    # Same parameters again: skipped without loading a model.
    monkeypatch.setattr(policy, "build_trainer", lambda *a: pytest.fail("not skipped"))
    assert policy.run(cfg)["skipped"]


def test_nan_stops_naming_the_step_and_keeps_the_checkpoint(tiny_model_dirs, reward_models,
                                                            prompts, tmp_path, monkeypatch):
    cfg = make_config(tmp_path, tiny_model_dirs["gpt2"], reward_models["gpt2"], prompts,
                      reinforcement_learning_train_steps=4, checkpoint_every_steps=1)
    real_step = policy.train_step

    def poisoned(t, step):
        if step == 3:
            with torch.no_grad():
                next(iter(t.roles.trainable_parameters().values())).fill_(float("nan"))
        return real_step(t, step)

    monkeypatch.setattr(policy, "train_step", poisoned)
    with pytest.raises(RlhfkitError, match="step 3: .* not finite"):
        policy.run(cfg)
    stage = tmp_path / "policy"
    assert (stage / "checkpoint-2").is_dir() and not (stage / "DONE").exists()
    saved = json.loads((stage / "checkpoint-2" / "state.json").read_text())
    assert saved["step"] == 2


def test_cli_reports_a_missing_reward_model(tiny_model_dirs, prompts, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"preference_dataset": str(prompts),
                                  "prompt_dataset": str(prompts),
                                  "large_model_reference": str(tiny_model_dirs["llama"])}))
    result = CliRunner().invoke(app, ["train-policy", str(params), "--output-dir",
                                      str(tmp_path / "run")])
    assert isinstance(result.exception, RlhfkitError)
    assert "reward_model" in str(result.exception) and "train-reward" in str(result.exception)


# -- processes: kill -9 and resume; two ranks -------------------------------------------------------

def _params_file(path: Path, base: Path, prompts: Path, **kw) -> Path:
    values = {"preference_dataset": str(prompts), "prompt_dataset": str(prompts),
              "large_model_reference": str(base), **TINY, **kw}
    path.write_text(json.dumps(values))
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tiny_model_dirs, reward_models,
                                                             prompts, tmp_path):
    from safetensors.torch import load_file

    base, steps = tiny_model_dirs["gpt2"], 16
    params = _params_file(tmp_path / "params.json", base, prompts,
                          reinforcement_learning_train_steps=steps, checkpoint_every_steps=4)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlhfkit", "train-policy", str(params), "--output-dir",
           str(run), "--reward-model", str(reward_models["gpt2"])]
    kill_after_first_checkpoint(cmd, _env(), run / "policy", timeout=120)
    assert not (run / "policy" / "DONE").exists(), "killed too late to test resuming"
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    # An uninterrupted run (in this process) ends with the same adapter.
    cfg = make_config(tmp_path / "whole", base, reward_models["gpt2"], prompts,
                      reinforcement_learning_train_steps=steps, checkpoint_every_steps=4)
    whole = Path(policy.run(cfg)["policy_dir"])
    a = load_file(str(run / "policy" / "adapter_model.safetensors"))
    b = load_file(str(whole / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_two_processes(tiny_model_dirs, reward_models, prompts, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    params = _params_file(tmp_path / "params.json", tiny_model_dirs["llama"], prompts)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "rlhfkit", "train-policy", str(params), "--output-dir", str(run),
           "--reward-model", str(reward_models["llama"])]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stderr
    assert done.stdout.strip().count("policy") == 1  # rank 0 alone reports
    assert (run / "policy" / "DONE").is_file()
    events = EventAccumulator(str(run / "reinforcer-logs")).Reload()
    assert len(events.Scalars("objective/kl")) == TINY["reinforcement_learning_train_steps"]
    assert len(list((run / "reinforcer-logs").iterdir())) == 1  # one writer
