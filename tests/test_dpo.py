"""DPO: the loss maths against hand-derived values, the shared-prompt log-probabilities
against full-sequence ones, the parameters, and the stage run in-process on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest_reward import preference_records, read_scalars, write_jsonl

from rlhfkit import dpo, dpo_math, models
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams
from rlhfkit.policy_model import positions

T = torch.tensor


# -- maths ------------------------------------------------------------------------------------

def test_sigmoid_loss_by_hand():
    # Pair 0: h_c = -1 - (-2) = 1, h_r = -3 - (-2) = -1, beta (h_c - h_r) = 0.5 * 2 = 1
    #   -> -log sigmoid(1) = log(1 + e^-1) = 0.3132617.
    # Pair 1: policy == reference -> h = 0 -> log 2 (the loss of every pair at step 1).
    # Pair 2: h_c = -1, h_r = +1 -> beta (h_c - h_r) = -1 -> log(1 + e) = 1.3132617.
    loss = dpo_math.dpo_loss(T([-1.0, -4.0, -3.0]), T([-3.0, -5.0, -1.0]),
                             T([-2.0, -4.0, -2.0]), T([-2.0, -5.0, -2.0]), beta=0.5)
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(2),
                                           math.log(1 + math.e)], abs=1e-6)


def test_ipo_loss_by_hand_is_per_token():
    # h_c = 1 over 2 tokens -> 0.5 per token; h_r = -1 over 1 token -> -1;
    # delta = 0.5 - (-1) = 1.5; 1 / (2 beta) = 1 (beta 0.5) -> (1.5 - 1)^2 = 0.25.
    # Pair 1: h = 0 -> (0 - 1 / (2 * 0.5))^2 = 1.
    loss = dpo_math.dpo_loss(T([-1.0, -2.0]), T([-3.0, -2.0]), T([-2.0, -2.0]),
                             T([-2.0, -2.0]), beta=0.5, loss="ipo",
                             chosen_tokens=T([2, 3]), rejected_tokens=T([1, 4]))
    assert loss.tolist() == pytest.approx([0.25, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="token counts"):
        dpo_math.dpo_loss(T([0.0]), T([0.0]), T([0.0]), T([0.0]), 0.1, "ipo")
    with pytest.raises(ValueError, match="sigmoid, ipo"):
        dpo_math.dpo_loss(T([0.0]), T([0.0]), T([0.0]), T([0.0]), 0.1, "hinge")


def test_statistics_by_hand():
    # beta 0.1: rewards chosen 0.1 * (1, -1) = (0.1, -0.1), rejected 0.1 * (-1, 1);
    # accuracies (1, 0) -> 0.5; margins (0.2, -0.2) -> 0; a tie (pair 3) counts as wrong.
    s = dpo_math.dpo_statistics(T([-1.0, -3.0, -2.0]), T([-3.0, -1.0, -2.0]),
                                T([-2.0, -2.0, -2.0]), T([-2.0, -2.0, -2.0]), beta=0.1)
    assert s["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert s["rewards/accuracies"] == pytest.approx(1 / 3)
    assert s["rewards/margins"] == pytest.approx(0.0, abs=1e-7)
    assert s["logps/chosen"] == pytest.approx(-2.0) and s["logps/rejected"] == pytest.approx(-2.0)
    s = dpo_math.dpo_statistics(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.1)
    assert s["rewards/margins"] == pytest.approx(0.2) and s["rewards/accuracies"] == 1.0


# -- shared-prompt log-probabilities ------------------------------------------------------------

def _full_sequence_logprobs(lm, pairs: dpo.PreferencePairs, pad_id: int) -> torch.Tensor:
    """The reference computation: each prompt + response as one left-padded sequence, the
    response's token log-probabilities read at its last positions and summed."""
    responses = pairs.chosen + pairs.rejected
    seqs = [p + r for p, r in zip(pairs.prompt * 2, responses, strict=True)]
    batch = models.left_pad(seqs, pad_id)
    logp = torch.log_softmax(lm(input_ids=batch["input_ids"], attention_mask=batch[
        "attention_mask"], position_ids=positions(batch["attention_mask"])).logits, -1)
    width = batch["input_ids"].shape[1]
    return torch.stack([sum(logp[i, width - len(r) - 1 + j, tok] for j, tok in enumerate(r))
                        for i, r in enumerate(responses)])


def _policy_and_pairs(model_dir: Path, lora_dim: int = 2):
    torch.manual_seed(0)
    policy = dpo.build_policy(str(model_dir), lora_dim, False, torch.float32)
    with torch.no_grad():  # LoRA B starts at 0: make the adapter change the outputs
        for name, p in policy.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    records = preference_records(4)
    for i, r in enumerate(records):  # prompts of different lengths: real left padding
        r["input_text"] = "my roommate " * (i + 1) + r["input_text"]
    pairs = dpo.encode(policy.tokenizer, records, "Summarize", 40, 10)
    return policy, pairs


def test_shared_prompt_logprobs_equal_full_sequences(tiny_model_dir):
    policy, pairs = _policy_and_pairs(tiny_model_dir)
    pad = policy.tokenizer.pad_token_id
    got = dpo.response_logprobs(policy.lm, **dpo.pair_layout(pairs, pad))
    want = _full_sequence_logprobs(policy.lm, pairs, pad)
    assert got.shape == (8,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # And the gradients of the LoRA weights: the same function of the weights.
    params = [p for p in policy.lm.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got.sum(), params)
    g_want = torch.autograd.grad(_full_sequence_logprobs(policy.lm, pairs, pad).sum(), params)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_reference_is_the_base_with_the_adapter_off(tiny_llama_dir):
    from accelerate import Accelerator

    policy, pairs = _policy_and_pairs(tiny_llama_dir)
    pad = policy.tokenizer.pad_token_id
    ref = dpo.reference_logprobs(policy, pairs, [0, 2, 3], 2, pad, Accelerator(cpu=True))
    base = dpo.build_policy(str(tiny_llama_dir), 0, False, torch.float32)
    with torch.no_grad():
        want = _full_sequence_logprobs(base.lm, pairs, pad).view(2, -1).T  # (n, 2)
    torch.testing.assert_close(ref[[0, 2, 3]], want[[0, 2, 3]], atol=1e-4, rtol=1e-5)
    assert ref[1].tolist() == [0.0, 0.0]  # not visited: not computed
    with torch.no_grad():  # and the adapter is back on afterwards
        on = dpo.response_logprobs(policy.lm, **dpo.pair_layout(pairs, pad))
    assert not torch.allclose(on.view(2, -1).T[0], want[0], atol=1e-3)


def test_visited_pairs_are_the_ones_the_steps_read():
    from rlhfkit.reward_data import global_batch

    for n, steps, batch in ((10, 3, 2), (10, 4, 4), (7, 20, 3)):
        read = {i for s in range(steps) for i in global_batch(s, batch, n, seed=5)}
        assert set(dpo.visited_pairs(n, steps, batch, seed=5)) == read


# -- parameters --------------------------------------------------------------------------------

BASE = {"preference_dataset": "p.jsonl", "prompt_dataset": "q.jsonl",
        "large_model_reference": "m"}


@pytest.mark.parametrize(("values", "message"), [
    ({"tuning_method": "ppo"}, "tuning_method must be one of rlhf, dpo, got 'ppo'"),
    ({"tuning_method": "dpo", "dpo_loss": "hinge"}, "dpo_loss must be one of sigmoid, ipo"),
    ({"tuning_method": "dpo", "dpo_beta": 0}, "dpo_beta must be > 0"),
    ({"reward_model_train_steps": 0}, "only with tuning_method 'dpo'"),
    ({"tuning_method": "dpo", "reward_model_train_steps": -1}, "must be >= 0"),
])
def test_bad_dpo_parameters_are_one_line_errors(values, message):
    with pytest.raises(RlhfkitError, match=message):
        PipelineParams.from_dict({**BASE, **values}, quiet=True)


def test_dpo_defaults_and_no_reward_model():
    p = PipelineParams.from_dict({**BASE, "tuning_method": "dpo",
                                  "reward_model_train_steps": 0}, quiet=True)
    assert (p.dpo_beta, p.dpo_loss, p.reward_model_train_steps) == (0.1, "sigmoid", 0)
    assert PipelineParams.from_dict(BASE, quiet=True).tuning_method == "rlhf"


# -- the stage ---------------------------------------------------------------------------------

def dpo_params(tmp_path: Path, model_dir: Path, **overrides) -> PipelineParams:
    data = write_jsonl(tmp_path / "pref.jsonl", preference_records(24))
    return PipelineParams.from_dict({
        "preference_dataset": str(data), "prompt_dataset": str(data),
        "large_model_reference": str(model_dir), "instruction": "Summarize",
        "tuning_method": "dpo", "reward_model_train_steps": 0,
        "prompt_sequence_length": 24, "target_sequence_length": 12,
        "reinforcement_learning_train_steps": 6, "batch_size": 4, "micro_batch_size": 2,
        "checkpoint_every_steps": 3, "reinforcement_learning_rate_multiplier": 200.0,
        "policy_lora_dim": 2, **overrides}, quiet=True)


def test_stage_trains_writes_policy_and_logs_then_skips(tmp_path, tiny_llama_dir):
    params = dpo_params(tmp_path, tiny_llama_dir)
    run = tmp_path / "run"
    out = dpo.run(dpo.DPOConfig(params, str(run)))
    assert not out["skipped"] and out["resumed_from_step"] == 0 and out["steps"] == 6
    policy = run / "policy"
    assert (policy / "DONE").is_file() and (policy / "adapter_model.safetensors").is_file()
    assert not list(policy.glob("checkpoint-*"))  # dropped once DONE is written
    adapter = json.loads((policy / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(tiny_llama_dir).resolve())
    meta = json.loads((policy / "rlhfkit.json").read_text())
    assert meta["tuning_method"] == "dpo" and meta["kl_coeff"] is None
    tags = read_scalars(run / "dpo-logs")
    for tag in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm",
                "learning_rate"):
        assert [s for s, _ in tags[tag]] == list(range(1, 7)), tag
    # Step 1 sees the base model itself (LoRA B = 0): every pair's loss is log 2, the
    # implicit rewards are 0. Then the learnable GOOD-vs-BAD preference is learnt.
    assert tags["loss"][0][1] == pytest.approx(math.log(2), abs=1e-5)
    assert tags["rewards/margins"][0][1] == pytest.approx(0.0, abs=1e-5)
    assert tags["loss"][-1][1] < math.log(2) - 0.05
    assert tags["rewards/margins"][-1][1] > 0

    again = dpo.run(dpo.DPOConfig(params, str(run)))
    assert again["skipped"] and again["final_loss"] == out["final_loss"]


def test_full_tuning_needs_no_reference_copy(tmp_path, tiny_llama_dir):
    params = dpo_params(tmp_path, tiny_llama_dir, policy_lora_dim=0, dpo_loss="ipo",
                        reinforcement_learning_train_steps=2,
                        reinforcement_learning_rate_multiplier=100.0)
    out = dpo.run(dpo.DPOConfig(params, str(tmp_path / "run")))
    policy = Path(out["policy_dir"])
    assert (policy / "model.safetensors").is_file() and (policy / "DONE").is_file()
    tags = read_scalars(tmp_path / "run" / "dpo-logs")
    # IPO at step 1: h = 0 -> (0 - 1 / (2 * 0.1))^2 = 25.
    assert tags["loss"][0][1] == pytest.approx(25.0, abs=1e-3)
    from rlhfkit import infer  # RUN/policy loads like any tuned policy

    tok, model = infer.load_model(infer.Config(model=str(policy), eval_dataset="-", output="-"),
                                  torch.device("cpu"))
    assert model.num_parameters() > 0 and tok.pad_token_id is not None
