"""Where the labeling page's choices go: append-only JSONL, durable line by line.

`preference.jsonl` holds the course's preference format (`input_text`, `candidate_0`,
`candidate_1`, `choice`) plus `pair_id`, `annotator` and `timestamp` (extra keys, which
`rlhfkit data validate` and `train-reward` accept). Ties and skips are not preferences
(the course's format has no ties), so they go to a sidecar, `preference.undecided.jsonl`,
with `verdict` "tie" or "skip".

Durability: every judgement is one line, written, flushed and fsynced before the caller
moves on (the page shows the next pair only after that). A process killed mid-write
leaves at most a partial last line, which the next start cuts off: at most the choice in
flight is lost. Undo rewrites the file without that line, atomically (old or new file,
never a mix). One process writes a file at a time: an OS lock (`fcntl.flock`, released by
the kernel if the holder dies) is held for the store's life; inside the process a mutex
orders the annotators' requests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.io import atomic_write_text

UNDECIDED = ("tie", "skip")
ANNOTATOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
DEFAULT_ANNOTATOR = "anonymous"


@dataclass(frozen=True)
class Judgement:
    pair_id: str
    annotator: str
    verdict: str  # "0" / "1" (the preferred candidate's index), "tie" or "skip"
    timestamp: str  # ISO 8601, UTC, milliseconds: sorts in time order

    @property
    def label(self) -> str | None:
        """What agreement is computed on: "0", "1" or "tie"; None for a skip."""
        return None if self.verdict == "skip" else self.verdict


def undecided_path(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name.removesuffix(".jsonl") + ".undecided.jsonl")


def check_annotator(name: str) -> str:
    if not ANNOTATOR_RE.fullmatch(name):
        raise RlhfkitError(f"annotator {name[:80]!r}: use 1-64 letters, digits, _ . @ - "
                           "(starting with a letter or digit)")
    return name


def annotator_order(pair_ids: list[str], annotator: str) -> list[str]:
    """Each annotator's own order of the pairs, fixed by their name (so a restart, or a
    second browser, continues the same sequence; two annotators see different orders)."""
    seed = int.from_bytes(hashlib.sha256(annotator.encode()).digest()[:8], "big")
    order = list(pair_ids)
    random.Random(seed).shuffle(order)
    return order


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (the write in flight when a process was killed)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def read_judgements(path: str | Path) -> list[Judgement]:
    """The judgements of a preference file written by the page and of its sidecar, in
    time order. A partial last line (a killed writer) is ignored."""
    path = Path(path)
    out, problems = [], []
    for p, undecided in ((path, False), (undecided_path(path), True)):
        if not p.is_file():
            continue
        lines = p.read_bytes().split(b"\n")
        complete = lines[:-1]  # after the last "\n": empty, or a partial line
        for no, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                verdict = rec["verdict"] if undecided else str(int(rec["choice"]))
                j = Judgement(str(rec["pair_id"]), str(rec["annotator"]), verdict,
                              str(rec["timestamp"]))
            except (ValueError, KeyError, TypeError):
                problems.append(f"{p}:{no}: not a line written by `rlhfkit label serve` "
                                "(needs pair_id, annotator, timestamp and "
                                f"{'verdict' if undecided else 'choice'})")
                continue
            if j.verdict not in ("0", "1", *UNDECIDED):
                problems.append(f"{p}:{no}: unknown verdict {j.verdict!r}")
                continue
            out.append(j)
    if problems:
        raise DataError(problems)
    return sorted(out, key=lambda j: j.timestamp)  # stable: a file's order breaks ties


class Store:
    """The judgements of one output file, for the pairs being labelled."""

    def __init__(self, out: str | Path, pairs: list[dict]):
        self.out, self.side = Path(out), undecided_path(out)
        self.pairs = {p["pair_id"]: p for p in pairs}
        self.mutex = threading.Lock()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.out.with_name(f".{self.out.name}.lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RlhfkitError(f"{self.out}: another `rlhfkit label serve` is writing this "
                               "file; stop it first (annotators share one server: "
                               "?annotator=NAME)") from None
        for p in (self.out, self.side):
            _repair_tail(p)
        self.judged: dict[str, dict[str, Judgement]] = {}
        self.history: dict[str, list[str]] = {}  # pair ids in the order judged: undo pops
        for j in read_judgements(self.out):
            self.judged.setdefault(j.annotator, {})[j.pair_id] = j
            self.history.setdefault(j.annotator, []).append(j.pair_id)

    def close(self) -> None:
        self._lock_file.close()  # releases the flock

    # -- reading ---------------------------------------------------------------------
    def progress(self, annotator: str) -> tuple[int, int]:
        """(pairs of this file the annotator has judged, pairs in the file)."""
        done = self.judged.get(annotator, {})
        return sum(pid in done for pid in self.pairs), len(self.pairs)

    def next_pair(self, annotator: str) -> dict | None:
        done = self.judged.get(annotator, {})
        return next((self.pairs[pid] for pid in annotator_order(list(self.pairs), annotator)
                     if pid not in done), None)

    def last(self, annotator: str) -> Judgement | None:
        history = self.history.get(annotator)
        return self.judged[annotator][history[-1]] if history else None

    # -- writing ---------------------------------------------------------------------
    def record(self, annotator: str, pair_id: str, verdict: str) -> bool:
        """Append one judgement durably; False (nothing written) if this annotator has
        already judged this pair (a double key press)."""
        pair = self.pairs[pair_id]
        with self.mutex:
            if pair_id in self.judged.get(annotator, {}):
                return False
            j = Judgement(pair_id, annotator, verdict, _now())
            last = self.last(annotator)
            if last is not None and last.timestamp >= j.timestamp:  # a clock step back
                j = Judgement(pair_id, annotator, verdict, last.timestamp)
            texts = {k: pair[k] for k in ("input_text", "candidate_0", "candidate_1")}
            if verdict in UNDECIDED:
                rec, path = {**texts, "verdict": verdict}, self.side
            else:
                rec, path = {**texts, "choice": int(verdict)}, self.out
            if pair.get("instruction"):
                rec["instruction"] = pair["instruction"]
            rec.update(pair_id=pair_id, annotator=annotator, timestamp=j.timestamp)
            _append_line(path, json.dumps(rec, ensure_ascii=False))
            self.judged.setdefault(annotator, {})[pair_id] = j
            self.history.setdefault(annotator, []).append(pair_id)
            return True

    def undo(self, annotator: str) -> Judgement | None:
        """Remove the annotator's most recent judgement (atomic rewrite); None if none."""
        with self.mutex:
            last = self.last(annotator)
            if last is None:
                return None
            path = self.side if last.verdict in UNDECIDED else self.out
            kept = []
            for raw in path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = {}
                if not (rec.get("pair_id") == last.pair_id and
                        rec.get("annotator") == annotator):
                    kept.append(raw)
            atomic_write_text(path, "".join(kept))
            del self.judged[annotator][last.pair_id]
            self.history[annotator].pop()
            return last


def _append_line(path: Path, line: str) -> None:
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:  # the file's directory entry must survive a crash too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- rlhfkit label stats -------------------------------------------------------------------

@dataclass
class AnnotatorPair:
    """Two annotators on the pairs both labelled (skips left out)."""

    a: str
    b: str
    n: int
    agreement: float | None
    kappa: float | None


def stats(path: str | Path) -> tuple[dict[str, dict[str, int]], list[AnnotatorPair]]:
    """({annotator: {"choices", "ties", "skips"}}, Cohen's kappa of every two annotators
    who labelled at least one pair in common, on the labels 0 / 1 / tie)."""
    from itertools import combinations

    from rlhfkit.compare_metrics import agreement, cohen_kappa

    path = Path(path)
    if not path.is_file() and not undecided_path(path).is_file():
        raise RlhfkitError(f"{path}: no such file")
    labels: dict[str, dict[str, str]] = {}
    counts: dict[str, dict[str, int]] = {}
    for j in read_judgements(path):
        c = counts.setdefault(j.annotator, {"choices": 0, "ties": 0, "skips": 0})
        c["choices" if j.verdict in ("0", "1") else j.verdict + "s"] += 1
        if j.label is not None:
            labels.setdefault(j.annotator, {})[j.pair_id] = j.label
    pairs = []
    for a, b in combinations(sorted(labels), 2):
        shared = sorted(set(labels[a]) & set(labels[b]))
        if shared:
            la, lb = [labels[a][p] for p in shared], [labels[b][p] for p in shared]
            pairs.append(AnnotatorPair(a, b, len(shared), agreement(la, lb)[0],
                                       cohen_kappa(la, lb)))
    return dict(sorted(counts.items())), pairs
