"""DPO training speed and memory: rlhfkit's DPO stage vs TRL's DPOTrainer (trl 1.12.0).

Same base model (the demo world's Llama by default), same preference pairs (demo world),
batch size, max lengths, number of optimizer steps, beta, sigmoid loss and LoRA on every
linear layer on both sides; CPU, float32, one thread, no gradient checkpointing. The
reference is the base with the adapter off on both sides: TRL computes its log-probs
inside every step (its default, `precompute_ref_log_probs=False`), rlhfkit once per pair
the run visits, before step 1 -- that pass is inside rlhfkit's timed loop. Each
measurement is a fresh subprocess; the sides alternate (A B, B A, ...) for `--rounds`.

    .venv/bin/python benchmarks/dpo_vs_trl.py                       # 3 rounds
    .venv/bin/python benchmarks/dpo_vs_trl.py --steps 10 --rounds 1

pairs/s = batch_size * steps / training-loop seconds (rlhfkit: start of the reference pass
to the end of the last optimizer step; TRL: on_train_begin to on_train_end). wall = the
whole child seen from outside (imports, model load, tokenization, training, saving).
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

BETA = 0.1
LR = 5e-5  # rlhfkit's LoRA policy rate x multiplier 1; speed does not depend on it


def child_rlhfkit(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from rlhfkit import dpo
    from rlhfkit.params import PipelineParams

    marks: list[float] = []

    def timed(fn):  # run() calls the module-level names: time the reference pass and steps
        def wrapper(*args, **kw):
            t0 = time.monotonic()
            out = fn(*args, **kw)
            marks.extend([t0, time.monotonic()])
            return out
        return wrapper

    dpo.reference_logprobs = timed(dpo.reference_logprobs)
    dpo.train_step = timed(dpo.train_step)
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as out:
        params = PipelineParams.from_dict({
            "preference_dataset": str(Path(a.data) / "preference.jsonl"),
            "prompt_dataset": str(Path(a.data) / "prompt.jsonl"),
            "large_model_reference": a.model, "instruction": B.INSTRUCTION,
            "prompt_sequence_length": a.prompt_len, "target_sequence_length": a.target_len,
            "tuning_method": "dpo", "reward_model_train_steps": 0,
            "reinforcement_learning_train_steps": a.steps, "batch_size": a.batch_size,
            "policy_lora_dim": a.lora_rank, "dpo_beta": BETA, "seed": 0,
            "checkpoint_every_steps": 10**9}, quiet=True)
        res = dpo.run(dpo.DPOConfig(params, out))
    loop = marks[-1] - marks[0]
    ref_s = marks[1] - marks[0]
    return {"loop_s": round(loop, 3), "pairs_per_s": round(a.batch_size * a.steps / loop, 2),
            "reference_pass_s": round(ref_s, 3),
            "inner_wall_s": round(time.monotonic() - t_start, 2),
            "final_loss": round(res["final_loss"], 4)}


def child_trl(a) -> dict:
    t_start = time.monotonic()
    B.child_setup()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    rows = B.trl_preference_rows(a.data, tok)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    # The adapter rlhfkit builds (rlhfkit.training.lora_config): alpha 2 x rank, no
    # dropout, every linear layer of the blocks.
    peft_config = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM", bias="none")

    class Clock(TrainerCallback):
        t0 = t1 = 0.0

        def on_train_begin(self, *args, **kw):
            Clock.t0 = time.monotonic()

        def on_train_end(self, *args, **kw):
            Clock.t1 = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="bench_trl_dpo_") as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
            learning_rate=LR, beta=BETA, loss_type=["sigmoid"],
            max_length=a.prompt_len + a.target_len + 1, use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, report_to="none", save_strategy="no",
            eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, lr_scheduler_type="linear", warmup_steps=0)
        trainer = DPOTrainer(model=model, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list(rows), peft_config=peft_config,
                             callbacks=[Clock()])
        trainer.train()
    loop = Clock.t1 - Clock.t0
    return {"loop_s": round(loop, 3), "pairs_per_s": round(a.batch_size * a.steps / loop, 2),
            "inner_wall_s": round(time.monotonic() - t_start, 2)}


def parent(a) -> None:
    B.ensure_world(a.data, {"demo": a.model}, 20)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    info = B.machine()
    print(json.dumps(info), flush=True)
    common = ["--data", a.data, "--model", a.model, "--steps", str(a.steps),
              "--batch-size", str(a.batch_size), "--prompt-len", str(a.prompt_len),
              "--target-len", str(a.target_len), "--lora-rank", str(a.lora_rank)]
    loads: list[float] = []
    cases = [(side, ["--side", side, *common]) for side in ("rlhfkit", "trl")]
    res = B.alternate(__file__, cases, a.rounds, work, loads)
    rk, tr = res["rlhfkit"], res["trl"]
    rows = [[side, f"{B.median(rs, 'pairs_per_s'):.1f} ({B.spread(rs, 'pairs_per_s')})",
             f"{B.median(rs, 'wall_s'):.1f}", f"{B.median(rs, 'peak_rss_mib'):.0f}"]
            for side, rs in (("rlhfkit DPO", rk), ("TRL DPOTrainer", tr))]
    speed = B.median(rk, "pairs_per_s") / B.median(tr, "pairs_per_s")
    mem = B.median(rk, "peak_rss_mib") / B.median(tr, "peak_rss_mib")
    wall = B.median(rk, "wall_s") / B.median(tr, "wall_s")
    ok = "met" if speed >= 1.5 and mem <= 0.8 else "NOT met"
    rows.append(["**DPO vs TRL DPO**", f"**{speed:.2f}x**", f"{wall:.2f}x",
                 f"{mem:.2f}x ({ok}: goal >= 1.5x speed, <= 0.8x memory)"])
    print()
    print(f"model {a.model}, steps {a.steps}, batch {a.batch_size} pairs, max length "
          f"{a.prompt_len}+{a.target_len}, LoRA rank {a.lora_rank}, beta {BETA}, {a.rounds} "
          f"rounds, load average during the runs {min(loads):.1f}-{max(loads):.1f}")
    print(B.markdown_table(["side", "pairs/s, median (min-max)", "wall s", "peak RSS MiB"],
                           rows))
    (work / "dpo_results.json").write_text(json.dumps(
        {"machine": info, "args": vars(a), "loadavg": loads, "results": res}, indent=1))
    print(f"raw results: {work / 'dpo_results.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["rlhfkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", default=B.DEMO_MODEL, help="base model dir (built if missing)")
    ap.add_argument("--data", default=B.DEMO_DATA, help="demo world data dir (built if missing)")
    ap.add_argument("--work", default="/tmp/bench_trl/dpo", help="logs and raw results")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=16, help="preference pairs per step")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--target-len", type=int, default=64)
    ap.add_argument("--lora-rank", type=int, default=1, help="Vertex's policy rank: 1")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.child:
        B.report(child_rlhfkit(a) if a.side == "rlhfkit" else child_trl(a))
    else:
        parent(a)


if __name__ == "__main__":
    main()
