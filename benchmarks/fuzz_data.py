"""Fuzz the dataset loader and validator with many Hypothesis examples (issue 9 §2).

The property is tests/data_fuzz.py's `exercise`: a file of arbitrary bytes, arbitrary JSON,
mutated valid records or byte-flipped lines is read, validated, rendered, inspected and
summarised; the only exception allowed out is the project's own `RlhfkitError`, and no
example may take HANG_SECONDS (10 s). `make test` runs a few hundred examples; this script
runs `--examples` (10,000 by default) and counts instead of stopping at the first failure:

    .venv/bin/python benchmarks/fuzz_data.py --examples 10000 --seed 0

Prints accepted / refused / escaped / hung counts, wall time, the slowest example's time
and the load average, and the first few escapes with their input; exits 1 on any escape
or hang.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from data_fuzz import HANG_SECONDS, Hang, dataset_files, exercise, kinds  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000, help="examples to run (10,000)")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed (0)")
    ap.add_argument("--show", type=int, default=5, help="escapes to print in full (5)")
    a = ap.parse_args()

    counts: collections.Counter = collections.Counter()
    kinds_seen: collections.Counter = collections.Counter()
    escapes: list[str] = []
    slowest = 0.0
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-fuzz-"))

    @seed(a.seed)
    @settings(max_examples=a.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=dataset_files(), kind=kinds())
    def one(raw: bytes, kind: str | None) -> None:
        nonlocal slowest
        t0 = time.perf_counter()
        try:
            counts[exercise(work / "data.jsonl", raw, kind)] += 1
        except Hang:
            counts["hung"] += 1
            escapes.append(f"HANG kind={kind} raw={raw[:300]!r}")
        except Exception:  # noqa: BLE001 -- counting escapes is the point
            counts["escaped"] += 1
            escapes.append(f"kind={kind} raw={raw[:300]!r}\n{traceback.format_exc(limit=4)}")
        slowest = max(slowest, time.perf_counter() - t0)
        kinds_seen[kind or "inferred"] += 1

    t0 = time.perf_counter()
    one()
    wall = time.perf_counter() - t0
    total = sum(counts[k] for k in ("ok", "refused", "escaped", "hung"))
    print(f"examples: {total:,} (seed {a.seed}; kinds: {dict(kinds_seen)})")
    print(f"accepted: {counts['ok']:,}  refused with RlhfkitError: {counts['refused']:,}  "
          f"escaped: {counts['escaped']}  hung (> {HANG_SECONDS:g} s): {counts['hung']}")
    print(f"wall: {wall:.1f} s ({1000 * wall / max(total, 1):.2f} ms per example), "
          f"slowest example {1000 * slowest:.0f} ms; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for text in escapes[:a.show]:
        print("---\n" + text)
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
