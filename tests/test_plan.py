"""rlhfkit.plan: the memory estimator (hand-checked), `auto` micro-batch and checkpointing,
gradient checkpointing's exactness, micro-batch accumulation, and the CLI / pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest_policy import make_reward_model, write_prompts
from conftest_reward import preference_records, write_params

from rlhfkit import models, plan, plan_fit, policy, reward, reward_data, training
from rlhfkit import ppo_math as pm
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams
from rlhfkit.policy_model import build_roles

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
GIB = plan.GIB

# A hand-made shape: hidden 8, one MHA block of q, k, v, o (8 -> 8) and a gated MLP
# (gate, up 8 -> 16; down 16 -> 8), 2 layers, vocab 10, untied LM head.
# Parameters: embeddings 80 + LM head 80 + 2 x (4 x 64 + 3 x 128 + 2 norms x 8) + final
# norm 8 = 160 + 2 x 656 + 8 = 1480.
HAND = plan.ModelShape(
    name="hand", model_type="llama", vocab_size=10, hidden_size=8, num_layers=2, kv_dim=8,
    intermediate_size=16, gated_mlp=True, n_params=1480, lm_head_params=80,
    block_linears=((8, 8),) * 4 + ((8, 16), (8, 16), (16, 8)))
CPU = plan.Device("cpu", 100 * GIB, "cpu, test")


# -- the estimator, by hand ---------------------------------------------------------------------

def test_lora_and_activation_counts_by_hand():
    # LoRA rank r adds r x (in + out) per linear: 4 x 16 + 3 x 24 = 136 per block;
    # rank 2 over 2 layers: 2 x 2 x 136 = 544.
    assert HAND.lora_params(2) == 544 and HAND.lora_params(0) == 0
    # 7 x 8 + 2 x 8 + 4 x 16 = 136 elements per token and layer.
    assert HAND.act_elements() == 136
    # Without checkpointing: (2 layers x 136 + 2 x 8) x 10 tokens x 4 bytes = 11520.
    assert plan.activation_bytes(HAND, 10, 4, False) == 11520
    # With: (2 layers x 8 inputs + one layer 136 + 2 x 8) x 10 x 4 = 6720.
    assert plan.activation_bytes(HAND, 10, 4, True) == 6720
    # KV cache: 2 (k, v) x 2 layers x 8 = 32 elements per token.
    assert HAND.kv_elements() == 32


def test_reward_stage_by_hand():
    # LoRA rank 2: trainable = 544 + score head 8 = 552; held = trunk 1400 + 552.
    est = plan.reward_memory(HAND, 2, batch=4, micro=2, prompt_len=5, target_len=3,
                             dev=CPU, checkpointing=False)
    assert (est.trainable, est.params) == (552, 1952)
    assert est.weights == 1952 * 4 and est.gradients == 552 * 4 and est.optimizer == 552 * 8
    # tokens per step: 4 pairs x (5 + 2 x 3) = 44; per micro-batch 2 x 11 = 22 tokens:
    # (2 x 136 + 16) x 22 x 4 = 25344 bytes.
    assert est.tokens_per_step == 44 and est.activations == 25344
    assert est.live == 1952 * 4 + 552 * 12 + 25344 + plan.RUNTIME_BYTES["cpu"]
    # On CPU, glibc's retained buffers: 1.5 x activations; none on CUDA.
    assert est.peak - est.live == est.allocator == int(1.5 * 25344)
    gpu = plan.Device("cuda", 100 * GIB, "cuda, test")
    assert plan.reward_memory(HAND, 2, 4, 2, 5, 3, gpu, False).allocator == 0
    # cpu_allocator "release": freed buffers leave the process, the peak is the live sum.
    released = plan.for_params(CPU, PipelineParams(cpu_allocator="release"))
    lean = plan.reward_memory(HAND, 2, 4, 2, 5, 3, released, False)
    assert lean.allocator == 0 and lean.peak == est.live
    assert "cpu_allocator" in plan.advice(est) and "cpu_allocator" not in plan.advice(lean)
    # Checkpointed: the two full sequences, 2 x 2 x 8 = 32 tokens: (16 + 136 + 16) x 32 x 4.
    ck = plan.reward_memory(HAND, 2, 4, 2, 5, 3, CPU, True)
    assert ck.activations == 168 * 32 * 4 == ck.activations_ckpt
    # Full tuning trains the trunk + head: 1400 + 8.
    assert plan.reward_memory(HAND, 0, 4, 2, 5, 3, CPU, False).trainable == 1408


def test_policy_stage_by_hand():
    # LoRA 1, sharing the base with a rank-2 reward adapter: trainable = 2 x 272 + 8 = 552;
    # held = 1480 + 552 + reward adapter 544 + its head 8 = 2584.
    est = plan.policy_memory(HAND, HAND, 1, 2, True, 0.1, batch=4, micro=2, prompt_len=5,
                             target_len=3, dev=CPU, checkpointing=False)
    assert (est.trainable, est.params) == (552, 2584)
    # Logits: 4 copies x 2 rows x (3 + 1) positions x vocab 10 x 4 bytes = 1280;
    # activations of 2 x 8 tokens: 288 x 16 x 4 = 18432 (> the KV cache 2 x 8 x 32 x 4).
    assert est.logits == 1280 and est.activations == 18432 and est.kv_cache == 0
    # Full tuning with a reference and a separate full reward model:
    # policy 1480 + head 8, reference 1480, reward trunk 1400 + head 8 (rank 0).
    full = plan.policy_memory(HAND, HAND, 0, 0, False, 0.1, 4, 2, 5, 3, CPU, False)
    assert full.trainable == 1488 and full.params == 1488 + 1480 + 1408
    # kl_coeff 0 loads no reference.
    assert plan.policy_memory(HAND, HAND, 0, 0, False, 0.0, 4, 2, 5, 3, CPU, False
                              ).params == 1488 + 1408
    # sharding fsdp over 2 processes: policy + head 1488 and reference 1480 are split
    # (2968 -> 1484 held), the reward model's 1408 stays whole; gradients and Adam halve.
    two = plan.policy_memory(HAND, HAND, 0, 0, False, 0.1, 4, 2, 5, 3, CPU, False, shards=2)
    assert two.weights == (1484 + 1408) * 4
    assert (two.gradients, two.optimizer) == (full.gradients // 2, full.optimizer // 2)
    assert plan.shards(PipelineParams(sharding="fsdp"), 4) == 4
    assert plan.shards(PipelineParams(), 4) == 1


def test_rloo_grpo_stage_by_hand():
    # RLOO / GRPO, k = 2, LoRA 1 sharing the base: no value adapter or head, trainable =
    # 272; held = 1480 + 272 + 544 + 8 = 2304. A micro-batch of 4 rows is 2 groups: the
    # update runs 2 prompts of 5 tokens once and 4 responses of 3: 22 tokens (PPO's 4 rows:
    # 32): (2 x 136 + 16) x 22 x 4 = 25344 bytes; logits 4 copies x 4 rows x 4 x 10 x 4.
    est = plan.policy_memory(HAND, HAND, 1, 2, True, 0.1, batch=4, micro=4, prompt_len=5,
                             target_len=3, dev=CPU, checkpointing=False, k=2, value=False)
    assert (est.trainable, est.params) == (272, 2304)
    assert est.activations == 25344 and est.logits == 2560
    # tokens per step: 4 prompts x 5 + 8 responses x 3 = 44
    assert est.tokens_per_step == 44
    # Under FSDP sharding every row runs its prompt: 4 x 8 = 32 tokens.
    full = plan.policy_memory(HAND, HAND, 0, 0, False, 0.1, 4, 4, 5, 3, CPU, False,
                              shards=2, k=2, value=False)
    assert full.activations == 288 * 32 * 4 and full.trainable == 1480
    # make_plan reads k and the algorithm from the params: 16 prompts x 4 = 64 rows.
    params = PipelineParams(batch_size=16, rl_algorithm="rloo", num_generations=4,
                            prompt_sequence_length=5, target_sequence_length=3)
    stage = plan.make_plan(params, HAND, HAND, CPU).stages[1]
    assert stage.stage == "policy" and stage.micro_batch_size == 64 and stage.trainable == 272


def test_inference_by_hand():
    est = plan.inference_memory(HAND, 1, batch=2, prompt_len=5, target_len=3, dev=CPU)
    # KV cache: 2 x 8 tokens x 32 elements x 4 bytes = 2048; weights (1480 + 272) x 4.
    assert est.kv_cache == 2048 and est.weights == 1752 * 4 and est.trainable == 0


def test_halvings_and_choose():
    assert plan.halvings(6) == [6, 3, 2, 1] and plan.halvings(1) == [1]

    # A fake stage: 10 bytes per row, 100 without checkpointing.
    def est(m, c):
        return plan.StageMemory("x", 0, 0, 0, m, c, activations=m * (10 if c else 100))

    assert plan.choose(est, 64, "auto", False, 3200) == (32, False, True)
    assert plan.choose(est, 64, "auto", False, 50) == (1, False, False)
    # auto checkpointing: off while >= 8 rows fit without it ...
    assert plan.choose(est, 64, "auto", "auto", 800) == (8, False, True)
    # ... on when fewer would: 790 bytes fit 64 rows checkpointed (640) but only 7 plain.
    assert plan.choose(est, 64, "auto", "auto", 790) == (64, True, True)
    # A micro-batch the user set is kept; auto checkpointing only if it does not fit.
    assert plan.choose(est, 64, 4, "auto", 800) == (4, False, True)
    assert plan.choose(est, 64, 16, "auto", 800) == (16, True, True)


# -- shapes from real configs -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_shape_counts_match_the_real_model(arch, tiny_model_dirs):
    from peft import get_peft_model

    shape = plan.load_shape(str(tiny_model_dirs[arch]))
    model = models.load_causal_lm(str(tiny_model_dirs[arch]))
    assert shape.n_params == models.count_parameters(model)
    lora = get_peft_model(model, training.lora_config(2, "CAUSAL_LM"))
    assert shape.lora_params(2) == models.count_parameters(lora, trainable_only=True)


def test_fixture_shapes_are_the_published_sizes():
    llama = plan.load_shape(str(FIXTURES / "llama-2-7b"))
    qwen = plan.load_shape(str(FIXTURES / "qwen2.5-0.5b"))
    assert llama.n_params == 6_738_415_616  # Llama-2-7b-hf
    assert qwen.n_params == 494_032_768 and qwen.lm_head_params == 0  # tied
    assert qwen.kv_dim == 128  # 2 KV heads x 64: grouped-query attention


# -- parameters, CLI, pipeline ------------------------------------------------------------------

BASE = {"preference_dataset": "p", "prompt_dataset": "q", "large_model_reference": "m"}


def test_params_accept_auto_and_reject_the_rest():
    p = PipelineParams.from_dict({**BASE, "micro_batch_size": "auto",
                                  "gradient_checkpointing": "auto"})
    assert (p.micro_batch_size, p.gradient_checkpointing) == ("auto", "auto")
    for bad in ({"micro_batch_size": "all"}, {"micro_batch_size": 0},
                {"gradient_checkpointing": "sometimes"}):
        with pytest.raises(RlhfkitError):
            PipelineParams.from_dict({**BASE, **bad})


def _course(tmp_path, **extra) -> Path:
    values = {**json.loads((Path(__file__).parents[1] / "examples/course/params.json")
                           .read_text()), **extra}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(values))
    return path


def test_cli_plan_refuses_then_fits_with_auto(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    args = ["plan", "--model", str(FIXTURES / "llama-2-7b"), "--device", "cuda",
            "--memory-gib", "80"]
    out = CliRunner().invoke(app, [*args, str(_course(tmp_path))])
    # batch 64 x (512 + 64) tokens in one pass: hundreds of GiB of activations.
    assert out.exit_code == 1 and "micro_batch_size" in str(out.exception)
    assert "activations" in out.output and "NO" in out.output
    out = CliRunner().invoke(app, [*args, str(_course(tmp_path, micro_batch_size="auto",
                                                        gradient_checkpointing="auto"))])
    assert out.exit_code == 0, out.output
    assert "(auto)" in out.output and "NO" not in out.output


def test_run_refuses_before_training_unless_forced(tmp_path, tiny_llama_dir, monkeypatch):
    from rlhfkit import pipeline

    params = PipelineParams.from_file(write_params(tmp_path, tiny_llama_dir), quiet=True)
    monkeypatch.setattr(plan, "detect_device",
                        lambda *a, **k: plan.Device("cpu", GIB // 4, "cpu, 0.25 GiB"))
    with pytest.raises(RlhfkitError, match="will not fit"):
        pipeline.run_pipeline(params, tmp_path / "run")
    assert not (tmp_path / "run" / "reward_model").exists()
    forced = plan.check_memory(params, force=True)  # warns, does not raise
    assert forced.problems()


# -- gradient checkpointing is exact ----------------------------------------------------------

def _count_backward_forwards(model) -> list[int]:
    """A counter of forward calls of a module inside the first decoder block (the block's
    own hooks stay outside transformers' checkpoint; its children's run in the replay)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls = [0]
    block = next(m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
    child = next(block.children())
    child.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def _perturb_lora(model) -> None:
    with torch.no_grad():  # LoRA B starts at 0: give A a gradient too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(n)))


@pytest.mark.parametrize("lora_dim", [4, 0])
def test_reward_checkpointing_same_loss_and_gradients(lora_dim, tiny_llama_dir):
    tok = models.load_tokenizer(str(tiny_llama_dir))
    pairs = reward_data.encode_pairs(tok, preference_records(6), "Summarize", 24, 12)
    batch = reward_data.pair_batch(pairs, tok.pad_token_id)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = reward.build_model(str(tiny_llama_dir), tok, lora_dim)
        _perturb_lora(model)
        if ckpt:
            training.enable_gradient_checkpointing(model.model)
        calls = _count_backward_forwards(model)
        scores = model(**batch)
        loss = reward.bradley_terry_loss(scores[:6], scores[6:]).mean()
        calls[0] = 0
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, calls[0]))
    (l0, g0, c0), (l1, g1, c1) = results
    assert c0 == 0 and c1 > 0  # the checkpointed run really recomputed in backward
    assert l1 == pytest.approx(l0, abs=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 2
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("lora_dim", [1, 0])
def test_policy_checkpointing_same_losses_and_gradients(lora_dim, tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["qwen2"]
    rm = make_reward_model(base, tmp_path / "rm")
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        roles = build_roles(str(base), rm, lora_dim, need_reference=True)
        _perturb_lora(roles.lm)
        if ckpt:
            training.enable_gradient_checkpointing(roles.lm)
        calls = _count_backward_forwards(roles.lm)
        ids = torch.randint(3, 300, (3, 14), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[0, :4] = 0  # a left-padded row
        # As ppo_update: each loss back-propagated before the next pass switches adapters
        # (a checkpointed block is replayed with the adapter active at backward time).
        logp = pm.logprobs_from_logits(roles.logits(ids, mask, 5), ids[:, -5:])
        pg = -logp.mean()
        n_forward = calls[0]
        pg.backward()
        vf = (roles.values(ids, mask, 5) - 1).pow(2).mean()
        n_forward += 1
        vf.backward()
        calls[0] -= n_forward
        grads = {n: p.grad.clone() for n, p in roles.trainable_parameters().items()}
        results.append(((pg.item(), vf.item()), grads, calls[0]))
    (l0, g0, c0), (l1, g1, c1) = results
    assert c0 == 0 and c1 > 0
    assert l1 == pytest.approx(l0, abs=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


# -- micro-batches: the same PPO update as one batch ------------------------------------------

def test_ppo_micro_batches_give_the_same_update(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["llama"]
    rm = make_reward_model(base, tmp_path / "rm")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    after = []
    roll = None
    for micro in (None, 1):
        cfg = policy.PolicyConfig(PipelineParams(
            large_model_reference=str(base), prompt_dataset=str(prompts),
            prompt_sequence_length=16, target_sequence_length=6, batch_size=4,
            num_minibatches=2, ppo_epochs=2, micro_batch_size=micro,
            reinforcement_learning_rate_multiplier=20),
            output_dir=str(tmp_path / f"run{micro}"), reward_model_dir=str(rm))
        t = policy.build_trainer(cfg, training.make_accelerator())
        if roll is None:  # one rollout for both: sampling order depends on micro-batching
            query = models.encode_prompts(t.roles.tokenizer, t.local_batch(), 16)
            roll = policy.rollout(t.roles, t.cfg, query, 1, None)
        torch.manual_seed(3)
        kl = pm.kl_per_token(roll.logprobs, roll.ref_logprobs, "k1")
        stats = policy.ppo_step(t, roll, kl, 1)
        after.append((stats, {n: p.detach().clone()
                              for n, p in t.roles.trainable_parameters().items()}))
    (s_all, w_all), (s_one, w_one) = after
    assert s_all["ppo/loss/total"] == pytest.approx(s_one["ppo/loss/total"], abs=1e-6)
    for n in w_all:
        assert torch.allclose(w_all[n], w_one[n], atol=1e-6), n


# -- the stages with auto settings, end to end on a tiny model ----------------------------------

@pytest.mark.slow
def test_reward_stage_with_auto_micro_and_checkpointing(tmp_path, tiny_llama_dir):
    params = PipelineParams.from_file(write_params(
        tmp_path, tiny_llama_dir, reward_model_train_steps=2, micro_batch_size="auto",
        gradient_checkpointing=True), quiet=True)
    cfg = reward.RewardConfig.from_params(params, tmp_path / "run")
    cfg.progress = False
    assert plan_fit.reward_settings(cfg.params, str(tiny_llama_dir), 1) == (8, True)
    out = reward.run(cfg)
    assert (Path(out["reward_model_dir"]) / "DONE").is_file()
