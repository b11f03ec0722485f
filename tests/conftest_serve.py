"""Helpers for the export and serve tests: a finished run in the policy stage's layout.

RUN/policy/ is written as the policy stage writes it: a peft LoRA adapter of the base
causal LM naming its base (`base_model_name_or_path`), the tokenizer, rlhfkit.json with
the instruction and lengths, and DONE; RUN/params.json marks the directory as a run. The
LoRA weights are random (not peft's zero init), so a merged model that ignored the adapter
would be caught.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_run(base_dir: Path, run_dir: Path, instruction: str | None = "Summarize briefly.",
             lora_dim: int = 2, seed: int = 3) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    policy = run_dir / "policy"
    policy.mkdir(parents=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=lora_dim, lora_alpha=2 * lora_dim, target_modules="all-linear",
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():  # large enough that the adapter visibly changes the logits
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(policy, safe_serialization=True)
    cfg = json.loads((policy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    (policy / "adapter_config.json").write_text(json.dumps(cfg))
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(policy)
    (policy / "rlhfkit.json").write_text(json.dumps({
        "kind": "policy", "base_model": str(base_dir), "instruction": instruction,
        "prompt_sequence_length": 64, "target_sequence_length": 8, "merged": None}))
    (policy / "DONE").write_text("test\n")
    (run_dir / "params.json").write_text(json.dumps({
        "large_model_reference": str(base_dir), "instruction": instruction}))
    return run_dir
