"""The course's lesson 2 as commands: look at a dataset, check it, summarise it, convert it,
and ask whether two datasets' prompts come from the same distribution.

Each function returns text or data; `rlhfkit data ...` (cli.py) only prints it. The
statistics behind `compare` live in rlhfkit.data_compare.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from rlhfkit import log
from rlhfkit.data import Loaded, has_preferences, load_checked, read_lines
from rlhfkit.data_compare import compare_datasets, format_comparison, prompt_of
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_write_jsonl, expand_paths, visible

__all__ = ["compare", "compare_datasets", "convert", "dataset_stats", "format_record",
           "format_stats", "inspect_record", "render_record", "validate"]


# -- inspect ---------------------------------------------------------------------------------

def format_record(record: dict, indent: int = 0) -> str:
    """A record key by key, like the course's `print_d`: `key:K`, then `val:V` and a blank
    line; nested objects (the `inputs` of eval_results files, chat turns) are indented."""
    pad = "  " * indent
    out = []
    for key, val in record.items():
        if isinstance(val, list) and val and all(isinstance(v, dict) for v in val):
            val = {f"[{i}]": v for i, v in enumerate(val)}  # e.g. messages: one turn each
        if isinstance(val, dict):
            out.append(f"{pad}key:{key}")
            out.append(format_record(val, indent + 1))
            continue
        # Shown as text, with control characters escaped: a record is not a terminal script.
        text = visible(val if isinstance(val, str) else json.dumps(val, ensure_ascii=False))
        if pad:  # keep nested text inside its block; top-level text is printed as is
            text = "\n".join(pad + ln if ln else ln for ln in text.split("\n"))[len(pad):]
        out.append(f"{pad}key:{key}\n{pad}val:{text}\n")
    return "\n".join(out)


def inspect_record(spec: str, index: int = 0) -> str:
    """Record `index` (0 = first, -1 = last) of any JSONL file, valid or not, with a
    header saying where it is. Lines that do not parse are skipped with a warning."""
    problems: list[str] = []
    lines = [x for path in expand_paths(spec) for x in read_lines(path, problems)]
    if problems:
        log.warn(f"{len(problems)} lines could not be read (first: {problems[0]}); "
                 f"`rlhfkit data validate {spec}` lists them all")
    n = len(lines)
    if not -n <= index < n:
        valid = f"0..{n - 1} or -{n}..-1" if n else "none"
        raise RlhfkitError(f"{spec}: index {index} is out of range: {n} records "
                           f"(valid indices: {valid})")
    where, record = lines[index]
    return f"# record {index % n} of {n} ({where})\n\n" + format_record(record)


def render_record(spec: str, index: int = 0, model: str | None = None,
                  instruction: str | None = None) -> str:
    """What the model sees for record `index` of a valid dataset: the prompt as
    `data.prompt_text` renders it (with `model`'s tokenizer and chat template when given,
    else Vertex's llama-2-chat layout for chat records), then each candidate, which the
    reward model reads after the prompt's tokens."""
    from rlhfkit.data import prompt_text

    loaded = load_checked(spec)
    n = len(loaded.records)
    if not -n <= index < n:
        raise RlhfkitError(f"{spec}: index {index} is out of range: {n} records "
                           f"(valid indices: 0..{n - 1} or -{n}..-1)")
    record = loaded.records[index]
    tokenizer = None
    if model:
        from rlhfkit.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    if "input_text" in record:
        how = 'instruction + "\\n\\n\\n" + input_text' if instruction else "input_text as is"
    elif tokenizer is not None and getattr(tokenizer, "chat_template", None):
        how = f"the chat template of {model}"
    else:
        how = "Vertex's llama-2-chat layout" + (f" ({model} has no chat template)"
                                                 if model else " (no --model given)")
    prompt = prompt_text(record, instruction, tokenizer)
    size = f", {len(tokenizer(prompt)['input_ids'])} tokens" if tokenizer is not None else ""
    out = [f"# record {index % n} of {n}, rendered with {how}{size}", "",
           "== prompt ==", visible(prompt)]
    for key in ("candidate_0", "candidate_1"):
        if key in record:
            out += ["", f"== {key} (after the prompt's tokens) ==", visible(record[key])]
    return "\n".join(out)


# -- validate / convert ----------------------------------------------------------------------

def describe(loaded: Loaded) -> str:
    """`5 preference records in 1 file`, saying when an eval set also holds pairs."""
    n, files = len(loaded.records), len(loaded.paths)
    pairs = " (with preference pairs: also a reward-model eval set)" \
        if loaded.kind == "eval" and has_preferences(loaded.records) else ""
    return f"{n} {loaded.kind} records{pairs} in {files} file{'s' if files != 1 else ''}"


def validate(spec: str, kind: str | None = None) -> str:
    """`ok: ...` for a valid dataset; raises DataError listing every problem otherwise."""
    return "ok: " + describe(load_checked(spec, kind))


def convert(src: str, dst: str, kind: str | None = None) -> str:
    """Read any accepted form (course, chat, TRL), write the course format atomically."""
    if "://" in dst:
        raise RlhfkitError(f"{dst}: convert writes local files; copy the result with your "
                           "storage tool afterwards")
    loaded = load_checked(src, kind)
    atomic_write_jsonl(dst, loaded.records)
    return f"wrote {describe(loaded).split(' in ')[0]} to {dst}"


# -- stats -----------------------------------------------------------------------------------

def _distribution(values: list[int]) -> dict:
    x = np.asarray(values, dtype=float)
    return {"min": int(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
            "p90": float(np.percentile(x, 90)), "max": int(x.max())}


def checked_pairs(loaded: Loaded) -> bool:
    """Whether `loaded`'s records were validated as preference pairs: a prompt dataset
    keeps extra keys unchecked, so its `candidate_0` may be anything (even null)."""
    return loaded.kind == "preference" or (loaded.kind == "eval"
                                           and has_preferences(loaded.records))


def dataset_stats(records: list[dict], pairs: bool) -> dict:
    """Rows, word-length distributions, duplicate prompts; with `pairs` (the records are
    validated preference pairs, `checked_pairs`) also choice balance and length bias."""
    prompts = [prompt_of(r) for r in records]
    words = {"prompt": [len(p.split()) for p in prompts]}
    out: dict = {"rows": len(records), "words": words}
    if pairs:
        for key in ("candidate_0", "candidate_1"):
            words[key] = [len(r[key].split()) for r in records]
        chosen = [r[f"candidate_{r['choice']}"] for r in records]
        rejected = [r[f"candidate_{1 - r['choice']}"] for r in records]
        words["chosen"] = [len(c.split()) for c in chosen]
        words["rejected"] = [len(c.split()) for c in rejected]
        out["choice"] = dict(sorted(Counter(r["choice"] for r in records).items()))
        # Reward models pick up length easily; a strong bias here shows up as long answers
        # after RL (Singhal et al. 2023, "A long way to go").
        pairs = [(c, r) for c, r in zip(words["chosen"], words["rejected"], strict=True)
                 if c != r]
        out["chosen_longer"] = sum(c > r for c, r in pairs) / len(pairs) if pairs else None
    counts = Counter(prompts)
    out["duplicate_prompts"] = sum(1 for c in counts.values() if c > 1)
    out["duplicate_rows"] = sum(c - 1 for c in counts.values())
    out["distributions"] = {k: _distribution(v) for k, v in words.items()}
    return out


def format_stats(stats: dict, title: str):
    """A rich Table of the word-length distributions plus summary lines."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("words in")
    for col in ("min", "median", "mean", "p90", "max"):
        table.add_column(col, justify="right")
    for name, d in stats["distributions"].items():
        table.add_row(name, str(d["min"]), f"{d['median']:g}", f"{d['mean']:.1f}",
                      f"{d['p90']:.1f}", str(d["max"]))
    n = stats["rows"]
    lines = [f"rows: {n}"]
    if "choice" in stats:
        lines.append("choice: " + ", ".join(f"{k}: {v} ({v / n:.0%})"
                                            for k, v in stats["choice"].items()))
        if stats["chosen_longer"] is not None:
            lines.append(f"the chosen candidate is the longer one in "
                         f"{stats['chosen_longer']:.0%} of pairs of unequal length")
    lines.append(f"duplicate prompts: {stats['duplicate_prompts']} prompts appear more than "
                 f"once ({stats['duplicate_rows']} extra rows)")
    return table, lines


def stats(spec: str, kind: str | None = None):
    loaded = load_checked(spec, kind)
    return format_stats(dataset_stats(loaded.records, checked_pairs(loaded)),
                        f"{spec}: {describe(loaded)}")


# -- compare ---------------------------------------------------------------------------------

def compare(preference: str, prompt: str, seed: int = 0) -> tuple[dict, list[str]]:
    """Are the prompts of a preference dataset and a prompt dataset from one distribution?
    Returns the evidence (see rlhfkit.data_compare) and the lines to print."""
    a, b = load_checked(preference, "preference"), load_checked(prompt, "prompt")
    result = compare_datasets(a.records, b.records, seed=seed)
    return result, format_comparison(result, "the preference dataset", "the prompt dataset")
