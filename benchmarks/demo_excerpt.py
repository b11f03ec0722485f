"""The README's "What `make demo` prints" excerpt, made from a real run's outputs.

    python benchmarks/demo_excerpt.py demo/run            # print the excerpt
    python benchmarks/demo_excerpt.py demo/run --write    # replace it in README.md

The excerpt is RUN/summary.txt (written by the pipeline as it prints its summary) plus the
demo model's build figures from its demo_model.json, in a fenced block. `--write` replaces
the text between the markers

    <!-- demo-excerpt:start -->
    <!-- demo-excerpt:end -->

in README.md, so the figures there always come from a run and never from a hand edit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

START, END = "<!-- demo-excerpt:start -->", "<!-- demo-excerpt:end -->"
ROOT = Path(__file__).resolve().parents[1]


def excerpt(run: Path, model: Path | None) -> str:
    summary = run / "summary.txt"
    if not summary.is_file():
        sys.exit(f"{summary}: not found; run `make demo` (or `rlhfkit run ... --output-dir "
                 f"{run}`) first")
    lines = [f"<!-- made by benchmarks/demo_excerpt.py from {run}/summary.txt -->", "```",
             summary.read_text(encoding="utf-8").rstrip("\n"), "```"]
    info = model / "demo_model.json" if model else None
    if info is not None and info.is_file():
        m = json.loads(info.read_text(encoding="utf-8"))
        lines += ["", f"Demo model: {m['parameters']:,} parameters, {m['steps']} pretraining "
                  f"steps, seed {m['seed']}, final loss {m['final_loss']}, gold score of "
                  f"greedy summaries {m['gold_greedy']} (built in {m['train_seconds']} s "
                  f"with {m['threads']} threads)."]
    return "\n".join(lines)


def write_readme(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        sys.exit(f"{readme}: no {START} ... {END} markers around the demo excerpt")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content),
                      encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", default=ROOT / "demo" / "run")
    p.add_argument("--model", type=Path, default=ROOT / "demo" / "model",
                   help="the demo model directory (its demo_model.json)")
    p.add_argument("--write", action="store_true", help="replace the excerpt in README.md")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args()
    text = excerpt(args.run, args.model)
    if args.write:
        write_readme(args.readme, text)
        print(f"updated {args.readme}")
    else:
        print(text)


if __name__ == "__main__":
    main()
