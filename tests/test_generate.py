"""Bulk inference's decoder (rlhfkit.generate): rows leave the batch when they end, and the
greedy tokens equal transformers' `generate` on every tiny architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from rlhfkit.generate import decode, next_tokens
from rlhfkit.models import encode_prompts, load_tokenizer

PROMPTS = ["My roommate keeps eating my food.", "A", "The landlord never fixed the heater "
           "and now winter is here and I do not know what to do", "Help me", "Why?"]


def _hf_greedy(lm, enc, n, eos, pad):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=eos,
                           pad_token_id=pad)
    return lm.generate(**enc, generation_config=cfg)[:, enc["input_ids"].shape[1]:]


def _until_eos(row: list[int], eos: list[int]) -> list[int]:
    cut = next((j for j, t in enumerate(row) if t in eos), None)
    return row if cut is None else row[:cut + 1]


def test_greedy_equals_generate_while_rows_end_at_different_steps(tiny_model_dir):
    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model_dir))
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    enc = encode_prompts(tok, PROMPTS, 32)
    # A random tiny model rarely says its real EOS: call its most frequent greedy token
    # "EOS", so rows end at different steps and leave the batch one by one.
    free = _hf_greedy(lm, enc, 12, [], tok.pad_token_id)
    eos = [int(free[:, 1:].flatten().mode().values)]
    ours = decode(lm, enc["input_ids"], enc["attention_mask"], 12, eos, tok.pad_token_id)
    theirs = _hf_greedy(lm, enc, 12, eos, tok.pad_token_id)
    ends = [len(_until_eos(r, eos)) for r in theirs.tolist()]
    assert len(set(ends)) > 1  # the case under test: rows end at different steps
    for a, b in zip(ours.tolist(), theirs.tolist(), strict=True):
        assert _until_eos(a, eos) == _until_eos(b, eos)
    # After its EOS a row holds padding only, and the width is the longest row's.
    assert ours.shape[1] == max(ends)
    for row, n in zip(ours.tolist(), ends, strict=True):
        assert row[n:] == [tok.pad_token_id] * (ours.shape[1] - n)


def test_no_new_tokens_and_a_batch_that_ends_at_once(tiny_llama_dir):
    tok = load_tokenizer(str(tiny_llama_dir))
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    enc = encode_prompts(tok, PROMPTS[:2], 16)
    assert decode(lm, enc["input_ids"], enc["attention_mask"], 0, [1], 0).shape == (2, 0)
    first = decode(lm, enc["input_ids"], enc["attention_mask"], 1, [], tok.pad_token_id)
    # Every row's first greedy token declared EOS: one step, nothing after it.
    out = decode(lm, enc["input_ids"], enc["attention_mask"], 9, first[:, 0].tolist(),
                 tok.pad_token_id)
    assert out.shape == (2, 1) and out[:, 0].tolist() == first[:, 0].tolist()


def test_next_tokens_greedy_and_sampled():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    assert next_tokens(logits, 0.0).tolist() == [1, 0]
    # T -> 0+ is argmax; at T = 1 a 50,000-sample frequency matches softmax within 0.01.
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([next_tokens(logits[:1].expand(1000, 3), 1.0, g) for _ in range(50)])
    freq = torch.bincount(draws.flatten(), minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_decode_is_reproducible_with_a_generator(tiny_llama_dir, temperature):
    tok = load_tokenizer(str(tiny_llama_dir))
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    enc = encode_prompts(tok, PROMPTS, 16)
    runs = [decode(lm, enc["input_ids"], enc["attention_mask"], 6, [], tok.pad_token_id,
                   temperature, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
