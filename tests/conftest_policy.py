"""Helpers for the policy tests: a reward model in the reward stage's output layout.

Until (and independently of) rlhfkit.reward, a reward model is built here exactly as the
reward stage writes RUN/reward_model/: a peft SEQ_CLS LoRA adapter of an
AutoModelForSequenceClassification(num_labels=1) whose adapter_model.safetensors holds
the LoRA weights and the `score` head, plus tokenizer files and rlhfkit.json (or, with
lora_dim 0, a full seq-cls model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_reward_model(base_dir: Path, out_dir: Path, lora_dim: int = 4, seed: int = 1) -> Path:
    """Save a reward model on `base_dir` with random (non-zero) LoRA and head weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir, padding_side="left")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None \
        else tok.eos_token_id
    out_dir = Path(out_dir)
    if lora_dim > 0:
        model = get_peft_model(model, LoraConfig(
            r=lora_dim, lora_alpha=2 * lora_dim, target_modules="all-linear",
            task_type="SEQ_CLS"))
        with torch.no_grad():  # LoRA B starts at 0: make the adapter matter
            for n, p in model.named_parameters():
                if "lora_B" in n or "score" in n:
                    p.normal_(0, 0.5)
    else:
        with torch.no_grad():
            model.score.weight.normal_(0, 0.5)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    meta = {"kind": "reward_model", "base_model": str(Path(base_dir).resolve()),
            "lora_dim": lora_dim, "instruction": None, "prompt_sequence_length": 16,
            "target_sequence_length": 8, "append_eos": True}
    (out_dir / "rlhfkit.json").write_text(json.dumps(meta))
    return out_dir


def write_prompts(path: Path, n: int = 16) -> Path:
    topics = ["my roommate", "a job offer", "my dog", "the landlord", "a long day at work",
              "moving to another city", "school", "the couch"]
    lines = [json.dumps({"input_text": f"Post {i}: I have a problem with {topics[i % 8]}. "
                                       f"What should I do? [summary]: "}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path
