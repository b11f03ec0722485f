"""The demo world's foundation model: a byte-level BPE tokenizer and a small Llama,
pre-trained offline on demo posts followed by summaries of mixed quality.

It plays the part Llama-2 plays in the course: a base model that writes plausible but
improvable summaries (the pretraining mixture leans toward mediocre ones: vague, rambling,
over the limit, repetitive, off-topic), so RLHF has room to raise the gold annotator's
score. Pretraining uses posts from their own random stream, disjoint in practice from the
preference / prompt / eval sets of `rlhfkit demo data` (the post space is astronomically
larger than a few thousand draws).

Budget: a ~1M-parameter model must learn the post -> summary mapping in ~2 CPU minutes,
so each post is followed by several summaries packed in one sequence (a block attention
mask makes each see only the post and itself: see Example), and the post's own tokens are
down-weighted in the loss (PROMPT_LOSS_WEIGHT).

`--arch t5` builds an encoder-decoder of the same sizes instead (T5 1.1 / Flan-T5 style:
gated-GELU feed-forward, relative position buckets, pad id = decoder start), the model
for `examples/demo-t5`: the same tokenizer, data and schedule, the post as the encoder's
input and each summary + EOS as a decoder sequence (`seq2seq_loss`: the encoder runs once
per post for all its summaries; there is no prompt loss).

Reading order: presets, pretraining data, tokenizer, packing, model, `run(cfg)`,
`generate` / `sample_summaries`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlhfkit import log
from rlhfkit.data import format_prompt
from rlhfkit.demo import world as w
from rlhfkit.errors import RlhfkitError

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # BPE vocabulary, special tokens included
    steps: int  # optimizer steps of pretraining
    batch_size: int  # posts per step
    learning_rate: float  # peak AdamW learning rate (see lr_at)
    tokenizer_posts: int = 2000  # posts (with a summary each) the BPE vocabulary is learnt on
    check_prompts: int = 64  # fresh prompts scored by the gold annotator after pretraining
    summaries_per_post: int = 4  # summaries packed after each post (see Example)
    max_position_embeddings: int = 256  # tokens; demo sequences are ~80-200 long


PRESETS = {
    # seconds: for tests
    "tiny": Preset(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                   vocab_size=1024, steps=4, batch_size=2, learning_rate=3e-3,
                   tokenizer_posts=200, check_prompts=4, summaries_per_post=2),
    # the demo's foundation model: ~1M parameters, pretraining ~4 minutes on 2 cores.
    # 800 steps, not fewer: after 400 (loss 0.90) greedy summaries of the eval prompts
    # scored -0.75 by the gold annotator and temperature-1 samples ~-3.4, too far apart for
    # PPO to improve the greedy output (gold win rate 0.50-0.59 in every setting tried);
    # after 800 (loss 0.52) 0.08 and -0.60, and 40 PPO steps raise greedy gold by +1.2 to
    # +2.3 in six of seven runs (docs/rl.md, "Results on the demo world").
    "demo": Preset(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352,
                   vocab_size=1536, steps=800, batch_size=8, learning_rate=3e-3),
    # ~3M parameters, for benchmarks
    "bench-3m": Preset(hidden_size=256, num_layers=4, num_heads=8, intermediate_size=688,
                       vocab_size=1536, steps=300, batch_size=8, learning_rate=2e-3),
}
WARMUP_FRACTION = 0.05
DECAY_FRACTION = 0.2
# Loss weight of the prompt's tokens relative to the summary's: the post grammar is easy,
# the post -> summary mapping is what a few-minute budget must buy.
PROMPT_LOSS_WEIGHT = 0.1

# What the base model has read after each post: mostly mediocre summaries.
# Off-topic summaries are rare: the tiny model must still learn that a summary is about
# its post, within the 2-minute budget.
PRETRAIN_MIX = {"good": 0.22, "vague": 0.25, "rambling": 0.22, "copy": 0.12,
                "repetitive": 0.13, "offtopic": 0.06}


@dataclass
class Config:
    """`rlhfkit demo model`."""

    output_dir: str
    preset: str = "demo"
    seed: int = 0
    steps: int | None = None  # None: the preset's
    arch: str = "llama"  # "llama" (causal) or "t5" (encoder-decoder)


ARCHS = ("llama", "t5")


# torch CPU threads of every build, whatever the machine or the caller: the split of a
# matmul's work between threads changes the floating-point summation order, so a build
# with 1 thread and one with 2 differ in the last bits after a few steps (measured:
# tiny preset, 4 steps). Pinned, the bytes depend on the seed alone (on one CPU
# instruction set; see docs). Two threads: the speed of the 2-core machines it runs on.
BUILD_THREADS = 2
# The CPU instruction set the kernels use changes the bits too (measured: the tiny preset
# differs between ATen's AVX-512 and AVX2 kernels, and between MKL's code paths), so
# `rlhfkit demo model` builds in a child process with both pinned to AVX2, which every
# x86-64 CPU since 2013 has: one seed, one set of bytes on any such machine.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def build(cfg: Config) -> int:
    """`rlhfkit demo model`: `run(cfg)` in a child process whose kernels are pinned
    (PINNED_ENV) unless this process already is; returns the exit code. Without AVX2 (an
    ARM machine, say) it runs here, reproducible on that kind of machine only."""
    import os
    import subprocess
    import sys

    if all(os.environ.get(k) == v for k, v in PINNED_ENV.items()) or not _has_avx2():
        run(cfg)
        return 0
    args = [sys.executable, "-m", "rlhfkit", "demo", "model", cfg.output_dir,
            "--preset", cfg.preset, "--seed", str(cfg.seed)]
    if cfg.steps is not None:
        args += ["--steps", str(cfg.steps)]
    if cfg.arch != "llama":
        args += ["--arch", cfg.arch]
    return subprocess.run(args, env={**os.environ, **PINNED_ENV}, check=False).returncode


# -- data --------------------------------------------------------------------------------

def pretrain_spec(rng: random.Random) -> w.Spec:
    kind = rng.choices(list(PRETRAIN_MIX), list(PRETRAIN_MIX.values()))[0]
    if kind == "vague":
        n = 1 if rng.random() < 0.75 else 2
        return w.Spec(vague=frozenset(rng.sample(w.FACTS, n)))
    if kind == "rambling":
        vague = frozenset([rng.choice(w.FACTS)]) if rng.random() < 0.3 else frozenset()
        return w.Spec(vague=vague, filler=rng.randint(1, 3))
    if kind == "repetitive":
        return w.Spec(repeat=rng.randint(1, 2))
    if kind in ("copy", "offtopic"):
        return w.Spec(kind=kind)
    return w.Spec()


def pretraining_posts(seed: int, stream: str = "pretrain", summaries: int = 1
                      ) -> Iterator[tuple[str, list[str]]]:
    """Endless (prompt, [summary, ...]): fresh posts, each with `summaries` summaries
    drawn from PRETRAIN_MIX."""
    rng = w.stream(seed, stream)
    i = 0
    while True:
        post, other = w.make_post(rng, f"pre-{i}"), w.make_post(rng, f"pre-{i}-other")
        i += 1
        yield (format_prompt(w.DEMO_INSTRUCTION, post.input_text),
               [w.render(post, pretrain_spec(rng), rng, other) for _ in range(summaries)])


def build_tokenizer(vocab_size: int, seed: int, max_length: int, posts: int = 2000):
    """A byte-level BPE tokenizer learnt on demo-world text; BOS prepended, pad != eos,
    left padding saved in its config (batched generation needs it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    items = pretraining_posts(seed, "tokenizer")
    texts = [prompt + summaries[0] for _, (prompt, summaries) in zip(range(posts), items,
                                                                     strict=False)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, padding_side="left",
                                   model_max_length=max_length)


@dataclass
class Example:
    """One post and several summaries packed in one sequence: BOS + prompt, then each
    summary + EOS. Every summary sees the prompt and itself only (a block attention mask)
    and continues the prompt's positions, so each is trained exactly as if it were alone
    after the prompt, while the prompt is computed once for all of them."""

    ids: list[int]
    n_prompt: int
    blocks: list[tuple[int, int]]  # (start, end) of each summary + EOS in ids


def encode_example(tokenizer, prompt: str, summaries: list[str], max_length: int) -> Example:
    """Prompt and summaries are tokenized apart, exactly as the pipeline generates (prompt
    tokens, then new tokens); a block is cut to fit `max_length` positions."""
    ids = tokenizer(prompt)["input_ids"][:max_length - 1]
    n_prompt = len(ids)
    blocks = []
    for summary in summaries:
        block = tokenizer(summary, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        block = block[:max_length - n_prompt]
        blocks.append((len(ids), len(ids) + len(block)))
        ids += block
    return Example(ids, n_prompt, blocks)


def batch_tensors(examples: list[Example], pad_id: int, prompt_weight: float = 1.0
                  ) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, a 4-D boolean attention mask (batch, 1, query, key),
    position_ids, and the supervised predictions as flat (row, position, target, weight):
    prompt tokens weigh `prompt_weight`, summary tokens and EOS 1. Each summary's first
    token is predicted from the prompt's last position, which all summaries share."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(examples), 1, 1)  # pads see self
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    supervised: list[tuple[int, int, int, float]] = []  # (row, position, target, weight)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        n = e.n_prompt
        pos[i, :n] = torch.arange(n)
        mask[i, :n, :n] = causal[:n, :n]
        supervised += [(i, t, e.ids[t + 1], prompt_weight) for t in range(n - 1)]
        for start, end in e.blocks:
            pos[i, start:end] = torch.arange(n, n + end - start)
            mask[i, start:end, :n] = True
            mask[i, start:end, start:end] = causal[:end - start, :end - start]
            supervised += [(i, t, e.ids[start + k], 1.0)
                           for k, t in enumerate([n - 1, *range(start, end - 1)])]
    rows, cols, targets, weights = zip(*supervised, strict=True)
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": pos,
            "rows": torch.tensor(rows), "cols": torch.tensor(cols),
            "targets": torch.tensor(targets), "weights": torch.tensor(weights)}


def weighted_lm_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the supervised predictions, weighted, normalised by total weight."""
    ce = torch.nn.functional.cross_entropy(logits[batch["rows"], batch["cols"]],
                                           batch["targets"], reduction="none")
    return (ce * batch["weights"]).sum() / batch["weights"].sum().clamp(min=1e-8)


# -- model -------------------------------------------------------------------------------

def build_model(preset: Preset, tokenizer, arch: str = "llama"):
    if arch == "t5":
        return build_t5(preset, tokenizer)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads, num_key_value_heads=preset.num_heads,
        max_position_embeddings=preset.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def build_t5(preset: Preset, tokenizer):
    """An encoder-decoder of the preset's sizes (num_layers in each stack); no dropout,
    as the causal demo model."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer), d_model=preset.hidden_size,
        d_kv=preset.hidden_size // preset.num_heads, d_ff=preset.intermediate_size,
        num_layers=preset.num_layers, num_decoder_layers=preset.num_layers,
        num_heads=preset.num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)
    return T5ForConditionalGeneration(config)


def seq2seq_loss(model, tokenizer, items: list[tuple[str, list[str]]], max_length: int
                 ) -> torch.Tensor:
    """Cross-entropy of every summary + EOS given its post: the posts run through the
    encoder once, each summary is a decoder sequence under its post's encoder output."""
    from transformers.modeling_outputs import BaseModelOutput

    prompts = [p for p, _ in items]
    k = len(items[0][1])
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                    max_length=max_length)
    targets = [tokenizer(s, add_special_tokens=False)["input_ids"][:max_length - 1]
               + [tokenizer.eos_token_id] for _, summaries in items for s in summaries]
    labels = torch.full((len(targets), max(len(t) for t in targets)), -100, dtype=torch.long)
    for i, t in enumerate(targets):
        labels[i, :len(t)] = torch.tensor(t)
    hidden = model.get_encoder()(**enc).last_hidden_state.repeat_interleave(k, 0)
    return model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                 attention_mask=enc["attention_mask"].repeat_interleave(k, 0),
                 labels=labels).loss


def lr_at(step: int, total: int, peak: float) -> float:
    """Warmup-stable-decay: linear warmup over WARMUP_FRACTION of the steps, the peak rate,
    then a linear decay to 10% of it over the last DECAY_FRACTION. A short budget needs the
    high rate for long: the post -> summary mapping is learnt late, around step 300."""
    warm = max(1, int(WARMUP_FRACTION * total))
    decay_start = total - max(1, int(DECAY_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    if step < decay_start:
        return peak
    return peak * (1.0 - 0.9 * (step - decay_start) / max(1, total - decay_start))


def pretrain(model, tokenizer, preset: Preset, steps: int, seed: int,
             on_step=None) -> list[float]:
    """Next-token prediction on prompt + summaries (packed, see Example), the prompt's
    tokens down-weighted (PROMPT_LOSS_WEIGHT). Returns each step's loss; `on_step(step,
    loss)` is called after every step."""
    items = pretraining_posts(seed, summaries=preset.summaries_per_post)
    opt = torch.optim.AdamW(model.parameters(), lr=preset.learning_rate, weight_decay=0.01,
                            betas=(0.9, 0.95))
    model.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, preset.learning_rate)
        if model.config.is_encoder_decoder:
            loss = seq2seq_loss(model, tokenizer, [next(items) for _ in range(preset.batch_size)],
                                preset.max_position_embeddings)
        else:
            batch = batch_tensors(
                [encode_example(tokenizer, *next(items), preset.max_position_embeddings)
                 for _ in range(preset.batch_size)], tokenizer.pad_token_id, PROMPT_LOSS_WEIGHT)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"]).logits
            loss = weighted_lm_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log.info(f"pretrain step {step + 1}/{steps}: loss {loss.item():.3f}")
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return losses


def run(cfg: Config) -> dict:
    """Build, pre-train and save the model + tokenizer + README.md to cfg.output_dir
    (atomically); return the figures written to the README."""
    from rlhfkit.io import atomic_dir, atomic_write_json, atomic_write_text

    if cfg.preset not in PRESETS:
        raise RlhfkitError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.arch not in ARCHS:
        raise RlhfkitError(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    preset = PRESETS[cfg.preset]
    steps = preset.steps if cfg.steps is None else cfg.steps
    if steps < 0:
        raise RlhfkitError(f"--steps must be >= 0, got {steps}")
    with _reproducible():
        torch.manual_seed(cfg.seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        tokenizer = build_tokenizer(preset.vocab_size, cfg.seed,
                                    preset.max_position_embeddings, preset.tokenizer_posts)
        model = build_model(preset, tokenizer, cfg.arch)
        losses = pretrain(model, tokenizer, preset, steps, cfg.seed)
        train_seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start  # all threads; = wall x threads if idle
        check = [p.record() for p in w.make_posts(
            preset.check_prompts, w.stream(cfg.seed, "model-check"), "check")]
        greedy = generate(model, tokenizer, check, greedy=True)
        sampled = generate(model, tokenizer, check, greedy=False, seed=cfg.seed)
    tail = losses[-20:]
    info = {
        "preset": cfg.preset, "arch": cfg.arch, **asdict(preset), "steps": steps, "seed": cfg.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "train_seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "threads": BUILD_THREADS,
        "gold_greedy": round(_mean(w.gold_score(r, s) for r, s in zip(check, greedy,
                                                                        strict=True)), 3),
        "gold_sampled": round(_mean(w.gold_score(r, s) for r, s in zip(check, sampled,
                                                                         strict=True)), 3),
        "samples": [{"post": r["input_text"], "greedy": s} for r, s in
                    zip(check[:3], greedy[:3], strict=True)],
    }
    with atomic_dir(cfg.output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "demo_model.json", info)
        atomic_write_text(tmp / "README.md", _readme(info))
    log.info(f"demo model ({info['parameters']:,} parameters, final loss "
             f"{info['final_loss']}, {info['train_seconds']} s) written to {cfg.output_dir}")
    return info


@contextlib.contextmanager
def _reproducible():
    """BUILD_THREADS torch threads and deterministic kernels for the block; the caller's
    settings are restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _readme(info: dict) -> str:
    samples = "\n".join(f"- `{s['greedy']}`" for s in info["samples"])
    kind = ("A T5-architecture encoder-decoder" if info.get("arch") == "t5"
            else "A Llama-architecture causal LM")
    return f"""# rlhfkit demo model ({info['preset']})

{kind} built offline by `rlhfkit demo model`, pre-trained on
synthetic demo-world posts followed by summaries of mixed quality. Use this directory as
`large_model_reference` with the data of `rlhfkit demo data` and the instruction
`{w.DEMO_INSTRUCTION}`.

| | |
| --- | --- |
| parameters | {info['parameters']:,} |
| layers x hidden | {info['num_layers']} x {info['hidden_size']} |
| vocabulary | {info['vocab_size']} (byte-level BPE; bos/eos/pad) |
| pretraining | {info['steps']} steps x {info['batch_size']} posts x {info['summaries_per_post']} summaries, seed {info['seed']} |
| final loss | {info['final_loss']} (mean of the last 20 steps; summary tokens weigh 1, prompt tokens {PROMPT_LOSS_WEIGHT}) |
| training time | {info['train_seconds']} s wall, {info['cpu_seconds']} s CPU, {info['threads']} threads |
| gold score, greedy | {info['gold_greedy']} (mean over {info['check_prompts']} fresh prompts) |
| gold score, sampled (T=1) | {info['gold_sampled']} |

A few greedy summaries:

{samples}
"""


# -- generation (a quick check; bulk inference is rlhfkit.infer) -------------------------

@torch.no_grad()
def generate(model, tokenizer, records: list[dict], greedy: bool = True,
             max_new_tokens: int = 48, batch_size: int = 32, seed: int = 0) -> list[str]:
    """Summaries of demo records, greedy or sampled at temperature 1 (no top-k/top-p)."""
    torch.manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(records), batch_size):
        prompts = [format_prompt(w.DEMO_INSTRUCTION, r["input_text"])
                   for r in records[i:i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} \
            if not greedy else {"do_sample": False}
        ids = model.generate(**enc, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
        start = 1 if model.config.is_encoder_decoder else enc["input_ids"].shape[1]
        out += [t.strip() for t in tokenizer.batch_decode(ids[:, start:],
                                                          skip_special_tokens=True)]
    return out


def sample_summaries(model_dir: str | Path, records: list[dict], greedy: bool = True,
                     max_new_tokens: int = 48, seed: int = 0) -> list[str]:
    """Load a saved model directory and summarise `records` (demo-world records)."""
    from transformers import AutoTokenizer

    from rlhfkit.models import load_causal_lm  # causal or encoder-decoder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_causal_lm(str(model_dir)).eval()
    return generate(model, tokenizer, records, greedy, max_new_tokens, seed=seed)
