"""Where an RL step's time goes, per method: sampling, the reference / value / reward-model
forwards of the rollout, and the update passes (forward + backward + optimizer), in CPU
seconds of one thread (`time.process_time`, robust to other processes on the machine).

The real policy stage (`policy.build_trainer`, `policy.train_step`) on the demo model with
the settings of benchmarks/ppo_vs_trl.py (16 prompts, 2 responses each for RLOO / GRPO,
responses up to 32 tokens, 4 passes, LoRA rank 4); each phase is timed by wrapping the
`Roles` method that does it. The first step is a warm-up and is not counted.

    PYTHONPATH=src python benchmarks/rl_step_profile.py --data demo/data \
        --model demo/model --reward-dir demo/run/reward_model [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402

METHODS = ["ppo-separate", "ppo-shared", "rloo", "grpo"]


def profile(a, method: str) -> dict[str, float]:
    import torch

    from rlhfkit import policy
    from rlhfkit.params import PipelineParams
    from rlhfkit.policy_model import Roles
    from rlhfkit.training import make_accelerator

    algorithm, _, layout = method.partition("-")
    params = PipelineParams(
        large_model_reference=a.model, prompt_dataset=str(Path(a.data) / "prompt.jsonl"),
        preference_dataset=str(Path(a.data) / "preference.jsonl"), instruction=B.INSTRUCTION,
        prompt_sequence_length=160, target_sequence_length=32,
        reinforcement_learning_train_steps=a.steps, batch_size=16, policy_lora_dim=4,
        kl_coeff=0.05, ppo_epochs=4, num_minibatches=1, rl_algorithm=algorithm,
        num_generations=1 if algorithm == "ppo" else 2, value_model=layout or "separate",
        loss_type="dapo", checkpoint_every_steps=10**9)
    params.validate()
    cfg = policy.PolicyConfig(params, str(Path(a.work) / method), reward_model_dir=a.reward_dir,
                              samples_every_steps=10**9)
    t = policy.build_trainer(cfg, make_accelerator())
    spent: collections.Counter = collections.Counter()

    def timed(label, inner, in_update=False):
        def wrapper(*args, **kw):
            if torch.is_grad_enabled() and not in_update:  # a forward inside the update
                return inner(*args, **kw)
            t0 = time.process_time()
            out = inner(*args, **kw)
            spent[label] += time.process_time() - t0
            return out
        return wrapper

    for name, label in (("sample", "sampling"), ("scores", "reward model"),
                        ("values", "values (rollout)"), ("logits", "reference")):
        setattr(Roles, name, timed(label, getattr(Roles, name)))
    policy.update = timed("update passes", policy.update, in_update=True)
    total = 0.0
    for step in range(1, a.steps + 1):
        if step == 2:  # step 1 warms up
            spent.clear()
        t0 = time.process_time()
        policy.train_step(t, step)
        if step > 1:
            total += time.process_time() - t0
    spent["other (advantages, logging)"] = total - sum(spent.values())
    out = {k: v / (a.steps - 1) for k, v in spent.items()}
    out["step"] = total / (a.steps - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo/data")
    ap.add_argument("--model", default="demo/model")
    ap.add_argument("--reward-dir", default="demo/run/reward_model")
    ap.add_argument("--work", default="/tmp/rl_step_profile")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    a = ap.parse_args()
    B.child_setup()
    rows = []
    for method in a.methods:
        res = profile(a, method)
        step = res.pop("step")
        parts = "; ".join(f"{k} {v:.2f} s ({v / step:.0%})" for k, v in
                          sorted(res.items(), key=lambda kv: -kv[1]))
        rows.append([method, f"{step:.2f}", parts])
        print(f"{method}: {step:.2f} CPU s/step: {parts}", flush=True)
    print(B.markdown_table(["method", "CPU s / step", "phases (share of the step)"], rows))


if __name__ == "__main__":
    main()
