"""PPO speed and memory: rlhfkit's policy stage vs TRL 1.12's trl.experimental.ppo PPOTrainer
(and, for reference, TRL's RLOOTrainer).

Same policy (the demo world's ~1M-parameter Llama and the ~3M bench-3m variant), same reward
model (rlhfkit's reward stage, LoRA rank 4; TRL gets it merged into a plain
*ForSequenceClassification checkpoint, and its value model starts from it too, as TRL's
examples do), same prompts (demo world), batch size, response length, PPO epochs,
minibatches, KL coefficient, temperature 1, stop at EOS; CPU, float32, one thread.
Tuning: LoRA rank 4 on the policy's linear layers (both sides: TRL 1.12's PPOTrainer takes
`peft_config`, wraps the policy in it and uses the adapter-disabled policy as the
reference; its value model stays a separate, fully trained model), or full tuning.
Each measurement is a fresh subprocess; the sides alternate every round.

    .venv/bin/python benchmarks/ppo_vs_trl.py                  # everything, 3 rounds
    .venv/bin/python benchmarks/ppo_vs_trl.py --models demo --tuning lora --rounds 1

episodes/s = batch_size * steps / training-loop seconds (rlhfkit: start of the first PPO
step to the end of the last; TRL: on_train_begin to on_train_end; both include sampling,
scoring, the PPO epochs and logging). wall = the whole child process from outside.
Peak RSS = the child's VmHWM.
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

    marks: list[float] = []
    inner = policy.train_step

    def timed(*args, **kw):  # train_loop calls the module-level name: time each PPO step
        t0 = time.monotonic()
        out = inner(*args, **kw)
        marks.extend([t0, time.monotonic()])
        return out

    policy.train_step = timed
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as out:
        cfg = policy.PolicyConfig(
            large_model_reference=a.model, prompt_dataset=str(Path(a.data) / "prompt.jsonl"),
            output_dir=out, reward_model_dir=a.reward_dir, instruction=B.INSTRUCTION,
            prompt_sequence_length=a.prompt_len, target_sequence_length=a.response_len,
            reinforcement_learning_train_steps=a.steps, batch_size=a.batch_size,
            policy_lora_dim=LORA_RANK if a.tuning == "lora" else 0, kl_coeff=KL_COEF,
            ppo_epochs=a.ppo_epochs, num_minibatches=a.minibatches, seed=0,
            checkpoint_every_steps=10**9, samples_every_steps=10**9)
        policy.run(cfg)
    loop = marks[-1] - marks[0]
    return {"loop_s": round(loop, 3), "episodes_per_s": round(a.batch_size * a.steps / loop, 3),
            "inner_wall_s": round(time.monotonic() - t_start, 2)}


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


def child_trl_ppo(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from datasets import Dataset
    from peft import LoraConfig
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
    peft_config = (LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                              target_modules="all-linear", task_type="CAUSAL_LM", bias="none")
                   if a.tuning == "lora" else None)
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
    loop = clock.t1 - clock.t0
    return {"loop_s": round(loop, 3), "episodes_per_s": round(a.batch_size * a.steps / loop, 3),
            "inner_wall_s": round(time.monotonic() - t_start, 2)}


def child_trl_rloo(a) -> dict:
    """RLOO at the same number of completions per step (batch_size = prompts x 2
    generations), the same number of gradient passes over them (num_iterations =
    ppo_epochs) and the same KL coefficient (beta: a reference model is loaded)."""
    t_start = time.monotonic()
    B.child_setup()
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    tok = AutoTokenizer.from_pretrained(a.model, padding_side="left")
    data = Dataset.from_dict({"prompt": _prompts(a, tok)})
    reward = AutoModelForSequenceClassification.from_pretrained(a.trl_reward_dir, num_labels=1)
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="bench_trl_rloo_") as out:
        args = RLOOConfig(
            output_dir=out, per_device_train_batch_size=a.batch_size, num_generations=2,
            steps_per_generation=1, num_iterations=a.ppo_epochs,
            max_steps=a.steps * a.ppo_epochs, max_completion_length=a.response_len,
            temperature=1.0, beta=KL_COEF, learning_rate=LR["full"], use_cpu=True,
            bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=10**6, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, log_completions=False)
        trainer = RLOOTrainer(model=a.model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[clock.callback])
        trainer.train()
    loop = clock.t1 - clock.t0
    return {"loop_s": round(loop, 3), "episodes_per_s": round(a.batch_size * a.steps / loop, 3),
            "inner_wall_s": round(time.monotonic() - t_start, 2)}


def prepare_reward(a, preset: str, model: str, work: Path) -> tuple[str, str]:
    """(rlhfkit reward_model dir, merged plain checkpoint for TRL), trained once with a few
    steps of rlhfkit's reward stage (reward quality does not matter for speed)."""
    run, merged = work / preset / "run", work / preset / "reward_merged"
    if not (merged / "config.json").is_file():
        code = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import _bench as B; B.child_setup()
from rlhfkit import reward
from rlhfkit.reward_model import load_reward_model
from rlhfkit.params import PipelineParams
cfg = reward.RewardConfig(PipelineParams(
    preference_dataset={str(Path(a.data) / 'preference.jsonl')!r},
    large_model_reference={model!r}, instruction=B.INSTRUCTION,
    prompt_sequence_length={a.prompt_len}, target_sequence_length=64,
    reward_model_train_steps={a.reward_steps}, batch_size=16, reward_lora_dim=4,
    reward_model_learning_rate_multiplier=10), output_dir={str(run)!r}, progress=False)
reward.run(cfg)
rm, tok, meta = load_reward_model({str(run / 'reward_model')!r})
hf = rm.model.merge_and_unload()
hf.save_pretrained({str(merged)!r}); tok.save_pretrained({str(merged)!r})
"""
        import subprocess

        subprocess.run([sys.executable, "-c", code], check=True)
    return str(run / "reward_model"), str(merged)


def parent(a) -> None:
    models = {"demo": a.demo_model, "bench-3m": a.model_3m}
    models = {k: v for k, v in models.items() if k in a.models}
    B.ensure_world(a.data, models, a.pretrain_steps_3m)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    info = B.machine()
    print(json.dumps(info), flush=True)
    common = ["--data", a.data, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--prompt-len", str(a.prompt_len), "--response-len", str(a.response_len),
              "--ppo-epochs", str(a.ppo_epochs), "--minibatches", str(a.minibatches)]
    rows, raw, loads = [], {}, []
    names = {"rlhfkit": "rlhfkit", "trl": "TRL PPOTrainer", "rloo": "TRL RLOOTrainer (ref.)"}
    for preset, path in models.items():
        rdir, merged = prepare_reward(a, preset, path, work)
        for tuning in a.tuning:
            key = f"{preset}/{tuning}"
            print(f"== {key}", flush=True)
            sides = ["rlhfkit", "trl"] + (["rloo"] if a.rloo and tuning == "full" else [])
            cases = [(f"{key}/{s}", ["--side", s, "--model", path, "--reward-dir", rdir,
                                     "--trl-reward-dir", merged, "--tuning", tuning, *common])
                     for s in sides]
            res = B.alternate(__file__, cases, a.rounds, work, loads)
            raw[key] = res
            for s in sides:
                rs = res[f"{key}/{s}"]
                rows.append([preset, tuning, names[s], f"{B.median(rs, 'episodes_per_s'):.2f} "
                             f"({B.spread(rs, 'episodes_per_s')})",
                             f"{B.median(rs, 'wall_s'):.1f}",
                             f"{B.median(rs, 'peak_rss_mib'):.0f}"])
            rk, tr = res[f"{key}/rlhfkit"], res[f"{key}/trl"]
            speed = B.median(rk, "episodes_per_s") / B.median(tr, "episodes_per_s")
            mem = B.median(rk, "peak_rss_mib") / B.median(tr, "peak_rss_mib")
            wall = B.median(rk, "wall_s") / B.median(tr, "wall_s")
            goal = f"speed goal >= 3x {'met' if speed >= 3 else 'NOT met'}"
            if tuning == "lora" and preset == "bench-3m":
                goal += f"; memory goal <= 0.5x {'met' if mem <= 0.5 else 'NOT met'}"
            rows.append([preset, tuning, "**rlhfkit / TRL-PPO**", f"**{speed:.2f}x**",
                         f"{wall:.2f}x", f"{mem:.2f}x ({goal})"])
    print()
    print(f"{a.steps} PPO steps of {a.batch_size} prompts, response length {a.response_len}, "
          f"{a.ppo_epochs} PPO epochs x {a.minibatches} minibatch(es), LoRA rank {LORA_RANK}, "
          f"{a.rounds} rounds, load average during the runs {min(loads):.1f}-{max(loads):.1f}")
    print(B.markdown_table(["model", "tuning", "side", "episodes/s, median (min-max)",
                            "wall s", "peak RSS MiB"], rows))
    (work / "ppo_results.json").write_text(json.dumps(
        {"machine": info, "args": vars(a), "loadavg": loads, "results": raw}, indent=1))
    print(f"raw results: {work / 'ppo_results.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["rlhfkit", "trl", "rloo"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--reward-dir", help=argparse.SUPPRESS)
    ap.add_argument("--trl-reward-dir", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["demo", "bench-3m"],
                    choices=["demo", "bench-3m"])
    ap.add_argument("--tuning", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--no-rloo", dest="rloo", action="store_false",
                    help="skip the TRL RLOOTrainer reference runs (full tuning only)")
    ap.add_argument("--demo-model", default=B.DEMO_MODEL, help="demo preset model dir")
    ap.add_argument("--model-3m", default="/tmp/bench_trl/model-3m",
                    help="bench-3m model dir (built if missing)")
    ap.add_argument("--pretrain-steps-3m", type=int, default=20)
    ap.add_argument("--reward-steps", type=int, default=5,
                    help="reward-stage steps when preparing each reward model")
    ap.add_argument("--data", default=B.DEMO_DATA, help="demo world data dir (built if missing)")
    ap.add_argument("--work", default="/tmp/bench_trl/ppo", help="reward models, logs, results")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts (episodes) per step")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.child:
        a.tuning = a.tuning[0]
        fn = {"rlhfkit": child_rlhfkit, "trl": child_trl_ppo, "rloo": child_trl_rloo}[a.side]
        B.report(fn(a))
    else:
        parent(a)


if __name__ == "__main__":
    main()
