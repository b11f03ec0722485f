"""Encoder-decoder (T5) models through every stage, on a tiny T5 built in the test
(tests/tiny_models.py): the reward model's scores, the RL roles' log-probs, values and
scores, DPO, and the whole pipeline from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest_reward import final_weights, preference_records, write_jsonl, write_params

from rlhfkit import models, reward, reward_data
from rlhfkit.params import PipelineParams

# -- the reward model -------------------------------------------------------------------------

def _scalar_t5(d: Path, lora_dim: int = 4):
    tok = models.load_tokenizer(str(d))
    model = reward.build_model(str(d), tok, lora_dim)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial adapter and head, so a wrong layout shows
        for n, p in model.named_parameters():
            if "lora_B" in n or "classification_head" in n:
                p.normal_(0, 0.5)
    return tok, model


def test_seq2seq_score_is_the_decoders_last_target_state(tiny_t5_dir):
    # The score of (prompt, response) is classification_head(decoder state at the last
    # target position), with the prompt as encoder input and the targets shifted right;
    # batching (left-padded prompts, right-padded targets, 2 responses per prompt) and the
    # peft wrapper change nothing.
    tok, model = _scalar_t5(tiny_t5_dir)
    prompts = ["Summarize\n\n\npost 1: my roommate eats my food [summary]: ", "hi"]
    responses = ["a short kind summary", "no", "rambling text that never ends at all", "x"]
    p_ids, r_ids = reward_data.seq2seq_for_scoring(tok, prompts * 2, responses, 64, 16)
    assert p_ids[0][-1] == tok.eos_token_id and r_ids[1][-1] == tok.eos_token_id
    batch = reward_data.split_batch(p_ids[:2], r_ids, tok.pad_token_id)
    with torch.no_grad():
        got = model(**batch)
        hf = model.model.get_base_model()
        for j in range(4):
            enc = torch.tensor([p_ids[j % 2]])
            dec = torch.tensor([[0] + r_ids[j][:-1]])  # start token = pad id 0
            h = hf.transformer(input_ids=enc, decoder_input_ids=dec).last_hidden_state
            assert got[j].item() == pytest.approx(hf.classification_head(h[0, -1]).item(),
                                                  abs=1e-5)
    scorer = reward.RewardScorer(model, tok, {"prompt_sequence_length": 64,
                                              "target_sequence_length": 16}, "cpu", 3)
    assert torch.allclose(scorer.score_ids(prompts * 2, responses), got, atol=1e-5)


def test_seq2seq_pairs_split_at_the_prompt(tiny_t5_dir):
    tok = models.load_tokenizer(str(tiny_t5_dir))
    recs = preference_records(3)
    pairs = reward_data.encode_pairs(tok, recs, "Summarize", 24, 12, seq2seq=True)
    p_ids = reward_data.encode_prompt_ids(tok, [f"Summarize\n\n\n{r['input_text']}"
                                                for r in recs], 24)
    assert pairs.prompt_lengths == [len(p) for p in p_ids]
    b = reward_data.pair_batch(pairs.subset([2, 0]), tok.pad_token_id)
    assert b["input_ids"].shape[0] == 2 and b["suffix_ids"].shape[0] == 4
    # row 0 of the suffixes is pair 2's chosen response + EOS, right-padded
    chosen = recs[2][f"candidate_{recs[2]['choice']}"]
    want = tok(chosen, add_special_tokens=False)["input_ids"][:12] + [tok.eos_token_id]
    assert b["suffix_ids"][0, :len(want)].tolist() == want
    assert b["suffix_mask"][0].sum().item() == len(want)


@pytest.mark.parametrize("lora_dim", [4, 0])
def test_t5_reward_model_trains_and_round_trips(tiny_t5_dir, tmp_path, lora_dim):
    evals = preference_records(6, seed=1)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", evals)
    params = PipelineParams.from_file(write_params(
        tmp_path, tiny_t5_dir, n_pairs=32, reward_model_train_steps=6, reward_lora_dim=lora_dim,
        eval_dataset=str(eval_file), micro_batch_size=3), quiet=True)
    cfg = reward.RewardConfig.from_params(params, tmp_path / "run")
    cfg.progress = False
    result = reward.run(cfg)
    out = Path(result["reward_model_dir"])
    weights = final_weights(out)
    assert any("classification_head" in k for k in weights)  # the head is saved
    if lora_dim:
        assert any(".wi_0.lora_A" in k for k in weights)  # LoRA on T5's FF projections
        assert any("EncDecAttention.q.lora_A" in k for k in weights)
    scorer = reward.RewardScorer.load(out, batch_size=4)
    prompts = [scorer.prompt(r) for r in evals]
    c = torch.tensor(scorer.score(prompts, [r[f"candidate_{r['choice']}"] for r in evals]))
    r = torch.tensor(scorer.score(prompts, [r[f"candidate_{1 - r['choice']}"] for r in evals]))
    assert reward.pair_accuracy(c, r).mean().item() == pytest.approx(result["eval_accuracy"])
    assert reward.bradley_terry_loss(c, r).mean().item() == pytest.approx(
        result["eval_rank_loss"], abs=1e-5)


# -- RL: the roles on an encoder-decoder ------------------------------------------------------

def make_t5_reward_model(base: Path, out: Path, lora_dim: int = 4) -> Path:
    """RUN/reward_model/ as the reward stage writes it, with random (non-zero) weights."""
    import json

    tok, model = _scalar_t5(base, lora_dim)
    model.model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    meta = {"kind": "reward_model", "base_model": str(Path(base).resolve()),
            "lora_dim": lora_dim, "instruction": None, "prompt_sequence_length": 16,
            "target_sequence_length": 8, "append_eos": True}
    (out / "rlhfkit.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def t5_reward(tiny_model_dirs, tmp_path_factory) -> Path:
    return make_t5_reward_model(tiny_model_dirs["t5"], tmp_path_factory.mktemp("t5_rm"))


def _roles(tiny_t5_dir, t5_reward, value_model="separate", lora_dim=2, temperature=1.0):
    from rlhfkit.policy_model import build_roles

    roles = build_roles(str(tiny_t5_dir), t5_reward, lora_dim, True, temperature=temperature,
                        value_model=value_model)
    with torch.no_grad():  # a policy that differs from the reference and a non-zero V
        for n, p in roles.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
        if roles.value_head is not None:
            roles.value_head.weight.normal_(0, 0.3)
    return roles


def test_t5_encoder_once_for_k_responses_equals_k_passes(tiny_t5_dir, t5_reward):
    # RLOO / GRPO on T5: the encoder runs once per prompt for its k responses.
    from test_rl_methods import check_prompt_once, check_sampler_groups

    check_prompt_once(_roles(tiny_t5_dir, t5_reward))
    check_sampler_groups(_roles(tiny_t5_dir, t5_reward, value_model="shared"))


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_t5_rollout_logprobs_values_equal_teacher_forced_forward(tiny_t5_dir, t5_reward,
                                                                 value_model):
    # The sampler (encoder once, KV-cached decoder) and the teacher-forced passes PPO
    # trains with agree on every decoder token's logprob, entropy and value; the reference
    # (adapters off) is the plain checkpoint's teacher-forced forward.
    from rlhfkit import ppo_math as pm

    roles = _roles(tiny_t5_dir, t5_reward, value_model, temperature=0.7)
    q = models.encode_prompts(roles.tokenizer, ["a", "a much longer prompt about my dog"], 16)
    torch.manual_seed(0)
    out = roles.sample(q["input_ids"], q["attention_mask"], 8, with_values=True)
    ids = torch.cat([q["input_ids"], out.tokens], 1)
    attn = torch.cat([q["attention_mask"], torch.ones_like(out.tokens)], 1)
    width = out.tokens.shape[1]
    mask = pm.response_mask(out.tokens, roles.eos_ids)
    with torch.no_grad():
        logits = roles.logits(ids, attn, width)
        ref = roles.logits(ids, attn, width, reference=True)
        plain = models.load_causal_lm(str(tiny_t5_dir)).eval()
        dec = torch.cat([torch.zeros_like(out.tokens[:, :1]), out.tokens[:, :-1]], 1)
        want_ref = plain(**q, decoder_input_ids=dec).logits / 0.7
        values = roles.values(ids, attn, width)
    assert torch.allclose(pm.logprobs_from_logits(logits, out.tokens) * mask,
                          out.logprobs * mask, atol=1e-4)
    assert torch.allclose(pm.entropy_from_logits(logits) * mask, out.entropy * mask, atol=1e-4)
    assert torch.allclose(ref, want_ref, atol=1e-4)
    assert not torch.allclose(logits, ref, atol=1e-3)
    if value_model == "shared":  # the sampler's decoder states give the rollout's values
        _, v = roles.policy_and_values(ids, attn, width)
        assert torch.allclose(out.values * mask, v * mask, atol=1e-4)
        assert torch.allclose(values, v, atol=1e-5)
    # The reward model scores (prompt -> encoder, response + EOS -> decoder)
    reward_in = roles.reward_inputs(q["input_ids"], q["attention_mask"], out.tokens, mask)
    alone = reward.RewardScorer.load(t5_reward, device="cpu")
    prompts = [r[m.bool()].tolist() for r, m in zip(q["input_ids"], q["attention_mask"],
                                                     strict=True)]
    answers = [r[m.bool()].tolist() for r, m in zip(out.tokens, mask, strict=True)]
    assert torch.allclose(roles.scores(**reward_in), alone.score_ids(prompts, answers),
                          atol=1e-5)


@pytest.mark.parametrize("algo,value_model", [("ppo", "separate"), ("ppo", "shared"),
                                              ("rloo", "separate"), ("grpo", "separate")])
def test_t5_one_rl_step_trains_the_adapters_only(tiny_t5_dir, t5_reward, tmp_path, algo,
                                                 value_model):
    import dataclasses

    from conftest_policy import write_prompts

    from rlhfkit import policy
    from rlhfkit.training import make_accelerator

    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    params = PipelineParams(
        large_model_reference=str(tiny_t5_dir), prompt_dataset=str(prompts),
        preference_dataset=str(prompts), prompt_sequence_length=16, target_sequence_length=6,
        batch_size=4, ppo_epochs=2, num_minibatches=2, micro_batch_size=2,
        reinforcement_learning_train_steps=2, rl_algorithm=algo, value_model=value_model,
        **({"num_generations": 2} if algo != "ppo" else {}))
    params.validate()
    cfg = policy.PolicyConfig(params, str(tmp_path / "run"), reward_model_dir=str(t5_reward))
    t = policy.build_trainer(cfg, make_accelerator())
    trained = {n: p.detach().clone() for n, p in t.roles.trainable_parameters().items()}
    frozen = {n: p.detach().clone() for n, p in t.roles.lm.named_parameters()
              if "lora_" not in n}
    stats, roll = policy.train_step(t, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert "reward" in stats and "kl_loss" in stats
    after = t.roles.trainable_parameters()
    assert any(".policy." in n and not torch.equal(trained[n], after[n]) for n in trained)
    if algo == "ppo":
        assert not torch.equal(trained["value_head.weight"], after["value_head.weight"])
        if value_model == "separate":
            assert any(".value." in n and not torch.equal(trained[n], after[n])
                       for n in trained)
    assert all(torch.equal(p, dict(t.roles.lm.named_parameters())[n]) for n, p in frozen.items())
    assert dataclasses.is_dataclass(roll) and roll.responses.shape[0] == len(roll.raw_scores)


# -- DPO ----------------------------------------------------------------------------------------

def test_t5_dpo_logprobs_are_teacher_forced_decoder_sums(tiny_t5_dir):
    # Each response's summed log-probability given its prompt equals a one-pair
    # teacher-forced forward (prompt -> encoder, response + EOS -> decoder targets).
    from rlhfkit import dpo, ppo_math

    tok = models.load_tokenizer(str(tiny_t5_dir))
    lm = models.load_causal_lm(str(tiny_t5_dir)).eval()
    pairs = dpo.encode(tok, preference_records(3), "Summarize", 24, 12)
    with torch.no_grad():
        got = dpo.response_logprobs(lm, **dpo.pair_layout(pairs, tok.pad_token_id))
        for j, resp in enumerate(pairs.chosen + pairs.rejected):
            enc = torch.tensor([pairs.prompt[j % 3]])
            labels = torch.tensor([resp])
            logits = lm(input_ids=enc, decoder_input_ids=lm._shift_right(labels)).logits
            want = ppo_math.logprobs_from_logits(logits, labels).sum().item()
            assert got[j].item() == pytest.approx(want, abs=1e-4)


def test_t5_dpo_stage_learns_and_loads_for_inference(tmp_path, tiny_t5_dir):
    import math

    from conftest_reward import read_scalars

    from rlhfkit import dpo, infer

    data = write_jsonl(tmp_path / "pref.jsonl", preference_records(24))
    params = PipelineParams.from_dict({
        "preference_dataset": str(data), "prompt_dataset": str(data),
        "large_model_reference": str(tiny_t5_dir), "instruction": "Summarize",
        "tuning_method": "dpo", "reward_model_train_steps": 0,
        "prompt_sequence_length": 24, "target_sequence_length": 12,
        "reinforcement_learning_train_steps": 6, "batch_size": 4, "micro_batch_size": 2,
        "reinforcement_learning_rate_multiplier": 200.0, "policy_lora_dim": 2}, quiet=True)
    out = dpo.run(dpo.DPOConfig(params, str(tmp_path / "run")))
    tags = read_scalars(tmp_path / "run" / "dpo-logs")
    assert tags["loss"][0][1] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert tags["loss"][-1][1] < math.log(2)
    tok, model = infer.load_model(infer.Config(model=out["policy_dir"], eval_dataset="-",
                                               output="-"), torch.device("cpu"))
    assert model.config.is_encoder_decoder


# -- the whole pipeline from the CLI -------------------------------------------------------------

@pytest.mark.slow
def test_t5_run_end_to_end(tmp_path, tiny_t5_dir):
    # `rlhfkit run` on a tiny T5: reward model -> PPO -> bulk inference (base, tuned) ->
    # compare -> the merged model, in the same files as for a causal LM.
    import json
    import os
    import subprocess
    import sys

    from rlhfkit.demo.world import DEMO_INSTRUCTION

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")

    def rlhfkit(*args):
        proc = subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    data = tmp_path / "data"
    rlhfkit("demo", "data", str(data), "--preference-size", "24", "--prompt-size", "16",
            "--eval-size", "6")
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "preference_dataset": str(data / "preference.jsonl"),
        "prompt_dataset": str(data / "prompt.jsonl"), "eval_dataset": str(data / "eval.jsonl"),
        "large_model_reference": str(tiny_t5_dir), "instruction": DEMO_INSTRUCTION,
        "prompt_sequence_length": 96, "target_sequence_length": 8,
        "reward_model_train_steps": 2, "reinforcement_learning_train_steps": 2,
        "batch_size": 4, "ppo_epochs": 1}))
    run = tmp_path / "run"
    proc = rlhfkit("run", str(params), "--output-dir", str(run))
    assert "Traceback" not in proc.stderr
    for stage in ("reward_model", "policy", "infer_base", "infer_tuned"):
        assert (run / stage / "DONE").is_file(), stage
    for name in ("eval_results_untuned.jsonl", "eval_results_tuned.jsonl"):
        lines = [json.loads(x) for x in (run / name).read_text().splitlines()]
        assert len(lines) == 6 and set(lines[0]) == {"inputs", "prediction"}
        assert lines[0]["inputs"]["inputs_pretokenized"].startswith(DEMO_INSTRUCTION)
    assert (run / "comparison.csv").is_file() and (run / "report.html").is_file()
    merged = json.loads((run / "model" / "config.json").read_text())
    assert merged["is_encoder_decoder"]
    assert "mean gold score: base " in proc.stderr


def test_plan_reads_a_t5_shape():
    # flan-t5-small's sizes: 8 encoder + 8 decoder blocks, 6 heads of 64, gated-GELU FF
    # of width 1024; a decoder block has 4 + 4 attention projections and 3 FF ones.
    from transformers import T5Config

    from rlhfkit import plan_shapes

    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                      num_heads=6, feed_forward_proj="gated-gelu")
    shape = plan_shapes.shape_from_config(config, "t5-small")
    assert shape.num_layers == 16 and shape.gated_mlp and shape.intermediate_size == 1024
    assert shape.kv_dim == 6 * 64 and len(shape.block_linears) == 11
    # embeddings (tied to the LM head in transformers 5) 32128 x 512 = 16.45M, encoder
    # blocks 8 x (4 x 512 x 384 + 3 x 512 x 1024) = 18.87M, decoder blocks
    # 8 x (8 x 512 x 384 + 3 x 512 x 1024) = 25.17M: 60.49M (+ norms, position biases)
    assert shape.n_params == pytest.approx(60.49e6, rel=0.001)
