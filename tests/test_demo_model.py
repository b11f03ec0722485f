"""The demo model: builds offline, saves safetensors, reloads, left-pads, generates."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from rlhfkit.data import format_prompt
from rlhfkit.demo import model as dm
from rlhfkit.demo import world as w


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_model") / "tiny"
    info = dm.run(dm.Config(str(out), preset="tiny", seed=0))
    return out, info


def test_tiny_model_saves_safetensors_and_readme(tiny_dir):
    out, info = tiny_dir
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "demo_model.json"} <= names
    assert json.loads((out / "demo_model.json").read_text()) == info
    assert info["steps"] == dm.PRESETS["tiny"].steps
    assert math.isfinite(info["final_loss"]) and info["parameters"] > 0
    assert f"{info['parameters']:,}" in (out / "README.md").read_text()
    assert not list(out.parent.glob(".tiny.*"))  # no temporary directory left behind


def test_reloads_as_llama_with_left_padding(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out, info = tiny_dir
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert isinstance(model, LlamaForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert model.config.max_position_embeddings == 256
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    enc = tok(["short", "a much longer text than the other one"], padding=True)
    assert enc["input_ids"][0][0] == tok.pad_token_id  # padded on the left
    assert enc["input_ids"][1][0] == tok.bos_token_id  # BOS prepended
    assert enc["attention_mask"][0][0] == 0 and enc["attention_mask"][0][-1] == 1


def test_generates_summaries_from_the_saved_directory(tiny_dir):
    out, _ = tiny_dir
    records = [p.record() for p in w.make_posts(3, random.Random(0), "t")]
    greedy = dm.sample_summaries(out, records, greedy=True, max_new_tokens=8)
    again = dm.sample_summaries(out, records, greedy=True, max_new_tokens=8)
    sampled = dm.sample_summaries(out, records, greedy=False, max_new_tokens=8, seed=1)
    assert len(greedy) == len(sampled) == 3
    assert all(isinstance(s, str) for s in greedy + sampled)
    assert greedy == again
    for rec, s in zip(records, greedy, strict=True):
        assert math.isfinite(w.gold_score(rec, s))


def test_training_example_matches_generation_tokens(tiny_dir):
    """Pretraining sees exactly the tokens generation produces: BOS + prompt tokens, then
    each summary's tokens, then EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir[0])
    prompt, summaries = next(dm.pretraining_posts(0, summaries=2))
    assert prompt.startswith(w.DEMO_INSTRUCTION + "\n\n\n")
    assert prompt == format_prompt(w.DEMO_INSTRUCTION, prompt.split("\n\n\n", 1)[1])
    ex = dm.encode_example(tok, prompt, summaries, max_length=1000)
    prompt_ids = tok(prompt)["input_ids"]
    assert ex.n_prompt == len(prompt_ids) and ex.ids[:ex.n_prompt] == prompt_ids
    assert len(ex.blocks) == 2 and ex.blocks[0][0] == ex.n_prompt
    for (start, end), summary in zip(ex.blocks, summaries, strict=True):
        assert ex.ids[end - 1] == tok.eos_token_id
        assert tok.decode(ex.ids[start:end - 1]) == summary


def _example():
    # prompt [5, 6, 7]; summaries [8, 2] and [9, 4, 2] (2 = EOS)
    return dm.Example(ids=[5, 6, 7, 8, 2, 9, 4, 2], n_prompt=3, blocks=[(3, 5), (5, 8)])


def test_batch_tensors_packs_summaries_after_one_prompt():
    short = dm.Example(ids=[5, 8, 2], n_prompt=1, blocks=[(1, 3)])
    batch = dm.batch_tensors([_example(), short], pad_id=0, prompt_weight=0.1)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2, 9, 4, 2], [5, 8, 2, 0, 0, 0, 0, 0]]
    # Both summaries continue the prompt's positions 0, 1, 2.
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    mask = batch["attention_mask"][0, 0]
    assert mask[5].tolist() == [True] * 3 + [False] * 2 + [True] + [False] * 2  # 9: prompt+self
    assert mask[4].tolist() == [True] * 5 + [False] * 3  # EOS of summary 1: prompt + 8, 2
    assert mask[2].tolist() == [True] * 3 + [False] * 5  # prompt: causal
    pad = batch["attention_mask"][1, 0, 5]
    assert pad.tolist() == [False] * 5 + [True] + [False] * 2  # padding sees itself only
    # Row 0 predictions (position -> target): prompt 0->6, 1->7 (weight 0.1); summary 1:
    # 2->8, 3->2; summary 2: 2->9 (the shared last prompt position), 5->4, 6->2.
    got = [(r, c, t, round(wt, 2)) for r, c, t, wt in zip(
        batch["rows"].tolist(), batch["cols"].tolist(), batch["targets"].tolist(),
        batch["weights"].tolist(), strict=True) if r == 0]
    assert got == [(0, 0, 6, 0.1), (0, 1, 7, 0.1), (0, 2, 8, 1), (0, 3, 2, 1),
                   (0, 2, 9, 1), (0, 5, 4, 1), (0, 6, 2, 1)]


def test_packed_summaries_score_as_if_alone():
    """The block mask and positions make each packed summary's predictions identical to
    those of the prompt + that summary alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)).eval()
    batch = dm.batch_tensors([_example()], pad_id=0)
    packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[0]
    alone_2 = model(input_ids=torch.tensor([[5, 6, 7, 9, 4, 2]])).logits[0]
    alone_1 = model(input_ids=torch.tensor([[5, 6, 7, 8, 2]])).logits[0]
    assert torch.allclose(packed[:5], alone_1, atol=1e-5)
    assert torch.allclose(packed[5:], alone_2[3:], atol=1e-5)


def test_weighted_loss_by_hand():
    # Uniform logits over 4 tokens: every prediction costs ln 4, whatever the weights.
    logits = torch.zeros(1, 3, 4)
    batch = {"rows": torch.tensor([0, 0]), "cols": torch.tensor([0, 1]),
             "targets": torch.tensor([2, 3]), "weights": torch.tensor([0.1, 1.0])}
    assert dm.weighted_lm_loss(logits, batch).item() == pytest.approx(math.log(4))
    # Sure of token 2 at position 0 (weight 0.1), uniform at position 1 (weight 1):
    # (0.1 * ~0 + 1 * ln 4) / 1.1
    logits[0, 0, 2] = 100.0
    assert dm.weighted_lm_loss(logits, batch).item() == pytest.approx(math.log(4) / 1.1)


def test_learning_rate_schedule_by_hand():
    # 100 steps: warmup 5 steps (1/5, 2/5, ... of peak), peak until step 80, then linear
    # decay over the last 20 steps to 10%: step 90 is halfway, 1 - 0.9 * 10/20 = 0.55.
    assert dm.lr_at(0, 100, 1.0) == pytest.approx(0.2)
    assert dm.lr_at(4, 100, 1.0) == pytest.approx(1.0)
    assert dm.lr_at(79, 100, 1.0) == pytest.approx(1.0)
    assert dm.lr_at(90, 100, 1.0) == pytest.approx(0.55)
    assert dm.lr_at(100, 100, 1.0) == pytest.approx(0.1)


def test_pretraining_mixture_leans_mediocre():
    rng = random.Random(0)
    specs = [dm.pretrain_spec(rng) for _ in range(2000)]
    good = sum(s == w.Spec() for s in specs) / len(specs)
    assert good == pytest.approx(dm.PRETRAIN_MIX["good"], abs=0.04)
    assert good < 0.5  # RL has room to improve


def test_pretraining_posts_are_not_the_data_sets_posts():
    data = w.generate(w.Config("unused", preference_size=300, prompt_size=300, eval_size=100))
    data_posts = {r["input_text"] for recs in data.values() for r in recs}
    items = dm.pretraining_posts(0)
    pre = {next(items)[0].split("\n\n\n", 1)[1] for _ in range(300)}
    assert not data_posts & pre


def test_same_bytes_whatever_the_callers_thread_count(tmp_path, tiny_dir):
    # The build pins its own thread count: without it 1 and 2 threads differ after 4 steps.
    out, _ = tiny_dir  # built with the session's 1 thread (conftest)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dm.run(dm.Config(str(tmp_path / "two"), preset="tiny", seed=0))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # the caller's setting is restored
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "two" / name).read_bytes() == (out / name).read_bytes(), name


def test_unknown_preset_is_a_user_error(tmp_path):
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="unknown preset"):
        dm.run(dm.Config(str(tmp_path / "m"), preset="huge"))


def test_presets_sizes():
    torch.manual_seed(0)
    tok = dm.build_tokenizer(256 + 64, seed=0, max_length=256, posts=50)
    sizes = {name: sum(p.numel() for p in dm.build_model(preset, tok).parameters())
             for name, preset in dm.PRESETS.items()}
    # Embeddings here are small (tiny vocabulary); body sizes decide the order.
    assert sizes["tiny"] < sizes["demo"] < sizes["bench-3m"]


@pytest.mark.slow
@pytest.mark.skipif(not dm._has_avx2(), reason="the kernels are pinned to AVX2 on x86-64")
def test_cli_build_is_the_same_bytes_whatever_the_cpu_kernels(tmp_path):
    # Two "machines": ATen's AVX-512 kernels and 1 thread, its scalar kernels and 2. Each
    # differs from the other by itself; `rlhfkit demo model` pins both.
    import os
    import subprocess
    import sys

    outs = []
    for name, env in (("a", {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "1"}),
                      ("b", {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"})):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "model", str(out),
                               "--preset", "tiny", "--steps", "3"], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_t5_arch_builds_an_encoder_decoder_that_learns(tmp_path):
    # `rlhfkit demo model DIR --arch t5`: the same tokenizer, data and schedule; the post
    # is the encoder's input and each summary a decoder sequence.
    from transformers import T5ForConditionalGeneration

    from rlhfkit import models

    out = tmp_path / "t5"
    info = dm.run(dm.Config(str(out), preset="tiny", seed=0, steps=6, arch="t5"))
    assert info["arch"] == "t5" and "encoder-decoder" in (out / "README.md").read_text()
    model = models.load_causal_lm(str(out))
    assert isinstance(model, T5ForConditionalGeneration) and models.is_seq2seq(str(out))
    assert model.config.decoder_start_token_id == model.config.pad_token_id
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    records = [p.record() for p in w.make_posts(2, random.Random(0), "t")]
    assert all(isinstance(s, str) for s in dm.sample_summaries(out, records, max_new_tokens=6))
    # the first steps lower the loss (tiny preset: lr 3e-3)
    torch.manual_seed(0)
    tok = dm.build_tokenizer(320, 0, 256, 50)
    fresh = dm.build_model(dm.PRESETS["tiny"], tok, "t5")
    losses = dm.pretrain(fresh, tok, dm.PRESETS["tiny"], 6, 0)
    assert losses[-1] < losses[0]


def test_unknown_arch_is_a_one_line_error(tmp_path):
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="--arch"):
        dm.run(dm.Config(str(tmp_path / "x"), preset="tiny", arch="bart"))
