"""The reward-model stage: loss maths, token layout, scoring at the last real token on every
architecture, data order, training outputs and RewardScorer round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest_reward import (
    final_weights,
    preference_records,
    read_scalars,
    write_jsonl,
    write_params,
)

from rlhfkit import models, reward, reward_data
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.params import PipelineParams
from rlhfkit.reward_model import last_token_index

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


# -- maths -------------------------------------------------------------------------------------

def test_bradley_terry_loss_by_hand():
    r_chosen = torch.tensor([2.0, 0.0, -1.0])
    r_rejected = torch.tensor([0.0, 0.0, 1.0])
    # margins 2, 0, -2: -log sigmoid(m) = log(1 + e^-m)
    #   log(1 + e^-2) = 0.126928;  log 2 = 0.693147;  log(1 + e^2) = 2 + 0.126928 = 2.126928
    expected = torch.tensor([0.126928, 0.693147, 2.126928])
    assert torch.allclose(reward.bradley_terry_loss(r_chosen, r_rejected), expected, atol=1e-6)
    # a tie is not a win: a constant model must not look accurate
    assert reward.pair_accuracy(r_chosen, r_rejected).tolist() == [1.0, 0.0, 0.0]


def test_expected_agreement_by_hand():
    # The label agrees with the model's pick with probability q if the model prefers the
    # chosen candidate, 1 - q if it prefers the rejected one; a tie counts as wrong.
    q = torch.tensor([0.8, 0.3, 0.6])
    got = reward.expected_agreement(torch.tensor([1.0, -1.0, 0.5]),
                                    torch.tensor([0.0, 0.0, 0.5]), q)
    assert torch.allclose(got, torch.tensor([0.8, 0.7, 0.0]))


def test_expected_accuracy_of_the_noiseless_judge_is_the_noise_ceiling():
    # Ranking every demo pair like the noiseless gold preference picks the likelier label
    # of each pair, so its expected accuracy IS the noise ceiling (minus half a point per
    # gold tie, which it cannot get right); ranking them the other way gets the rest.
    from rlhfkit.demo import world as w

    records = w.generate(w.Config("-", seed=3, preference_size=0, prompt_size=0,
                                  eval_size=60))["eval"]
    gold = torch.tensor([[w.gold_score(r, r[f"candidate_{r['choice']}"]),
                          w.gold_score(r, r[f"candidate_{1 - r['choice']}"])] for r in records])
    q = torch.tensor([w.chosen_probability(r) for r in records], dtype=torch.float64)
    ceiling = w.noise_ceiling([w.label_probability(g0, g1) for g0, g1 in gold.tolist()])
    ties = 0.5 * (gold[:, 0] == gold[:, 1]).double().mean().item()
    mean = reward.expected_agreement(gold[:, 0], gold[:, 1], q).mean().item()
    assert mean == pytest.approx(ceiling - ties)
    reverse = reward.expected_agreement(gold[:, 1], gold[:, 0], q).mean().item()
    assert reverse == pytest.approx(1 - ceiling - ties)


def test_last_token_index_any_padding_side():
    mask = torch.tensor([[0, 0, 1, 1, 1],    # left-padded
                         [1, 1, 1, 0, 0],    # right-padded
                         [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [4, 2, 4]


# -- token layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_encode_for_scoring_layout(tiny_model_dirs, arch):
    tok = models.load_tokenizer(str(tiny_model_dirs[arch]))
    prompt = "my dog chewed the couch " * 10 + "[summary]: "
    response = "a short kind summary " * 5
    seq, = reward_data.encode_for_scoring(tok, [prompt], [response], 10, 5)

    full = tok(prompt)["input_ids"]
    bos = tok.bos_token_id
    if bos is not None and full[0] == bos:  # Llama: BOS survives left truncation
        want_prompt = [bos] + full[-9:]
    else:
        want_prompt = full[-10:]
    want_response = tok(response, add_special_tokens=False)["input_ids"][:5] + [tok.eos_token_id]
    assert seq == want_prompt + want_response

    # Token ids (PPO): a response already ending with EOS gets no second one.
    again, = reward_data.encode_for_scoring(tok, [want_prompt], [want_response], 10, 5)
    assert again == seq


# -- scores read at the last real token, whatever the padding ------------------------------------

def test_scores_do_not_depend_on_padding(tiny_model_dir):
    torch.manual_seed(0)
    tok = models.load_tokenizer(str(tiny_model_dir))
    model = reward.build_model(str(tiny_model_dir), tok, lora_dim=4)
    with torch.no_grad():  # a non-trivial adapter (LoRA B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    seqs = reward_data.encode_for_scoring(
        tok, ["a post", "a much longer post about my dog and the couch", "hi"],
        ["short", "a longer answer with more words", "ok then"], 32, 16)
    pad = tok.pad_token_id
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                           for s in seqs])
        left = models.left_pad(seqs, pad)
        batched_left = model(left["input_ids"], left["attention_mask"])
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        batched_right = model(ids, mask)
    assert alone.std() > 0  # the three inputs really score differently
    assert torch.allclose(batched_left, alone, atol=1e-5)
    assert torch.allclose(batched_right, alone, atol=1e-5)


def test_pair_batch_layout_by_hand():
    # Pair 0 shares [1, 2, 3]; pair 1 shares [4] and then differs; pair 2's chosen is a
    # prefix of its rejected: each side keeps at least its last token.
    pairs = reward_data.Pairs(chosen=[[1, 2, 3, 7], [4, 5], [6, 8]],
                              rejected=[[1, 2, 3, 9, 9], [4, 6, 6], [6, 8, 8]])
    b = reward_data.pair_batch(pairs, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 6]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert b["suffix_ids"].tolist() == [[7, 0], [5, 0], [8, 0], [9, 9], [6, 6], [8, 8]]
    assert b["suffix_mask"].tolist() == [[1, 0], [1, 0], [1, 0], [1, 1], [1, 1], [1, 1]]
    # Nothing shared: no prefix batch (the caller scores the full sequences).
    assert reward_data.pair_batch(reward_data.Pairs([[1, 2]], [[3, 2]]), 0) is None


def test_shared_prefix_scores_and_gradients_equal_full_sequences(tiny_model_dir):
    # Scoring the prompt once for both candidates (pair_scores) must give the scores and
    # the gradient of scoring the two full sequences, on every architecture.
    torch.manual_seed(0)
    tok = models.load_tokenizer(str(tiny_model_dir))
    model = reward.build_model(str(tiny_model_dir), tok, lora_dim=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    records = [{"input_text": t, "candidate_0": a, "candidate_1": b, "choice": c}
               for t, a, b, c in [("a post about my dog", "the dog", "my dog chewed it", 0),
                                  ("hi", "ok then", "okay", 1),
                                  ("a much longer post about rent and the landlord", "rent",
                                   "rent is due and the landlord waits", 1)]]
    pairs = reward_data.encode_pairs(tok, records, "Summarize.", 32, 16)
    grads = []
    for layout in ("full", "shared"):
        model.zero_grad()
        if layout == "full":
            b = models.left_pad(pairs.chosen + pairs.rejected, tok.pad_token_id)
        else:
            b = reward_data.pair_batch(pairs, tok.pad_token_id)
        scores = model(**b)
        reward.bradley_terry_loss(scores[:3], scores[3:]).mean().backward()
        grads.append((scores.detach(), [p.grad.clone() for p in model.parameters()
                                        if p.grad is not None]))
    (full, g_full), (shared, g_shared) = grads
    assert full.std() > 0 and len(g_full) == len(g_shared) > 0
    assert torch.allclose(shared, full, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_full, g_shared, strict=True))


# -- data order and split ----------------------------------------------------------------------

def test_every_epoch_visits_every_pair_once_and_ranks_split_the_batch():
    n, batch = 10, 4
    stream = [i for step in range(5) for i in reward_data.global_batch(step, batch, n, seed=3)]
    assert sorted(stream[:10]) == list(range(10))  # epoch 0: a permutation
    assert sorted(stream[10:20]) == list(range(10))  # epoch 1: another one
    assert stream[:10] != stream[10:20]
    assert reward_data.data_position(3, batch, n) == (1, 2)  # 12 pairs read -> epoch 1, idx 2
    assert reward_data.global_batch(3, batch, n, 3) == stream[12:16]  # resumable by step
    assert reward_data.global_batch(3, batch, n, 4) != stream[12:16]  # the seed matters
    g = reward_data.global_batch(0, 8, 100, 0)
    parts = [reward_data.rank_slice(g, r, 2) for r in range(2)]
    assert parts[0] + parts[1] == g and len(parts[0]) == 4


def test_split_holdout():
    train, held = reward_data.split_holdout(50, 0.1, seed=0)
    assert len(held) == 5 and len(train) == 45 and not set(train) & set(held)
    assert reward_data.split_holdout(50, 0.1, seed=0) == (train, held)
    assert reward_data.split_holdout(3, 0.1, seed=0)[1].__len__() == 1  # at least one
    with pytest.raises(RlhfkitError, match="at least 2"):
        reward_data.split_holdout(1, 0.1, seed=0)


def test_config_from_params(tmp_path):
    params = PipelineParams.from_dict({"preference_dataset": "p.jsonl", "prompt_dataset": "q",
                                       "large_model_reference": "llama-2-13b", "seed": 7,
                                       "reward_model_learning_rate_multiplier": 2.0})
    cfg = reward.RewardConfig.from_params(params, tmp_path)
    assert cfg.output_dir == str(tmp_path) and cfg.params.seed == 7
    assert cfg.params.reward_lora_dim == 4
    assert cfg.learning_rate == pytest.approx(2 * reward.BASE_LR_LORA)
    cfg.params.reward_lora_dim = 0
    assert cfg.learning_rate == pytest.approx(2 * reward.BASE_LR_FULL)


# -- one optimizer step: micro-batches accumulate to the same gradient ---------------------------

def test_micro_batches_give_the_same_step(tiny_llama_dir):
    from rlhfkit import training

    tok = models.load_tokenizer(str(tiny_llama_dir))
    pairs = reward_data.encode_pairs(tok, preference_records(8), "Summarize", 24, 12)
    after = []
    for micro in (8, 3):
        torch.manual_seed(0)
        model = reward.build_model(str(tiny_llama_dir), tok, lora_dim=4)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        sched = training.warmup_decay_schedule(opt, 10)
        stats = reward.train_step(model, opt, sched, training.make_accelerator(), pairs,
                                  micro, tok.pad_token_id)
        after.append((stats, {k: v.clone() for k, v in model.state_dict().items()}))
    (s8, w8), (s3, w3) = after
    assert s8["rank_loss"] == pytest.approx(math.log(2), abs=0.05)  # LoRA B = 0 at start
    assert s8["rank_loss"] == pytest.approx(s3["rank_loss"], abs=1e-6)
    assert s8["grad_norm"] == pytest.approx(s3["grad_norm"], rel=1e-5)
    for name in w8:
        assert torch.allclose(w8[name], w3[name], atol=1e-6), name


# -- the whole stage, in process ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dirs):
    """The stage run once on tiny Llama (LoRA, held-out split, micro-batches of 3)."""
    tmp = tmp_path_factory.mktemp("reward_llama")
    params = PipelineParams.from_file(write_params(tmp, tiny_model_dirs["llama"],
                                                   micro_batch_size=3), quiet=True)
    cfg = reward.RewardConfig.from_params(params, tmp / "run")
    cfg.progress = False
    return cfg, reward.run(cfg)


def test_training_learns_and_writes_every_output(trained):
    cfg, result = trained
    out = Path(result["reward_model_dir"])
    assert result["eval_source"] == "holdout" and not result["skipped"]
    assert result["eval_accuracy"] >= 0.8  # GOOD vs BAD candidates are easy to tell apart
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "rlhfkit.json", "DONE",
            "tokenizer.json"} <= names
    assert not any(n.startswith("checkpoint-") for n in names)  # removed once DONE
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["kind"] == "reward_model" and meta["lora_dim"] == 4 and meta["append_eos"]
    assert meta["eval_pairs"] == 5 and meta["train_pairs"] == 43 and meta["steps"] == 8
    assert (out / "DONE").read_text().strip() == meta["config_hash"]
    tb = read_scalars(Path(result["logs_dir"]))
    assert [s for s, _ in tb["rank_loss"]] == list(range(1, 9))
    assert tb["rank_loss"][-1][1] < tb["rank_loss"][0][1]
    every = math.ceil(8 / reward.EVALS_PER_RUN)
    assert [s for s, _ in tb["eval/accuracy"]] == list(range(every, 9, every))
    documented = DOCS.read_text()
    for tag in tb:
        if not tag.startswith("hparam/"):
            assert f"`{tag}`" in documented, f"{tag} is not documented in docs/metrics.md"


def test_rerun_skips_and_changed_parameter_reruns(trained, tmp_path):
    cfg, result = trained
    assert reward.run(cfg)["skipped"]
    from dataclasses import replace

    changed = replace(cfg, params=replace(cfg.params, reward_model_train_steps=1),
                      output_dir=str(tmp_path))
    assert not reward.run(changed)["skipped"]


def test_scorer_reproduces_the_held_out_metrics(trained):
    """Round trip: RewardScorer.load on the saved adapter scores the held-out pairs as the
    training process did."""
    cfg, result = trained
    records = preference_records(48)
    _, held = reward_data.split_holdout(48, cfg.params.reward_holdout_fraction,
                                          cfg.params.seed)
    _check_roundtrip(result, [records[i] for i in held])


def _check_roundtrip(result, records):
    scorer = reward.RewardScorer.load(result["reward_model_dir"], batch_size=3)
    prompts = [scorer.prompt(r) for r in records]
    chosen = scorer.score(prompts, [r[f"candidate_{r['choice']}"] for r in records])
    rejected = scorer.score(prompts, [r[f"candidate_{1 - r['choice']}"] for r in records])
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    assert reward.pair_accuracy(c, r).mean().item() == pytest.approx(result["eval_accuracy"])
    assert reward.bradley_terry_loss(c, r).mean().item() == pytest.approx(
        result["eval_rank_loss"], abs=1e-5)


@pytest.mark.parametrize("arch,lora_dim", [("gpt2", 0), ("gpt_neox", 4), ("qwen2", 0)])
def test_other_architectures_train_and_round_trip(tiny_model_dirs, tmp_path, arch, lora_dim):
    """Full tuning and LoRA, with an eval dataset that carries preference pairs."""
    evals = preference_records(6, seed=1)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", evals)
    params = PipelineParams.from_file(write_params(
        tmp_path, tiny_model_dirs[arch], n_pairs=16, reward_model_train_steps=3,
        reward_lora_dim=lora_dim, eval_dataset=str(eval_file)), quiet=True)
    cfg = reward.RewardConfig.from_params(params, tmp_path / "run")
    cfg.progress = False
    result = reward.run(cfg)
    assert result["eval_source"] == "eval_dataset"
    weights = final_weights(Path(result["reward_model_dir"]))
    assert ("adapter_model.safetensors" if lora_dim else "model.safetensors") in {
        p.name for p in Path(result["reward_model_dir"]).iterdir()}
    assert any("score" in k for k in weights)  # the trained head is saved either way
    _check_roundtrip(result, evals)


# -- rlhfkit score ------------------------------------------------------------------------------

def test_score_cli_formats_and_errors(trained, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    _, result = trained
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"inputs": {"inputs_pretokenized": "Summarize\n\n\npost 1 [summary]: ",
                    "targets_pretokenized": ""}, "prediction": "a short kind summary"},
        {"input_text": "post 1 [summary]: ", "completion": "a short kind summary"},
        {"input_text": "post 1", "candidate_0": "x y", "candidate_1": "z", "choice": 1}])
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, ["score", "--reward-model", result["reward_model_dir"],
                              str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert isinstance(rows[0]["reward"], float) and isinstance(rows[2]["reward_1"], float)
    # the bulk-inference prompt already holds the instruction: same input, same score
    assert rows[0]["reward"] == pytest.approx(rows[1]["reward"], abs=1e-5)

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "x"},
                                               {"input_text": "y", "response": 3}])
    with pytest.raises(DataError) as err:
        reward.score_records(reward.RewardScorer.load(result["reward_model_dir"]),
                             [(f"{bad}:{i + 1}", json.loads(line))
                              for i, line in enumerate(bad.read_text().splitlines())])
    assert f"{bad}:1: nothing to score" in str(err.value)
    assert f"{bad}:2: response must be a string" in str(err.value)
