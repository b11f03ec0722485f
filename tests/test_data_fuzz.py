"""Property-based fuzzing of the dataset loader and validator (issue 9 §2): any bytes in,
records or the project's one-line errors out, never another exception and never a hang.
A few hundred examples here; `benchmarks/fuzz_data.py` runs 10,000+ and reports figures."""

from __future__ import annotations

import pytest
from data_fuzz import SEEDS, dataset_files, exercise, kinds, mutated_records
from hypothesis import HealthCheck, given, settings

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=dataset_files(), kind=kinds())
def test_any_file_is_read_or_refused_in_one_line(tmp_path, raw, kind):
    exercise(tmp_path / "data.jsonl", raw, kind)


@settings(FUZZ, max_examples=100)
@given(rec=mutated_records())
def test_mutated_records_in_a_json_array(tmp_path, rec):
    import json
    exercise(tmp_path / "data.json", json.dumps([rec]).encode(), None)


@pytest.mark.parametrize("i", range(len(SEEDS)))
def test_every_seed_record_is_valid(tmp_path, i):
    # The mutations start from valid records: if a seed were refused, the fuzz would only
    # ever explore the refusal path.
    import json
    assert exercise(tmp_path / "seed.jsonl", json.dumps(SEEDS[i]).encode(), None) == "ok"


def test_stats_of_a_prompt_file_with_unchecked_pair_fields(tmp_path):
    # Found by benchmarks/fuzz_data.py: a prompt dataset keeps extra keys unchecked, and
    # `rlhfkit data stats --kind prompt` then split a null candidate_0 (AttributeError).
    import json
    raw = json.dumps({"input_text": "A post", "candidate_0": None, "candidate_1": "two",
                      "choice": 1}).encode()
    assert exercise(tmp_path / "p.jsonl", raw, "prompt") == "ok"
