"""The offline demo world: synthetic data, a hidden gold annotator and a small model.

- `rlhfkit demo data DIR` (world.run): preference / prompt / eval sets in the course's
  formats, plus their noise ceiling;
- `rlhfkit demo model DIR` (model.run): a small Llama pre-trained on the world, the
  pipeline's offline `large_model_reference`;
- `gold_score(record, summary)`: what the hidden annotator thinks of any summary of a
  demo record, so a run's real effect can be measured.

Heavy imports (torch, transformers) live in model.py only.
"""

from rlhfkit.demo.world import (
    DEMO_INSTRUCTION,
    WORD_LIMIT,
    gold_breakdown,
    gold_score,
    is_demo_record,
    label_probability,
    noise_ceiling,
)

__all__ = ["DEMO_INSTRUCTION", "WORD_LIMIT", "gold_breakdown", "gold_score", "is_demo_record",
           "label_probability", "noise_ceiling"]
