"""The Python half of benchmarks/gpu_check.sh (issue 11 section 4); no downloads.

    python benchmarks/gpu_check.py build  --work W [--shape llama-2-7b|tiny]
    python benchmarks/gpu_check.py stages --work W

`build` writes W/model (a random-init Llama-2-7b-shaped model from
tests/fixtures/configs/llama-2-7b, bf16 on CUDA, and a BPE tokenizer trained offline on
the demo world's text), W/data (long prompts: demo posts joined until every prompt is
longer than prompt_sequence_length, so every row is at the course's 512 + 64 tokens) and
W/params.json (the course's parameters with local data, 5 reward steps, 3 PPO steps,
batch 64, micro_batch_size and gradient_checkpointing "auto").

`stages` runs the reward stage, PPO and bulk inference of 64 prompts in this process and
prints s/step, tokens/s, peak GPU memory (torch.cuda.max_memory_allocated) next to the
plan's live estimate, and MFU against 790 TFLOP/s (H200 bf16 dense). Model FLOPs per token:
forward 2N; a LoRA backward 2N (gradients of the activations only: the base is frozen);
recomputation under checkpointing is not counted (the usual MFU convention).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_FLOPS = 790e12  # H200 SXM, bf16 dense
SHAPES = {"llama-2-7b": REPO / "tests/fixtures/configs/llama-2-7b"}
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)
GIB = 2**30


# -- build --------------------------------------------------------------------------------------

def build_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-style byte-level BPE (BOS prepended; </s> ends; no pad: rlhfkit reuses EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")


def build_model(shape: str, tok, out: Path) -> None:
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    cuda = torch.cuda.is_available()
    if shape == "tiny":
        config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=1024, **TINY)
    else:
        config = AutoConfig.from_pretrained(SHAPES[shape])
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    config.pad_token_id = tok.eos_token_id
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in bf16: no float32 copy of 7B weights
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(old)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def long_prompts(posts: list[str], n: int, min_tokens: int, tok) -> list[str]:
    """n prompts, each demo posts joined until longer than `min_tokens` tokens."""
    out, i = [], 0
    while len(out) < n:
        text = ""
        while len(tok(text)["input_ids"]) <= min_tokens:
            text += posts[i % len(posts)] + "\n"
            i += 1
        out.append(text)
    return out


def build(a) -> None:
    work = Path(a.work)
    demo = work / "demo-data"
    prefs = [json.loads(x) for x in (demo / "preference.jsonl").read_text().splitlines()]
    texts = [r["input_text"] for r in prefs] + [r["candidate_0"] for r in prefs]
    tok = build_tokenizer(texts[:4000], 512 if a.shape == "tiny" else 8000)
    t0 = time.monotonic()
    build_model(a.shape, tok, work / "model")
    print(f"model built and saved in {time.monotonic() - t0:.0f} s", flush=True)
    p_len, t_len, batch = (512, 64, 64) if a.shape != "tiny" else (48, 8, 8)
    posts = [r["input_text"] for r in prefs]
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    prompts = long_prompts(posts, 3 * batch, p_len, tok)
    pref_rows = [{**r, "input_text": p} for r, p in zip(prefs, long_prompts(
        posts[1:], 6 * batch, p_len, tok), strict=False)]
    for name, rows in (("preference", pref_rows),
                       ("prompt", [{"input_text": p} for p in prompts]),
                       ("eval", [{"input_text": p} for p in prompts[:64]])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    course = json.loads((REPO / "examples/course/params.json").read_text())
    course.update(preference_dataset=str(data / "preference.jsonl"),
                  prompt_dataset=str(data / "prompt.jsonl"),
                  eval_dataset=str(data / "eval.jsonl"), large_model_reference=str(work / "model"),
                  output_dir=str(work / "run"), reward_model_train_steps=5,
                  reinforcement_learning_train_steps=3, batch_size=batch,
                  prompt_sequence_length=p_len, target_sequence_length=t_len,
                  micro_batch_size="auto", gradient_checkpointing="auto",
                  checkpoint_every_steps=10**6)
    (work / "params.json").write_text(json.dumps(course, indent=2))


# -- stages -------------------------------------------------------------------------------------

class Timer:
    """Wraps a module-level function; records each call's seconds and a value from it."""

    def __init__(self, module, name: str, measure=None):
        self.module, self.name, self.inner = module, name, getattr(module, name)
        self.seconds: list[float] = []
        self.values: list = []
        self.measure = measure
        setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        import torch

        t0 = time.monotonic()
        out = self.inner(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.monotonic() - t0)
        if self.measure:
            self.values.append(self.measure(args, kwargs, out))
        return out

    def restore(self) -> None:
        setattr(self.module, self.name, self.inner)

    def steady(self) -> float:
        """Median seconds per call after the first (warm-up, probe, allocator growth)."""
        rest = self.seconds[1:] or self.seconds
        return statistics.median(rest)


def _peak_reset() -> None:
    import gc

    import torch

    gc.collect()  # the previous stage's models
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else float("nan")


def stages(a) -> None:
    import torch

    from rlhfkit import infer, plan, policy, reward
    from rlhfkit.params import PipelineParams
    from rlhfkit.reward_data import shared_prefix_length

    work = Path(a.work)
    params = PipelineParams.from_file(work / "params.json", quiet=True)
    the_plan = plan.make_plan(params)
    print(plan.format_plan(the_plan, params), flush=True)
    n = the_plan.model.n_params
    chosen: dict[str, tuple] = {}
    settings = [Timer(plan, "reward_settings", lambda a_, k, out: out),
                Timer(plan, "policy_settings", lambda a_, k, out: out),
                Timer(plan, "probe_micro", lambda a_, k, out: out)]
    rows = []

    def pair_tokens(args, kwargs, out) -> int:  # the pair path: prompt once, two suffixes
        pairs = args[4]
        return sum(len(c) + len(r) - shared_prefix_length(c, r)
                   for c, r in zip(pairs.chosen, pairs.rejected, strict=True))

    run = Path(params.output_dir)
    # 1. reward model
    _peak_reset()
    timer = Timer(reward, "train_step", pair_tokens)
    reward.run(reward.RewardConfig.from_params(params, run))
    timer.restore()
    chosen["reward"] = (*settings[0].values[-1], (settings[2].values[-1:] or [None])[0])
    tokens = statistics.median(timer.values)
    rows.append(_row("reward", timer.steady(), tokens, 4 * n * tokens, _peak(),
                     the_plan.stage("reward"), chosen["reward"]))
    # 2. PPO
    _peak_reset()
    probes = len(settings[2].values)

    def ppo_tokens(args, kwargs, out) -> int:
        roll = out[1]
        return int(roll["attn"].sum())

    timer = Timer(policy, "train_step", ppo_tokens)
    policy.run(policy.PolicyConfig.from_params(params, run))
    timer.restore()
    chosen["policy"] = (*settings[1].values[-1], (settings[2].values[probes:] or [None])[-1])
    tokens = statistics.median(timer.values)
    # rollout: generation + reference, values, reward forwards (2N each); update:
    # ppo_epochs x (policy + value) forward + LoRA backward (4N each)
    flops = tokens * n * (2 + 3 * 2 + params.ppo_epochs * 2 * 4)
    rows.append(_row("policy", timer.steady(), tokens, flops, _peak(), the_plan.stage("policy"),
                     chosen["policy"]))
    # 3. bulk inference of 64 prompts (the base model; batch 16 as the pipeline)
    _peak_reset()
    timer = Timer(infer, "generate", lambda a_, k, out: out)
    infer.run(infer.Config(model=params.large_model_reference, eval_dataset=params.eval_dataset,
                           output=str(work / "eval_results.jsonl"),
                           instruction=params.instruction,
                           prompt_sequence_length=params.prompt_sequence_length,
                           target_sequence_length=params.target_sequence_length))
    timer.restore()
    tok = infer_tokenizer(params.large_model_reference)
    generated = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1
                    for t in timer.values[-1])
    secs = timer.seconds[-1]
    rows.append(_row("inference", secs, generated, 2 * n * generated, _peak(),
                     the_plan.stage("inference"), (16, False, None), per="64_prompts"))
    for s in settings:
        s.restore()
    _table(rows)
    out = Path(os.environ.get("OUT", work))
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=2))
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}")


def infer_tokenizer(ref: str):
    from rlhfkit.models import load_tokenizer

    return load_tokenizer(ref)


def _row(stage, secs, tokens, flops, peak_gib, est, chosen, per="step") -> dict:
    micro, ckpt, probed = chosen  # as planned, and after the CUDA probe step
    live = (est.live - est.runtime) / GIB  # max_memory_allocated holds no CUDA context
    return {"stage": stage, f"s_per_{per}": round(secs, 2),
            "tokens_per_s": round(tokens / secs, 1), "micro_batch": micro,
            "probed_micro_batch": probed, "checkpointing": ckpt,
            "peak_gib": round(peak_gib, 2), "plan_gib": round(live, 2),
            "plan_over_measured": round(live / peak_gib, 2) if peak_gib == peak_gib else None,
            "mfu": round(flops / secs / PEAK_FLOPS, 3)}


def _table(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["build", "stages"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--shape", default="llama-2-7b", choices=["llama-2-7b", "tiny"])
    a = ap.parse_args()
    build(a) if a.what == "build" else stages(a)


if __name__ == "__main__":
    main()
