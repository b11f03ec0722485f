"""RL speed and memory: rlhfkit's policy stage vs TRL 1.12's trainer of the same method:
PPO vs trl.experimental.ppo.PPOTrainer, RLOO vs trl.RLOOTrainer, GRPO vs trl.GRPOTrainer.

Same policy (the demo world's ~1M-parameter Llama, or the ~3M bench-3m variant), same
reward model (rlhfkit's reward stage, LoRA rank 4; TRL gets it merged into a plain
*ForSequenceClassification checkpoint, and its PPO value model starts from it too, as
TRL's examples do), same prompts (demo world), prompts per step, responses per prompt
(RLOO / GRPO: `--generations`), response length, passes over each batch (PPO epochs =
TRL's num_iterations for RLOO / GRPO), minibatches, KL coefficient (a reference is used
on both sides), clip range 0.2, temperature 1, stop at EOS; CPU, float32, one thread.
Tuning: LoRA rank 4 on every linear layer of the policy (both sides; TRL wraps the policy
with `peft_config` and uses the adapter-disabled policy as the reference), or full.
rlhfkit's PPO with LoRA runs twice: value_model "separate" (a value adapter) and "shared"
(the value head on the policy adapter's trunk: one pass for logits and values); full
tuning always shares the trunk. GRPO: loss_type "dapo" (TRL's default) on both sides.
Each measurement is a fresh subprocess; the sides alternate every round.

Models: `demo`, `bench-3m`, and `250m`, a random-init Llama of 20 x 1024 (the memory shape
of issue 11; benchmarks/plan_vs_measured.py builds it). `--release` adds every side again
with freed buffers returned to the OS (rlhfkit's `cpu_allocator: release`; TRL through
the same `training.return_freed_memory` call at its start), so the allocator's share of
each ratio is visible.

    .venv/bin/python benchmarks/ppo_vs_trl.py --data /work/main/demo/data \
        --demo-model /work/main/demo/model --models demo --rounds 2

episodes/s = prompts x responses per prompt x steps / training-loop seconds (rlhfkit:
start of the first RL step to the end of the last; TRL: on_train_begin to on_train_end;
both include sampling, scoring, the update passes and logging). wall = the whole child
process from outside. Peak RSS = the child's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402  (sets OMP_NUM_THREADS etc. before torch is imported)

LORA_RANK = 4
KL_COEF = 0.05  # TRL PPOConfig's default kl_coef; rlhfkit kl_coeff set to match
LR = {"lora": 5e-5, "full": 3e-6}  # rlhfkit's base rates; TRL given the same


def child_rlhfkit(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from rlhfkit import policy
    from rlhfkit.params import PipelineParams


    marks: list[float] = []
    inner = policy.train_step

    def timed(*args, **kw):  # train_loop calls the module-level name: time each PPO step
        t0 = time.monotonic()
        out = inner(*args, **kw)
        marks.extend([t0, time.monotonic()])
        return out

    policy.train_step = timed
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as out:
        method, _, layout = a.method.partition("-")  # ppo-separate, ppo-shared, rloo, grpo
        params = PipelineParams(
            large_model_reference=a.model, prompt_dataset=str(Path(a.data) / "prompt.jsonl"),
            preference_dataset=str(Path(a.data) / "preference.jsonl"), instruction=B.INSTRUCTION,
            prompt_sequence_length=a.prompt_len, target_sequence_length=a.response_len,
            reinforcement_learning_train_steps=a.steps, batch_size=a.batch_size,
            policy_lora_dim=LORA_RANK if a.tuning == "lora" else 0, kl_coeff=KL_COEF,
            ppo_epochs=a.ppo_epochs, num_minibatches=a.minibatches, seed=0,
            checkpoint_every_steps=10**9, rl_algorithm=method,
            num_generations=_generations(a), value_model=layout or "separate",
            loss_type="dapo", cpu_allocator=a.malloc)
        params.validate()
        policy.run(policy.PolicyConfig(params, out, reward_model_dir=a.reward_dir,
                                       samples_every_steps=10**9))
    loop = marks[-1] - marks[0]
    return _result(a, loop, t_start)


def _generations(a) -> int:
    return 1 if a.method.startswith("ppo") else a.generations


def _result(a, loop: float, t_start: float) -> dict:
    episodes = a.batch_size * _generations(a) * a.steps
    return {"loop_s": round(loop, 3), "episodes_per_s": round(episodes / loop, 3),
            "inner_wall_s": round(time.monotonic() - t_start, 2)}


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM", bias="none")


class _Clock:
    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Cb(TrainerCallback):
            def on_train_begin(self, *args, **kw):
                clock.t0 = time.monotonic()

            def on_train_end(self, *args, **kw):
                clock.t1 = time.monotonic()

        self.callback = Cb()


def _prompts(a, tok) -> list[str]:
    from rlhfkit.data import load_dataset, prompt_text

    recs = load_dataset(str(Path(a.data) / "prompt.jsonl"), "prompt")
    return [prompt_text(r, B.INSTRUCTION, tok) for r in recs]


def _trl_malloc(a) -> None:
    if a.malloc == "release":  # rlhfkit's cpu_allocator "release" for TRL too
        from rlhfkit.training import return_freed_memory

        return_freed_memory()


def child_trl_ppo(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    _trl_malloc(a)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model, padding_side="left")
    ids = tok(_prompts(a, tok))["input_ids"]
    # rlhfkit.models.encode_prompts' left truncation (keeps BOS and the end of the post)
    ids = [s if len(s) <= a.prompt_len else s[:1] + s[-(a.prompt_len - 1):] for s in ids]
    data = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(a.model)
    ref = None if a.tuning == "lora" else AutoModelForCausalLM.from_pretrained(a.model)
    reward = AutoModelForSequenceClassification.from_pretrained(a.trl_reward_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(a.trl_reward_dir, num_labels=1)
    peft_config = _lora() if a.tuning == "lora" else None
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="bench_trl_ppo_") as out:
        args = PPOConfig(
            output_dir=out, per_device_train_batch_size=a.batch_size,
            gradient_accumulation_steps=1, num_mini_batches=a.minibatches,
            num_ppo_epochs=a.ppo_epochs, total_episodes=a.batch_size * a.steps,
            local_rollout_forward_batch_size=a.batch_size, response_length=a.response_len,
            stop_token="eos", temperature=1.0, kl_coef=KL_COEF, learning_rate=LR[a.tuning],
            num_sample_generations=0, use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, report_to="none", save_strategy="no",
            logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                             reward_model=reward, train_dataset=data, value_model=value,
                             callbacks=[clock.callback], peft_config=peft_config)
        trainer.train()
    return _result(a, clock.t1 - clock.t0, t_start)


def child_trl_grouped(a) -> dict:
    """TRL's RLOOTrainer or GRPOTrainer at rlhfkit's settings: `batch_size` prompts x
    `generations` completions per generation round (per_device_train_batch_size = their
    product, steps_per_generation 1), `ppo_epochs` optimizer steps over each round
    (num_iterations), the same KL coefficient (beta > 0: a reference is used)."""
    t_start = time.monotonic()
    B.child_setup()
    _trl_malloc(a)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model, padding_side="left")
    data = Dataset.from_dict({"prompt": _prompts(a, tok)})
    reward = AutoModelForSequenceClassification.from_pretrained(a.trl_reward_dir, num_labels=1)
    common = dict(
        per_device_train_batch_size=a.batch_size * a.generations,
        num_generations=a.generations, steps_per_generation=1, num_iterations=a.ppo_epochs,
        max_steps=a.steps * a.ppo_epochs, max_completion_length=a.response_len,
        temperature=1.0, beta=KL_COEF, epsilon=0.2, learning_rate=LR[a.tuning],
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, log_completions=False)
    if a.method == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
        common["loss_type"] = "dapo"
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix=f"bench_trl_{a.method}_") as out:
        trainer = Trainer(model=a.model, reward_funcs=reward, args=Config(output_dir=out, **common),
                          train_dataset=data, processing_class=tok, callbacks=[clock.callback],
                          peft_config=_lora() if a.tuning == "lora" else None)
        trainer.train()
    return _result(a, clock.t1 - clock.t0, t_start)


def prepare_reward(a, preset: str, model: str, work: Path) -> tuple[str, str]:
    """(rlhfkit reward_model dir, merged plain checkpoint for TRL), trained once with a few
    steps of rlhfkit's reward stage through its CLI (reward quality does not matter for
    speed)."""
    import subprocess

    run, merged = work / preset / "run", work / preset / "reward_merged"
    if not (merged / "config.json").is_file():
        params = work / preset / "reward_params.json"
        params.parent.mkdir(parents=True, exist_ok=True)
        params.write_text(json.dumps({
            "preference_dataset": str(Path(a.data) / "preference.jsonl"),
            "prompt_dataset": str(Path(a.data) / "prompt.jsonl"),
            "large_model_reference": model, "instruction": B.INSTRUCTION,
            "prompt_sequence_length": a.prompt_len, "target_sequence_length": 64,
            "reward_model_train_steps": a.reward_steps, "batch_size": 16,
            "reward_lora_dim": 4, "reward_model_learning_rate_multiplier": 10}))
        subprocess.run([sys.executable, "-m", "rlhfkit", "train-reward", str(params),
                        "--output-dir", str(run), "--no-progress"], check=True)
        code = f"""
from rlhfkit.reward_model import load_reward_model
rm, tok, meta = load_reward_model({str(run / 'reward_model')!r})
hf = rm.model.merge_and_unload()
hf.save_pretrained({str(merged)!r}); tok.save_pretrained({str(merged)!r})
"""
        subprocess.run([sys.executable, "-c", code], check=True)
    return str(run / "reward_model"), str(merged)


# (method, tuning) -> rlhfkit's sides; TRL's side is "trl"
RLHFKIT_SIDES = {("ppo", "lora"): ["ppo-separate", "ppo-shared"], ("ppo", "full"): ["ppo-shared"]}
TRL_NAMES = {"ppo": "TRL PPOTrainer", "rloo": "TRL RLOOTrainer", "grpo": "TRL GRPOTrainer"}


def side_name(side: str, method: str) -> str:
    side, _, malloc = side.partition("@")
    if malloc:
        return side_name(side, method) + " (freed memory released)"
    if side == "trl":
        return TRL_NAMES[method]
    return {"ppo-separate": "rlhfkit PPO, value separate", "ppo-shared": "rlhfkit PPO, value shared",
            "rloo": "rlhfkit RLOO", "grpo": "rlhfkit GRPO"}[side]


def parent(a) -> None:
    models, work, info = B.start_parent(a, {"demo": a.demo_model, "bench-3m": a.model_3m})
    if "250m" in a.models:
        from plan_vs_measured import build_random_llama

        models["250m"] = build_random_llama("250m", a.demo_model, work / "model-250m")
    common = ["--data", a.data, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--prompt-len", str(a.prompt_len), "--response-len", str(a.response_len),
              "--ppo-epochs", str(a.ppo_epochs), "--minibatches", str(a.minibatches),
              "--generations", str(a.generations)]
    rows, raw, loads = [], {}, []
    for preset, path in models.items():
        rdir, merged = prepare_reward(a, preset, path, work)
        for method in a.methods:
            for tuning in a.tuning:
                key = f"{preset}/{method}/{tuning}"
                print(f"== {key}", flush=True)
                ours = RLHFKIT_SIDES.get((method, tuning), [method])
                trl = ["trl"]
                if a.release:
                    ours, trl = [*ours, *(f"{s}@release" for s in ours)], ["trl", "trl@release"]
                cases = [(f"{key}/{s}", _case_args(s, method, path, rdir, merged, tuning, common))
                         for s in [*ours, *trl]]
                res = B.alternate(__file__, cases, a.rounds, work, loads)
                raw[key] = res
                rows += table_rows(preset, method, tuning, ours, trl, res, key)
    k = a.generations
    print()
    print(f"{a.steps} steps of {a.batch_size} prompts (PPO: 1 response each, RLOO / GRPO: {k}), "
          f"response length {a.response_len}, {a.ppo_epochs} passes x {a.minibatches} "
          f"minibatch(es), LoRA rank {LORA_RANK}, {a.rounds} rounds, load average during the "
          f"runs {min(loads):.1f}-{max(loads):.1f}")
    print(B.markdown_table(["model", "method", "tuning", "side", "episodes/s, median (min-max)",
                            "wall s", "peak RSS MiB"], rows))
    (work / "rl_results.json").write_text(json.dumps(
        {"machine": info, "args": vars(a), "loadavg": loads, "results": raw}, indent=1))
    print(f"raw results: {work / 'rl_results.json'}")


def _case_args(side, method, path, rdir, merged, tuning, common) -> list[str]:
    name, _, malloc = side.partition("@")
    return ["--side", name, "--method", name if name != "trl" else method, "--model", path,
            "--reward-dir", rdir, "--trl-reward-dir", merged, "--tuning", tuning,
            "--malloc", malloc or "cache", *common]


def table_rows(preset, method, tuning, ours, trl, res, key) -> list[list]:
    rows = []
    for s in [*ours, *trl]:
        rs = res[f"{key}/{s}"]
        rows.append([preset, method, tuning, side_name(s, method),
                     f"{B.median(rs, 'episodes_per_s'):.2f} ({B.spread(rs, 'episodes_per_s')})",
                     f"{B.median(rs, 'wall_s'):.1f}", f"{B.median(rs, 'peak_rss_mib'):.0f}"])
    # each rlhfkit side against TRL, and with --release both sides released
    pairs = [(s, "trl") for s in ours] + [
        (s, t) for t in trl[1:] for s in ours if "@" in s]
    for s, t in pairs:
        rs, tr = res[f"{key}/{s}"], res[f"{key}/{t}"]
        speed = B.median(rs, "episodes_per_s") / B.median(tr, "episodes_per_s")
        mem = B.median(rs, "peak_rss_mib") / B.median(tr, "peak_rss_mib")
        wall = B.median(rs, "wall_s") / B.median(tr, "wall_s")
        rows.append([preset, method, tuning,
                     f"**{side_name(s, method)} / {side_name(t, method)}**",
                     f"**{speed:.2f}x**", f"{wall:.2f}x", f"**{mem:.2f}x**"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--reward-dir", help=argparse.SUPPRESS)
    ap.add_argument("--trl-reward-dir", help=argparse.SUPPRESS)
    ap.add_argument("--malloc", default="cache", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["demo", "bench-3m"],
                    choices=["demo", "bench-3m", "250m"])
    ap.add_argument("--release", action="store_true",
                    help="also run both sides with freed memory returned to the OS")
    ap.add_argument("--methods", nargs="+", default=["ppo", "rloo", "grpo"],
                    choices=["ppo", "rloo", "grpo"])
    ap.add_argument("--tuning", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--demo-model", default=B.DEMO_MODEL, help="demo preset model dir")
    ap.add_argument("--model-3m", default="/tmp/bench_trl/model-3m",
                    help="bench-3m model dir (built if missing)")
    ap.add_argument("--pretrain-steps-3m", type=int, default=20)
    ap.add_argument("--reward-steps", type=int, default=5,
                    help="reward-stage steps when preparing each reward model")
    ap.add_argument("--data", default=B.DEMO_DATA, help="demo world data dir (built if missing)")
    ap.add_argument("--work", default="/tmp/bench_trl/rl", help="reward models, logs, results")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per run")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per step")
    ap.add_argument("--generations", type=int, default=2,
                    help="responses per prompt for RLOO and GRPO (PPO: 1)")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.child:
        a.tuning = a.tuning[0]
        if a.side == "trl":
            fn = child_trl_ppo if a.method == "ppo" else child_trl_grouped
        else:
            fn = child_rlhfkit
        B.report(fn(a))
    else:
        parent(a)


if __name__ == "__main__":
    main()
