"""Pairs to label: two candidate answers per prompt, for people to choose between.

The course's preference data comes from human labellers choosing the better of two
summaries (Stiennon et al. 2020, "Learning to summarize from human feedback"). This module
makes such pairs, written as `pairs.jsonl` for `rlhfkit label serve`:

- from one model: two samples per prompt (temperature > 0, two seeds);
- from two models (`--model-b`): one answer from each, e.g. the base and a tuned policy;
- from a run (`--from-run RUN`): the base and tuned predictions of its bulk inference
  (`eval_results_untuned.jsonl`, `eval_results_tuned.jsonl`), nothing generated. Labelled,
  these are a blind human evaluation (`rlhfkit compare RUN --human FILE`).

Which side is which is randomised per pair (a seeded coin), and the sources are written
to a sidecar, `pairs.sources.jsonl`, which the page never reads: the labeller is blind.
A pair whose two answers are the same text is left out (there is nothing to choose).

Generation reuses bulk inference (`rlhfkit.infer`): the same prompt rendering,
left-truncation and sampling as the pipeline's own.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from rlhfkit import log
from rlhfkit.data import INSTRUCTION_SEPARATOR
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.io import atomic_write_jsonl

PAIR_KEYS = ("pair_id", "input_text", "candidate_0", "candidate_1")  # + "instruction"


@dataclass
class Pair:
    """What the labeller sees (`to_record`) and, apart, where each candidate came from."""

    input_text: str  # the post, as in the course's preference format (no instruction)
    candidate_0: str
    candidate_1: str
    instruction: str | None = None  # shown above the post; train-reward takes it as a param
    source_0: str = ""  # e.g. "base", "tuned", "sample 1 of MODEL"
    source_1: str = ""

    @property
    def pair_id(self) -> str:
        """A content hash: the same texts give the same id, whatever the file's order."""
        blob = "\x00".join([self.instruction or "", self.input_text, self.candidate_0,
                            self.candidate_1])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def to_record(self) -> dict:
        rec = {"pair_id": self.pair_id, "input_text": self.input_text,
               "candidate_0": self.candidate_0, "candidate_1": self.candidate_1}
        if self.instruction:
            rec["instruction"] = self.instruction
        return rec

    def sources(self) -> dict:
        return {"pair_id": self.pair_id, "source_0": self.source_0, "source_1": self.source_1}


def sources_path(pairs_path: str | Path) -> Path:
    """pairs.jsonl -> pairs.sources.jsonl (next to it, never shown by the page)."""
    p = Path(pairs_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".sources.jsonl")


def split_prompt(prompt: str) -> tuple[str | None, str]:
    """(instruction, input_text) of a rendered prompt: instruction + "\\n\\n\\n" + text."""
    if INSTRUCTION_SEPARATOR in prompt:
        instruction, text = prompt.split(INSTRUCTION_SEPARATOR, 1)
        return instruction, text
    return None, prompt


def make_pairs(items: list[tuple[str | None, str, str, str, str, str]], seed: int
               ) -> tuple[list[Pair], int]:
    """Pairs from (instruction, input_text, answer_a, source_a, answer_b, source_b), each
    side placed by a seeded coin; (pairs, how many were left out as identical)."""
    rng = random.Random(seed)
    pairs, same = [], 0
    for instruction, text, a, src_a, b, src_b in items:
        swap = rng.random() < 0.5  # drawn for every item: the order does not depend on `same`
        if a == b:
            same += 1
            continue
        if swap:
            a, src_a, b, src_b = b, src_b, a, src_a
        pairs.append(Pair(text, a, b, instruction, src_a, src_b))
    seen: set[str] = set()
    unique = [p for p in pairs if not (p.pair_id in seen or seen.add(p.pair_id))]
    return unique, same + len(pairs) - len(unique)


def pairs_from_run(run_dir: str | Path) -> list[tuple]:
    """(instruction, text, base, "base", tuned, "tuned") of a run's bulk inference, joined
    by prompt as `rlhfkit compare` joins them."""
    from rlhfkit import compare

    run = Path(run_dir)
    files = [run / compare.UNTUNED_FILE, run / compare.TUNED_FILE]
    missing = [f.name for f in files if not f.is_file()]
    if not run.is_dir() or missing:
        raise RlhfkitError(f"{run}: no {' or '.join(missing) or 'run directory'}; "
                           "--from-run needs a run whose bulk inference has finished")
    rows, _ = compare.join_by_prompt(compare.read_results(str(files[1])),
                                     compare.read_results(str(files[0])))
    return [(*split_prompt(r["prompt"]), r["base_model"], "base", r["tuned_model"], "tuned")
            for r in rows]


def pairs_from_models(model: str, model_b: str | None, prompts: str, instruction: str | None,
                      temperature: float, seed: int, target_sequence_length: int,
                      prompt_sequence_length: int) -> list[tuple]:
    """Generate with bulk inference: two samples of `model`, or one of each model."""
    import torch

    from rlhfkit import infer
    from rlhfkit.data import load_dataset, prompt_text
    from rlhfkit.params import PipelineParams

    if model_b is None and temperature <= 0:
        raise RlhfkitError("two answers of one model need sampling: give --temperature > 0, "
                           "or a second model with --model-b")
    records = load_dataset(prompts, "prompt")
    if any("input_text" not in r for r in records):
        raise RlhfkitError(f"{prompts}: label prepare takes input_text prompts (chat "
                           "`messages` records are not supported yet)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    answers, names = [], []
    for k, (ref, s) in enumerate([(model, seed), (model_b or model, seed + 1)]):
        params = PipelineParams(instruction=instruction,
                                prompt_sequence_length=prompt_sequence_length,
                                target_sequence_length=target_sequence_length,
                                inference_temperature=temperature, seed=s)
        cfg = infer.Config(model=ref, eval_dataset=prompts, output="-", params=params)
        cfg.validate()
        if k == 0 or model_b is not None:
            tokenizer, lm = infer.load_model(cfg, device)
        texts = [prompt_text(r, instruction, tokenizer) for r in records]
        answers.append(infer.generate(lm, tokenizer, texts, cfg))
        names.append(ref if model_b else f"sample {k + 1} of {ref}")
    return [(instruction, r["input_text"], a, names[0], b, names[1])
            for r, a, b in zip(records, answers[0], answers[1], strict=True)]


def write_pairs(pairs: list[Pair], out: str | Path) -> tuple[Path, Path]:
    """pairs.jsonl (what the page shows) and its sources sidecar, each written atomically."""
    if not pairs:
        raise RlhfkitError("no pairs to write: every prompt's two answers are identical")
    out = Path(out)
    atomic_write_jsonl(out, (p.to_record() for p in pairs))
    side = sources_path(out)
    atomic_write_jsonl(side, (p.sources() for p in pairs))
    return out, side


def read_pairs(path: str | Path) -> list[dict]:
    """The records of a pairs file, checked: every line needs the PAIR_KEYS as strings."""
    from rlhfkit.data import read_lines

    problems: list[str] = []
    lines = read_lines(str(path), problems)
    out, seen = [], set()
    for where, rec in lines:
        bad = [k for k in PAIR_KEYS if not isinstance(rec.get(k), str)]
        if bad or not isinstance(rec.get("instruction", ""), str):
            problems.append(f"{where}: a pair needs strings {', '.join(bad or ['instruction'])}"
                            " (make pairs with `rlhfkit label prepare`)")
        elif rec["pair_id"] in seen:
            problems.append(f"{where}: pair_id {rec['pair_id']} appears twice")
        else:
            seen.add(rec["pair_id"])
            out.append(rec)
    if problems:
        raise DataError(problems)
    if not out:
        raise RlhfkitError(f"{path}: no pairs in this file")
    return out


def prepare(out: str, *, from_run: str | None = None, model: str | None = None,
            model_b: str | None = None, prompts: str | None = None,
            instruction: str | None = None, temperature: float = 1.0, seed: int = 0,
            target_sequence_length: int = 64, prompt_sequence_length: int = 512
            ) -> tuple[Path, Path, int]:
    """`rlhfkit label prepare`: (pairs path, sources path, pairs left out as identical)."""
    if from_run is not None:
        if model or model_b or prompts:
            raise RlhfkitError("--from-run takes the run's predictions: leave out --model, "
                               "--model-b and --prompts")
        items = pairs_from_run(from_run)
    else:
        if not model or not prompts:
            raise RlhfkitError("give --model DIR and --prompts FILE, or --from-run RUN")
        items = pairs_from_models(model, model_b, prompts, instruction, temperature, seed,
                                  target_sequence_length, prompt_sequence_length)
    pairs, dropped = make_pairs(items, seed)
    if dropped:
        log.notice(f"{dropped} prompt(s) left out: both answers are the same text")
    return (*write_pairs(pairs, out), dropped)
