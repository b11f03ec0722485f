"""How much does PPO help on the demo world? Measured by the hidden gold annotator.

Two modes:

  compare  greedy summaries of the eval prompts by the base model and by RUN/policy;
           mean gold score of each and its parts (coverage, off_topic, repetition,
           disfluency), the gold win rate of tuned over base (ties count half) with a 95%
           interval, the reward model's (proxy) scores and win rate, mean words, the share
           within the word limit, the final KL.

      python benchmarks/ppo_demo_quality.py compare --base DEMO/model \\
          --run RUN --eval DEMO/data/eval.jsonl

  curve    train the policy in this process and measure proxy and gold scores of greedy
           summaries every K steps: with kl_coeff = 0 over-optimisation shows as the
           proxy reward rising while the gold score falls.

      python benchmarks/ppo_demo_quality.py curve PARAMS --output-dir RUN --every 10

Greedy decoding and the eval prompts are those of bulk inference (`rlhfkit.infer`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def greedy(model, tokenizer, records, instruction, prompt_len, target_len) -> list[str]:
    from rlhfkit import infer
    from rlhfkit.data import prompt_text
    from rlhfkit.params import PipelineParams

    prompts = [prompt_text(r, instruction, tokenizer) for r in records]
    cfg = infer.Config(model="-", eval_dataset="-", output="-", batch_size=50,
                       params=PipelineParams(instruction=instruction,
                                             prompt_sequence_length=prompt_len,
                                             target_sequence_length=target_len))
    return infer.generate(model, tokenizer, prompts, cfg)


def measure(records, predictions, scorer, instruction) -> tuple[dict, list, list | None]:
    from rlhfkit.data import prompt_text
    from rlhfkit.demo import gold_breakdown

    parts = [gold_breakdown(r, p) for r, p in zip(records, predictions, strict=True)]
    gold = [b["score"] for b in parts]
    out = {"gold": sum(gold) / len(gold), "words": sum(b["n_words"] for b in parts) / len(gold),
           "within_limit": sum(b["n_words"] < r["demo"]["word_limit"]
                               for r, b in zip(records, parts, strict=True)) / len(parts)}
    for key in ("coverage", "off_topic", "repetition", "disfluency"):
        out[key] = round(sum(b[key] for b in parts) / len(parts), 4)
    proxy = None
    if scorer is not None:
        prompts = [prompt_text(r, instruction, scorer.tokenizer) for r in records]
        proxy = scorer.score(prompts, predictions)
        out["proxy"] = sum(proxy) / len(proxy)
    return out, gold, proxy


def win_rate(tuned: list[float], base: list[float]) -> float:
    """Share of prompts where tuned beats base, ties counting half."""
    wins = sum((t > b) + 0.5 * (t == b) for t, b in zip(tuned, base, strict=True))
    return wins / len(base)


def win_rate_ci(tuned: list[float], base: list[float], z: float = 1.96) -> list[float]:
    """Normal-approximation 95% interval of the win rate: per-prompt outcomes 1, 0.5, 0."""
    outcomes = [(t > b) + 0.5 * (t == b) for t, b in zip(tuned, base, strict=True)]
    n = len(outcomes)
    mean = sum(outcomes) / n
    sd = (sum((o - mean) ** 2 for o in outcomes) / max(n - 1, 1)) ** 0.5
    return [round(mean - z * sd / n ** 0.5, 4), round(mean + z * sd / n ** 0.5, 4)]


def wins_ties_losses(tuned: list[float], base: list[float]) -> list[int]:
    pairs = list(zip(tuned, base, strict=True))
    return [sum(t > b for t, b in pairs), sum(t == b for t, b in pairs),
            sum(t < b for t, b in pairs)]


def compare(args) -> dict:
    import torch

    from rlhfkit import infer
    from rlhfkit.data import load_dataset
    from rlhfkit.reward_model import RewardScorer

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    meta = json.loads((run / "policy" / "rlhfkit.json").read_text())
    records = load_dataset(args.eval, "eval")[:args.n]
    scorer = RewardScorer.load(run / "reward_model", device="cpu")
    lengths = (meta["prompt_sequence_length"], meta["target_sequence_length"])
    result, golds, proxies = {}, {}, {}
    for name, cfg in (("base", infer.Config(model=args.base, eval_dataset="-", output="-")),
                      ("tuned", infer.Config(model=str(run / "policy"), eval_dataset="-",
                                             output="-"))):
        tok, model = infer.load_model(cfg, torch.device("cpu"))
        preds = greedy(model, tok, records, meta["instruction"], *lengths)
        result[name], golds[name], proxies[name] = measure(records, preds, scorer,
                                                           meta["instruction"])
        result[name]["example"] = preds[0]
    result["gold_win_rate"] = win_rate(golds["tuned"], golds["base"])
    result["gold_win_rate_ci95"] = win_rate_ci(golds["tuned"], golds["base"])
    result["wins_ties_losses"] = wins_ties_losses(golds["tuned"], golds["base"])
    result["proxy_win_rate"] = win_rate(proxies["tuned"], proxies["base"])
    result["final_kl"] = meta.get("final_kl")
    result["n"] = len(records)
    return result


def curve(args) -> list[dict]:
    import torch

    from rlhfkit import policy
    from rlhfkit.data import load_dataset
    from rlhfkit.params import PipelineParams
    from rlhfkit.reward_model import RewardScorer
    from rlhfkit.training import make_accelerator

    torch.set_num_threads(args.threads)
    params = PipelineParams.from_file(args.params)
    overrides = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in args.set or []}
    params = PipelineParams.from_dict({**params.to_dict(), **overrides}, quiet=True)
    cfg = policy.PolicyConfig.from_params(params, args.output_dir)
    t = policy.build_trainer(cfg, make_accelerator())
    records = load_dataset(params.eval_dataset, "eval")[:args.n]
    scorer = RewardScorer.load(cfg.reward_dir, device="cpu")
    lengths = (cfg.prompt_sequence_length, cfg.target_sequence_length)
    rows, base_gold, base_proxy, stats = [], None, None, {}
    t0 = time.monotonic()
    for step in range(cfg.reinforcement_learning_train_steps + 1):
        if step % args.every == 0 or step == cfg.reinforcement_learning_train_steps:
            t.roles._use("policy")
            preds = greedy(t.roles.lm, t.roles.tokenizer, records, cfg.instruction, *lengths)
            m, gold, proxy = measure(records, preds, scorer, cfg.instruction)
            base_gold, base_proxy = base_gold or gold, base_proxy or proxy
            row = {"step": step, **m, "gold_win_rate": win_rate(gold, base_gold),
                   "gold_win_rate_ci95": win_rate_ci(gold, base_gold),
                   "wins_ties_losses": wins_ties_losses(gold, base_gold),
                   "proxy_win_rate": win_rate(proxy, base_proxy),
                   **{k.split("/")[-1]: round(stats.get(k, 0.0), 4) for k in (
                       "objective/kl", "objective/raw_scores", "ppo/policy/clipfrac",
                       "ppo/policy/approxkl", "objective/entropy")},
                   "seconds": round(time.monotonic() - t0), "example": preds[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if step < cfg.reinforcement_learning_train_steps:
            stats, _ = policy.train_step(t, step + 1)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--base", required=True)
    c.add_argument("--run", required=True)
    c.add_argument("--eval", required=True)
    k = sub.add_parser("curve")
    k.add_argument("params")
    k.add_argument("--output-dir", required=True)
    k.add_argument("--every", type=int, default=10)
    k.add_argument("--set", action="append", help="override a parameter: key=json")
    for p in (c, k):
        p.add_argument("--n", type=int, default=200, help="eval prompts")
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps(compare(args) if args.mode == "compare" else curve(args), indent=1))


if __name__ == "__main__":
    main()
