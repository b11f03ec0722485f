"""Helpers of the reward-model tests: a learnable synthetic preference set, parameter files
and TensorBoard / weight readers."""

from __future__ import annotations

import json
import random
from pathlib import Path

GOOD = ["a short kind summary", "brief and on topic", "the dog chewed the couch"]
BAD = ["no no no this goes on and on about nothing", "rambling text that never ends at all",
       "I do not know what to say here really"]


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose preferred candidate comes from GOOD and the other from BAD; the
    preferred one sits at index 0 or 1 at random (as in real data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        choice = rng.randrange(2)
        cands = [good, bad] if choice == 0 else [bad, good]
        out.append({"input_text": f"post {i}: my roommate eats my food [summary]: ",
                    "candidate_0": cands[0], "candidate_1": cands[1], "choice": choice})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_params(tmp_path: Path, model_dir: Path, name: str = "params.json",
                 n_pairs: int = 48, **overrides) -> Path:
    """A parameter file over a fresh synthetic preference set; small and fast."""
    data = write_jsonl(tmp_path / "pref.jsonl", preference_records(n_pairs))
    values = {"preference_dataset": str(data), "prompt_dataset": str(data),
              "large_model_reference": str(model_dir), "instruction": "Summarize",
              "prompt_sequence_length": 24, "target_sequence_length": 12,
              "reward_model_train_steps": 8, "batch_size": 8, "checkpoint_every_steps": 4,
              "reward_model_learning_rate_multiplier": 30.0, **overrides}
    path = tmp_path / name
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TensorBoard event files in `logdir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def final_weights(reward_model_dir: Path) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors"
    if not (reward_model_dir / name).is_file():
        name = "model.safetensors"
    return load_file(str(reward_model_dir / name))
