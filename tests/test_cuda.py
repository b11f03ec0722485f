"""Checks that need a CUDA GPU (marker `cuda`; skipped without one). Run by
benchmarks/gpu_check.sh: bf16 training losses against float32, and greedy generation on
CUDA against the CPU on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest_reward import preference_records

from rlhfkit import models, ppo_math, reward, reward_data

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _bt_loss(model_dir, dtype) -> float:
    tok = models.load_tokenizer(str(model_dir))
    pairs = reward_data.encode_pairs(tok, preference_records(8), "Summarize", 24, 12)
    torch.manual_seed(0)
    model = reward.build_model(str(model_dir), tok, 4, dtype=dtype).cuda()
    with torch.no_grad():  # a head that separates the pairs, so the loss is not just log 2
        model.model.get_base_model().score.weight.normal_(0, 1.0)
    batch = reward_data.pair_batch(pairs, tok.pad_token_id)
    scores = model(**{k: v.cuda() for k, v in batch.items()})
    return reward.bradley_terry_loss(scores[:8], scores[8:]).mean().item()


def test_bf16_reward_loss_matches_float32(tiny_llama_dir):
    # bf16 keeps 8 mantissa bits: a relative error of ~2^-8 per op; over a 2-layer model
    # the mean loss agrees to ~1e-2.
    assert _bt_loss(tiny_llama_dir, torch.bfloat16) == pytest.approx(
        _bt_loss(tiny_llama_dir, torch.float32), rel=3e-2, abs=3e-2)


def test_bf16_policy_logprobs_match_float32(tiny_llama_dir):
    ids = torch.randint(3, 300, (4, 20), generator=torch.Generator().manual_seed(0)).cuda()
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        lm = models.load_causal_lm(str(tiny_llama_dir), dtype=dtype).cuda().eval()
        with torch.no_grad():
            logits = lm(input_ids=ids).logits[:, :-1]
        out[dtype] = ppo_math.logprobs_from_logits(logits, ids[:, 1:])
    assert torch.allclose(out[torch.bfloat16], out[torch.float32], atol=5e-2)


def test_greedy_generation_cuda_equals_cpu(tiny_llama_dir):
    """float32 on both devices: identical greedy tokens. The LM head is sharpened (x20) so
    that no step's top-2 logits are within CUDA-vs-CPU rounding of each other."""
    tok = models.load_tokenizer(str(tiny_llama_dir))
    enc = models.encode_prompts(tok, ["a short post about my dog", "hello"], 32)
    outs = []
    for device in ("cpu", "cuda"):
        lm = models.load_causal_lm(str(tiny_llama_dir)).eval()
        with torch.no_grad():
            lm.get_output_embeddings().weight.mul_(20)
        lm.to(device)
        gen = lm.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=12,
                          do_sample=False, pad_token_id=tok.pad_token_id)
        outs.append(gen.cpu())
    assert torch.equal(outs[0], outs[1])
