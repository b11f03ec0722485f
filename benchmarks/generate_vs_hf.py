"""Bulk inference's decoder (rlhfkit.generate.decode, finished rows leave the batch) against
transformers' `generate`, greedy, on the demo world's eval prompts (issue 11 §2).

Both sides run in this one process, alternated `--rounds` times over the same batches
(bulk inference's: sorted by prompt length, `--batch-size` prompts), one torch thread.
Prints each side's median tokens/s (new tokens up to and including EOS, per second of
decoding), the ratio, how many predictions are identical, and the share of the tokens
`generate` fed that came after a row's EOS (the work `decode` skips).

    .venv/bin/python benchmarks/generate_vs_hf.py --model demo/model \\
        --eval demo/data/eval.jsonl --batch-size 16 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402


def _until_eos(row: list[int], eos: list[int]) -> list[int]:
    cut = next((j for j, t in enumerate(row) if t in eos), None)
    return row if cut is None else row[:cut + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo/model")
    ap.add_argument("--eval", default="demo/data/eval.jsonl")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per batch (16)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="(64: the demo's)")
    ap.add_argument("--prompt-len", type=int, default=160, help="(160: the demo's)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    B.child_setup()
    import torch
    from transformers import GenerationConfig

    from rlhfkit.data import load_dataset, prompt_text
    from rlhfkit.generate import decode
    from rlhfkit.infer import length_sorted_batches
    from rlhfkit.models import encode_prompts, load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    tok = load_tokenizer(a.model)
    lm = load_causal_lm(a.model).eval()
    prompts = [prompt_text(r, B.INSTRUCTION, tok) for r in load_dataset(a.eval, "eval")]
    lengths = [len(x) for x in tok(prompts)["input_ids"]]
    encs = [encode_prompts(tok, [prompts[i] for i in b], a.prompt_len)
            for b in length_sorted_batches(lengths, a.batch_size)]
    eos = [tok.eos_token_id]
    cfg = GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=False,
                           eos_token_id=eos, pad_token_id=tok.pad_token_id)

    def ours(e):
        return decode(lm, e["input_ids"], e["attention_mask"], a.max_new_tokens, eos,
                      tok.pad_token_id)

    def hf(e):
        return lm.generate(**e, generation_config=cfg)[:, e["input_ids"].shape[1]:]

    rates, outputs, fed = {"rlhfkit decode": [], "HF generate": []}, {}, 0
    with torch.no_grad():
        for _ in range(a.rounds):
            for name, fn in (("rlhfkit decode", ours), ("HF generate", hf)):
                t0, rows = time.perf_counter(), []
                for e in encs:
                    rows += fn(e).tolist()
                seconds = time.perf_counter() - t0
                kept = [_until_eos(r, eos) for r in rows]
                rates[name].append(sum(map(len, kept)) / seconds)
                outputs[name] = kept
                if name == "HF generate":  # every row is fed until its batch's last ends
                    fed = sum(len(r) for r in rows)
    useful = sum(map(len, outputs["HF generate"]))
    same = sum(x == y for x, y in zip(*outputs.values(), strict=True))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(prompts)} prompts, batch {a.batch_size}, greedy, <= {a.max_new_tokens} new "
          f"tokens, {a.rounds} rounds alternated, 1 thread")
    for k, v in med.items():
        print(f"  {k:15s} {v:8.1f} tokens/s (median; rounds {min(rates[k]):.1f}-"
              f"{max(rates[k]):.1f})")
    print(f"  ratio {med['rlhfkit decode'] / med['HF generate']:.2f}x; identical predictions "
          f"{same}/{len(prompts)}; generate fed {fed - useful} tokens after EOS "
          f"({(fed - useful) / max(fed, 1):.1%} of {fed})")
    print("  load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
