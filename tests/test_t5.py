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
