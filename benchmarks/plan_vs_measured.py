"""The memory plan (rlhfkit.plan) against measured peaks: every stage at three model sizes.

For each model -- the demo model, a ~60M and a ~250M random-init Llama shape (built here
from a config, with the demo tokenizer) -- and each stage (reward, PPO, bulk inference;
reward and PPO also with gradient checkpointing at the largest size), one fresh process
runs the real stage function for one step on the demo data and reports its peak RSS
(VmHWM, benchmarks/_bench.py); the parent computes the plan's estimate for the same
settings. On a CUDA machine the children report torch.cuda.max_memory_allocated instead
(plus the plan's CUDA runtime allowance).

    python benchmarks/plan_vs_measured.py --data demo/data --demo-model demo/model \
        [--models demo,60m,250m] [--work /tmp/plan_bench]

Prompts are truncated to --prompt-len tokens (every demo prompt is longer, so every row
is at the length the plan assumes); responses to --target-len.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402

SHAPES = {  # (hidden, layers, heads, MLP width) of the random-init Llama shapes
    "60m": (768, 8, 12, 2048),
    "250m": (1024, 20, 16, 2752),
}
INSTRUCTION = B.INSTRUCTION
MIB = 2**20
# glibc: a fixed mmap threshold returns every large freed buffer to the kernel at once,
# so the resident peak is the peak of live tensors (what the plan's `live` estimates).
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def build_random_llama(name: str, tokenizer_dir: str, out: Path) -> str:
    """A random-init Llama of SHAPES[name] with the demo tokenizer, saved as safetensors."""
    if (out / "config.json").is_file():
        return str(out)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter = SHAPES[name]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=inter, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def subset(src: Path, dst: Path, n: int) -> str:
    lines = src.read_text().splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n")
    return str(dst)


# -- children: one stage each -------------------------------------------------------------------

def child(a) -> None:
    B.child_setup()
    import torch

    cuda = torch.cuda.is_available()
    t0 = time.monotonic()
    from rlhfkit.params import PipelineParams

    params = PipelineParams(
        large_model_reference=a.model, preference_dataset=a.pref, prompt_dataset=a.prompts,
        instruction=INSTRUCTION, prompt_sequence_length=a.prompt_len,
        target_sequence_length=a.target_len, reward_model_train_steps=a.steps,
        reinforcement_learning_train_steps=a.steps, batch_size=a.batch,
        micro_batch_size=a.micro, reward_lora_dim=4, policy_lora_dim=1, ppo_epochs=1,
        num_minibatches=1, gradient_checkpointing=a.ckpt, checkpoint_every_steps=10**6)
    params.validate()
    if a.stage == "reward":
        from rlhfkit import reward

        reward.run(reward.RewardConfig(params, a.run, progress=False))
    elif a.stage == "policy":
        from rlhfkit import policy

        policy.run(policy.PolicyConfig(params, a.run, reward_model_dir=a.reward_dir,
                                       samples_every_steps=10**6))
    else:
        from rlhfkit import infer

        infer.run(infer.Config(model=a.model, eval_dataset=a.prompts,
                               output=str(Path(a.run) / "eval.jsonl"), params=params,
                               batch_size=a.batch))
    out = {"seconds": round(time.monotonic() - t0, 2)}
    if cuda:
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    B.report(out)


# -- the parent: runs, estimates, table ------------------------------------------------------------

def estimate(stage: str, model: str, a, ckpt: bool, cuda: bool):
    from rlhfkit import plan

    shape = plan.load_shape(model)
    dev = plan.Device("cuda" if cuda else "cpu", 2**50, "bench")
    p, t = a.prompt_len, a.target_len
    if stage == "reward":
        est = plan.reward_memory(shape, 4, a.batch, a.batch, p, t, dev, ckpt)
    elif stage == "policy":
        est = plan.policy_memory(shape, shape, 1, 4, True, 0.1, a.batch, a.batch, p, t, dev,
                                 ckpt)
    else:
        est = plan.inference_memory(shape, 0, a.infer_batch, p, t, dev)
    return est


def parent(a) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pref = subset(Path(a.data) / "preference.jsonl", work / "preference.jsonl", 64)
    prompts = subset(Path(a.data) / "prompt.jsonl", work / "prompt.jsonl", 64)
    evals = subset(Path(a.data) / "eval.jsonl", work / "eval.jsonl", a.infer_batch)
    info = B.machine()
    print(f"machine: {json.dumps(info)}", flush=True)
    rows = []
    from rlhfkit import plan

    for name in a.models.split(","):
        model = a.demo_model if name == "demo" else build_random_llama(
            name, a.demo_model, work / f"model-{name}")
        for d in work.glob(f"run-{name}-*"):
            shutil.rmtree(d)
        cases = [("reward", False), ("policy", False), ("inference", False)]
        if name == a.ckpt_model:
            cases[2:2] = [("reward", True), ("policy", True)]
        for stage, ckpt in cases:
            load = os.getloadavg()[0]
            measured = {}
            for mode, env in (("rss", {}), ("live", LIVE_ENV)):  # default glibc, then live
                # Fresh stage directories per mode (a DONE marker would skip the run); PPO
                # reads the reward model trained in the same mode.
                run = work / f"run-{name}-{mode}" / ("ckpt" if ckpt else "plain")
                args = ["--stage", stage, "--model", model, "--run", str(run), "--pref", pref,
                        "--prompts", evals if stage == "inference" else prompts,
                        "--reward-dir", str(work / f"run-{name}-{mode}" / "plain" /
                                            "reward_model"),
                        "--ckpt", str(ckpt), "--prompt-len", str(a.prompt_len),
                        "--target-len", str(a.target_len),
                        "--batch", str(a.infer_batch if stage == "inference" else a.batch),
                        "--steps", "1"]
                os.environ.update(env)
                try:
                    res = B.run_child(__file__, args, work / f"{name}-{stage}-{ckpt}-{mode}.log")
                finally:
                    for k in env:
                        os.environ.pop(k)
                cuda = "cuda_peak_mib" in res
                measured[mode] = (res["cuda_peak_mib"] * 2**20 + plan.RUNTIME_BYTES["cuda"]
                                  if cuda else res["peak_rss_mib"] * 2**20)
                if cuda:
                    break
            est = estimate(stage, model, a, ckpt, cuda)
            live = measured.get("live", measured["rss"])
            rows.append([name, stage + (" +ckpt" if ckpt else ""), f"{est.live / MIB:.0f}",
                         f"{live / MIB:.0f}", f"{est.live / live:.2f}", f"{est.peak / MIB:.0f}",
                         f"{measured['rss'] / MIB:.0f}", f"{est.peak / measured['rss']:.2f}",
                         f"{res['seconds']:.0f}", f"{load:.2f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print(B.markdown_table(["model", "stage", "plan live MiB", "measured live MiB", "ratio",
                            "plan peak MiB", "measured RSS MiB", "ratio", "stage s",
                            "load avg"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage")
    ap.add_argument("--model")
    ap.add_argument("--run")
    ap.add_argument("--pref")
    ap.add_argument("--prompts")
    ap.add_argument("--reward-dir")
    ap.add_argument("--ckpt", type=lambda s: s == "True", default=False)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=None)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--data", default="demo/data")
    ap.add_argument("--demo-model", default="demo/model")
    ap.add_argument("--models", default="demo,60m,250m")
    ap.add_argument("--ckpt-model", default="250m", help="the model also run checkpointed")
    ap.add_argument("--work", default="/tmp/plan_bench")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--target-len", type=int, default=16)
    ap.add_argument("--infer-batch", type=int, default=16)
    a = ap.parse_args()
    child(a) if a.child else parent(a)


if __name__ == "__main__":
    main()
