"""Which RL method works on the demo world, measured by the hidden gold annotator at the
same RL wall-clock budget (issue 10 §5): PPO (value separate / shared), RLOO, GRPO.

For each method and seed, in a fresh subprocess: calibrate the step time (2 steps,
discarded), set the schedule to the steps that fit `--budget` seconds, train from scratch
until done, then generate greedy summaries of the eval prompts (bulk inference's
decoding) and score them with the gold annotator: win rate over the base model (ties
half) with a 95% interval, mean gold, KL to the base, mean words, wall time.

    .venv/bin/python benchmarks/method_quality.py examples/demo/params.json \\
        --data /work/main/demo/data --model /work/main/demo/model --budget 90 --seeds 0

The reward model is trained once (the params' reward stage, `rlhfkit train-reward`) under
--work. RLOO / GRPO use `--generations` responses to each of batch_size / generations
prompts, so every method samples the same episodes per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402
import ppo_demo_quality as Q  # noqa: E402

METHODS = {"ppo-separate": {"rl_algorithm": "ppo", "value_model": "separate"},
           "ppo-shared": {"rl_algorithm": "ppo", "value_model": "shared"},
           "rloo": {"rl_algorithm": "rloo"}, "grpo": {"rl_algorithm": "grpo"}}


def params_for(a, method: str, seed: int) -> dict:
    values = json.loads(Path(a.params).read_text())
    data = Path(a.data)
    values.update(preference_dataset=str(data / "preference.jsonl"),
                  prompt_dataset=str(data / "prompt.jsonl"), eval_dataset=str(data / "eval.jsonl"),
                  large_model_reference=a.model, seed=seed, **METHODS[method])
    if method in ("rloo", "grpo"):
        values.update(num_generations=a.generations,
                      batch_size=max(1, values.get("batch_size", 64) // a.generations))
    return values


def child(a) -> dict:
    import torch

    from rlhfkit import infer, policy
    from rlhfkit.data import load_dataset
    from rlhfkit.params import PipelineParams
    from rlhfkit.training import make_accelerator

    B.child_setup()
    torch.set_num_threads(a.threads)
    params = PipelineParams.from_dict(params_for(a, a.method, a.seed), quiet=True)
    cfg = policy.PolicyConfig.from_params(params, a.run, reward_model_dir=a.reward_dir)
    t = policy.build_trainer(cfg, make_accelerator())
    t0 = time.monotonic()
    for step in (1, 2):  # calibration, discarded below
        policy.train_step(t, step)
    per_step = (time.monotonic() - t0) / 2
    steps = max(1, int(a.budget / per_step))
    params.reinforcement_learning_train_steps = steps  # cfg reads it: the schedule's length
    del t
    t = policy.build_trainer(cfg, make_accelerator())  # fresh weights, optimizer, order
    t0, stats = time.monotonic(), {}
    for step in range(1, steps + 1):
        stats, _ = policy.train_step(t, step)
    train_s = time.monotonic() - t0
    records = load_dataset(params.eval_dataset, "eval")[:a.n]
    lengths = (params.prompt_sequence_length, params.target_sequence_length)
    t.roles._use("policy")
    tuned = Q.greedy(t.roles.lm, t.roles.tokenizer, records, params.instruction, *lengths)
    base_cfg = infer.Config(model=a.model, eval_dataset="-", output="-")
    tok, base_model = infer.load_model(base_cfg, torch.device("cpu"))
    base = Q.greedy(base_model, tok, records, params.instruction, *lengths)
    m_t, gold_t, _ = Q.measure(records, tuned, None, params.instruction)
    m_b, gold_b, _ = Q.measure(records, base, None, params.instruction)
    return {"method": a.method, "seed": a.seed, "steps": steps, "train_s": round(train_s, 1),
            "gold_win_rate": round(Q.win_rate(gold_t, gold_b), 4),
            "gold_win_rate_ci95": Q.win_rate_ci(gold_t, gold_b),
            "gold_tuned": round(m_t["gold"], 4), "gold_base": round(m_b["gold"], 4),
            "kl": round(stats.get("objective/kl", float("nan")), 3),
            "words_tuned": round(m_t["words"], 1), "words_base": round(m_b["words"], 1),
            "example": tuned[0]}


def prepare_reward(a, work: Path) -> str:
    run = work / "reward_run"
    if not (run / "reward_model" / "DONE").is_file():
        p = work / "reward_params.json"
        p.write_text(json.dumps(params_for(a, "ppo-separate", 0)))
        subprocess.run([sys.executable, "-m", "rlhfkit", "train-reward", str(p),
                        "--output-dir", str(run), "--no-progress"], check=True)
    return str(run / "reward_model")


def parent(a) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    reward_dir = prepare_reward(a, work)
    rows, loads = [], []
    for seed in a.seeds:
        for method in a.methods:
            loads.append(B.os.getloadavg()[0])
            args = [*sys.argv[1:], "--method", method, "--seed", str(seed), "--reward-dir",
                    reward_dir, "--run", str(work / f"{method}-s{seed}")]
            res = B.run_child(__file__, args, work / f"{method}-s{seed}.log")
            rows.append(res)
            print(json.dumps(res), flush=True)
    table = [[r["method"], r["seed"], r["steps"], f"{r['gold_win_rate']:.2f} "
              f"[{r['gold_win_rate_ci95'][0]:.2f}, {r['gold_win_rate_ci95'][1]:.2f}]",
              f"{r['gold_tuned']:.2f} (base {r['gold_base']:.2f})", r["kl"],
              f"{r['words_tuned']:.1f} (base {r['words_base']:.1f})", r["train_s"]]
             for r in rows]
    print(f"\nbudget {a.budget} s of RL training per run, {a.n} eval prompts, load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print(B.markdown_table(["method", "seed", "steps", "gold win rate [95% CI]", "mean gold",
                            "KL (nats)", "mean words", "train s"], table))
    (work / "quality_results.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("params", help="the demo world's params (examples/demo/params.json)")
    ap.add_argument("--data", default=B.DEMO_DATA)
    ap.add_argument("--model", default=B.DEMO_MODEL)
    ap.add_argument("--work", default="/tmp/method_quality")
    ap.add_argument("--budget", type=float, default=90.0, help="RL training seconds per run")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--n", type=int, default=200, help="eval prompts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reward-dir", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        B.report(child(a))
    else:
        parent(a)


if __name__ == "__main__":
    main()
