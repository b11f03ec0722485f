"""Reward-model training speed and memory: rlhfkit's reward stage vs TRL's RewardTrainer.

Same base model (the demo world's ~1M-parameter Llama and the ~3M bench-3m variant), same
preference pairs (demo world), batch size, max length, number of optimizer steps, LoRA
rank 4 on every linear layer (+ the trained score head) on both sides, CPU, float32, one
thread. Each measurement is a fresh subprocess; the sides alternate (A B, B A, ...) for
`--rounds` rounds so machine load hits both alike.

    .venv/bin/python benchmarks/reward_vs_trl.py                 # both models, 3 rounds
    .venv/bin/python benchmarks/reward_vs_trl.py --steps 10 --rounds 1 --models demo

pairs/s = batch_size * steps / training-loop seconds (rlhfkit: start of the first optimizer
step to the end of the last one; TRL: on_train_begin to on_train_end). wall = the whole
child process seen from outside (imports, model load, tokenization, training; rlhfkit also
scores its held-out pairs once and saves the adapter). Peak RSS = the child's VmHWM.
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
HOLDOUT = 0.02  # rlhfkit holds out 2% of pairs for its end-of-run accuracy (outside the loop)


def child_rlhfkit(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from rlhfkit import reward
    from rlhfkit.params import PipelineParams

    marks: list[float] = []
    inner = reward.train_step

    def timed(*args, **kw):  # run() calls the module-level name: time every optimizer step
        t0 = time.monotonic()
        out = inner(*args, **kw)
        marks.extend([t0, time.monotonic()])
        return out

    reward.train_step = timed
    with tempfile.TemporaryDirectory(prefix="bench_rw_") as out:
        params = PipelineParams(
            preference_dataset=str(Path(a.data) / "preference.jsonl"),
            prompt_dataset=str(Path(a.data) / "prompt.jsonl"),
            large_model_reference=a.model, instruction=B.INSTRUCTION,
            prompt_sequence_length=a.prompt_len, target_sequence_length=a.target_len,
            reward_model_train_steps=a.steps, batch_size=a.batch_size,
            reward_lora_dim=LORA_RANK, reward_holdout_fraction=HOLDOUT, seed=0,
            checkpoint_every_steps=10**9)
        cfg = reward.RewardConfig(params, output_dir=out, eval_every_steps=10**9,
                                  progress=False)
        res = reward.run(cfg)
    loop = marks[-1] - marks[0]
    return {"loop_s": round(loop, 3), "pairs_per_s": round(a.batch_size * a.steps / loop, 2),
            "inner_wall_s": round(time.monotonic() - t_start, 2),
            "final_eval_accuracy": round(res["eval_accuracy"], 3)}


def child_trl(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    rows = B.trl_preference_rows(a.data, tok)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1)
    # The same adapter rlhfkit builds (rlhfkit.training.lora_config): rank 4, alpha 8, no
    # dropout, every linear layer of the blocks; task SEQ_CLS trains the score head in full.
    peft_config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                             target_modules="all-linear", task_type="SEQ_CLS", bias="none")

    class Clock(TrainerCallback):
        t0 = t1 = 0.0

        def on_train_begin(self, *args, **kw):
            Clock.t0 = time.monotonic()

        def on_train_end(self, *args, **kw):
            Clock.t1 = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="bench_trl_rw_") as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
            learning_rate=1e-4, max_length=a.prompt_len + a.target_len, use_cpu=True,
            bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, lr_scheduler_type="linear", warmup_steps=0)
        trainer = RewardTrainer(model=model, args=args, processing_class=tok,
                                train_dataset=Dataset.from_list(rows), peft_config=peft_config,
                                callbacks=[Clock()])
        kept = len(trainer.train_dataset)
        trainer.train()
    loop = Clock.t1 - Clock.t0
    return {"loop_s": round(loop, 3), "pairs_per_s": round(a.batch_size * a.steps / loop, 2),
            "inner_wall_s": round(time.monotonic() - t_start, 2),
            "pairs_kept_after_max_length": kept}


def parent(a) -> None:
    models, work, info = B.start_parent(a, {"demo": a.demo_model, "bench-3m": a.model_3m})
    common = ["--data", a.data, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--prompt-len", str(a.prompt_len), "--target-len", str(a.target_len)]
    rows, raw, loads = [], {}, []
    for preset, path in models.items():
        print(f"== {preset} ({path})", flush=True)
        cases = [(f"{preset}/{side}", ["--side", side, "--model", path, *common])
                 for side in ("rlhfkit", "trl")]
        res = B.alternate(__file__, cases, a.rounds, work, loads)
        raw[preset] = res
        rk, tr = res[f"{preset}/rlhfkit"], res[f"{preset}/trl"]
        for side, rs in (("rlhfkit", rk), ("TRL RewardTrainer", tr)):
            rows.append([preset, side, f"{B.median(rs, 'pairs_per_s'):.1f} "
                         f"({B.spread(rs, 'pairs_per_s')})", f"{B.median(rs, 'wall_s'):.1f}",
                         f"{B.median(rs, 'peak_rss_mib'):.0f}"])
        speed = B.median(rk, "pairs_per_s") / B.median(tr, "pairs_per_s")
        mem = B.median(rk, "peak_rss_mib") / B.median(tr, "peak_rss_mib")
        wall = B.median(rk, "wall_s") / B.median(tr, "wall_s")
        ok = "met" if speed >= 1.5 and mem <= 1.0 else "NOT met"
        rows.append([preset, "**rlhfkit / TRL**", f"**{speed:.2f}x**", f"{wall:.2f}x",
                     f"{mem:.2f}x ({ok}: goal >= 1.5x speed, <= 1.0x memory)"])
    print()
    print(f"steps {a.steps}, batch {a.batch_size} pairs, max length "
          f"{a.prompt_len}+{a.target_len}, LoRA rank {LORA_RANK}, {a.rounds} rounds, "
          f"load average during the runs {min(loads):.1f}-{max(loads):.1f}")
    print(B.markdown_table(["model", "side", "pairs/s, median (min-max)", "wall s",
                            "peak RSS MiB"], rows))
    (work / "reward_results.json").write_text(json.dumps(
        {"machine": info, "args": vars(a), "loadavg": loads, "results": raw}, indent=1))
    print(f"raw results: {work / 'reward_results.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["rlhfkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["demo", "bench-3m"],
                    choices=["demo", "bench-3m"])
    ap.add_argument("--demo-model", default=B.DEMO_MODEL, help="demo preset model dir")
    ap.add_argument("--model-3m", default="/tmp/bench_trl/model-3m",
                    help="bench-3m model dir (built if missing)")
    ap.add_argument("--pretrain-steps-3m", type=int, default=20,
                    help="pretraining steps when building bench-3m (speed needs no quality)")
    ap.add_argument("--data", default=B.DEMO_DATA, help="demo world data dir (built if missing)")
    ap.add_argument("--work", default="/tmp/bench_trl/reward", help="logs and raw results")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=16, help="preference pairs per step")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--target-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.child:
        B.report(child_rlhfkit(a) if a.side == "rlhfkit" else child_trl(a))
    else:
        parent(a)


if __name__ == "__main__":
    main()
