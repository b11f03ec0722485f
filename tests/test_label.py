"""`rlhfkit label`: pairs, the page (through FastAPI's test client), the output file,
agreement statistics, and the route to a reward model trained on the labels."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rlhfkit import label, label_store
from rlhfkit.cli import app
from rlhfkit.compare_metrics import cohen_kappa
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.label_server import MAX_BODY_BYTES, make_app, render_pair

TOKEN = "test-token"


def make_run(course_samples, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("eval_results_tuned.jsonl", "eval_results_untuned.jsonl"):
        shutil.copy(course_samples / name, run / name)
    return run


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- pairs -----------------------------------------------------------------------------

def test_prepare_from_run_randomises_sides_and_keeps_sources_apart(course_samples, tmp_path):
    run = make_run(course_samples, tmp_path)
    res = CliRunner().invoke(app, ["label", "prepare", "--from-run", str(run),
                                   "-o", str(tmp_path / "pairs.jsonl"), "--seed", "3"])
    assert res.exit_code == 0, res.output
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    sources = {s["pair_id"]: s for s in read_jsonl(tmp_path / "pairs.sources.jsonl")}
    assert len(pairs) == 5 and set(sources) == {p["pair_id"] for p in pairs}
    tuned = {r["inputs"]["inputs_pretokenized"]: r["prediction"] for r in
             read_jsonl(run / "eval_results_tuned.jsonl")}
    for p in pairs:
        assert set(p) == {"pair_id", "input_text", "candidate_0", "candidate_1", "instruction"}
        assert p["instruction"] == "Summarize in less than 50 words."
        s = sources[p["pair_id"]]
        k = [s["source_0"], s["source_1"]].index("tuned")
        assert p[f"candidate_{k}"] == tuned[f"{p['instruction']}\n\n\n{p['input_text']}"]
        assert "source" not in json.dumps(p)  # the labeller's file names no source
    # the coin really flips
    sides = [sources[p["pair_id"]]["source_0"] for p in pairs]
    assert {"base", "tuned"} == set(sides)


def test_make_pairs_drops_identical_answers_and_is_seeded():
    items = [(None, f"post {i}", f"a{i}", "A", f"b{i}" if i else "a0", "B") for i in range(40)]
    pairs, dropped = label.make_pairs(items, seed=0)
    assert dropped == 1 and len(pairs) == 39
    again, _ = label.make_pairs(items, seed=0)
    assert [p.to_record() for p in pairs] == [p.to_record() for p in again]
    first = sum(p.source_0 == "A" for p in pairs)
    assert 10 < first < 29  # a fair coin over 39 pairs (P(outside) < 0.01)


def test_prepare_needs_a_source_and_sampling_for_one_model(tmp_path):
    with pytest.raises(RlhfkitError, match="--from-run RUN"):
        label.prepare(str(tmp_path / "p.jsonl"))
    with pytest.raises(RlhfkitError, match="--temperature > 0"):
        label.prepare(str(tmp_path / "p.jsonl"), model="m", prompts="p", temperature=0)


def test_prepare_with_a_model_generates_with_bulk_inference(tmp_path, tiny_llama_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input_text": f"my roommate eats my food {i}"})
                               + "\n" for i in range(3)))
    out, side, _ = label.prepare(str(tmp_path / "pairs.jsonl"), model=str(tiny_llama_dir),
                                 prompts=str(prompts), instruction="Summarize",
                                 target_sequence_length=6)
    pairs, sources = read_jsonl(out), read_jsonl(side)
    assert 1 <= len(pairs) <= 3  # identical samples (possible on a tiny model) are left out
    assert all(p["candidate_0"] != p["candidate_1"] for p in pairs)
    assert {s["source_0"] for s in sources} <= {f"sample {k} of {tiny_llama_dir}" for k in (1, 2)}


def test_read_pairs_names_path_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"pair_id": "a", "input_text": "x", "candidate_0": "y"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: a pair needs strings candidate_1"):
        label.read_pairs(bad)


# -- the page --------------------------------------------------------------------------

def _pairs(n=3):
    return [label.Pair(f"post <b>{i}</b> & more", f"first {i}", f"second answer {i}",
                       "Summarize in less than 3 words.").to_record() for i in range(n)]


@pytest.fixture
def served(tmp_path):
    pairs = _pairs()
    store = label_store.Store(tmp_path / "preference.jsonl", pairs)
    client = TestClient(make_app(store, TOKEN), follow_redirects=False)
    yield client, store, pairs, tmp_path / "preference.jsonl"
    store.close()


def _judge(client, pair_id, verdict, annotator="ann"):
    return client.post(f"/judge?token={TOKEN}&annotator={annotator}",
                       content=f"pair_id={pair_id}&verdict={verdict}",
                       headers={"content-type": "application/x-www-form-urlencoded"})


def _current(client, annotator="ann"):
    page = client.get(f"/?token={TOKEN}&annotator={annotator}").text
    start = page.index('name="pair_id" value="') + len('name="pair_id" value="')
    return page[start:page.index('"', start)], page


def test_every_route_needs_the_token(served):
    client, *_ = served
    for path in ("/", "/assets/label.js", "/nope", "/?token=wrong"):
        assert client.get(path).status_code == 401, path
    assert client.post("/judge", content="pair_id=x&verdict=0").status_code == 401
    assert client.post("/undo?token=nope").status_code == 401
    r = client.get(f"/assets/label.js?token={TOKEN}")
    assert r.status_code == 200 and "keydown" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_page_shows_escaped_texts_word_counts_and_limit(served):
    client, store, pairs, _ = served
    pid, page = _current(client)
    pair = store.pairs[pid]
    assert "post &lt;b&gt;" in page and "<b>0</b>" not in page and "&amp; more" in page
    assert "Word limit: less than 3 words" in page
    assert "2 words</p>" in page and "3 words <span class=\"over\">over the limit" in page
    assert "0 of 3 done" in page and "<kbd>u</kbd> undo" in page
    assert pair["candidate_0"] in page and "<script>" not in page  # no inline script


def test_choices_ties_skips_undo_and_restart(served):
    client, store, pairs, out = served
    order = []
    for verdict in ("1", "tie", "0"):
        pid, _ = _current(client)
        order.append(pid)
        r = _judge(client, pid, verdict)
        assert r.status_code == 303
    assert _judge(client, order[0], "0").status_code == 303  # a double press: ignored
    prefs = read_jsonl(out)
    assert [(p["pair_id"], p["choice"]) for p in prefs] == [(order[0], 1), (order[2], 0)]
    assert {"input_text", "candidate_0", "candidate_1", "annotator", "timestamp"} <= set(prefs[0])
    undecided = read_jsonl(label_store.undecided_path(out))
    assert [(u["pair_id"], u["verdict"]) for u in undecided] == [(order[1], "tie")]
    assert "All 3 pairs are done" in _current_page(client)
    # undo removes the last choice (pair 3) from the file and shows it again
    r = client.post(f"/undo?token={TOKEN}&annotator=ann")
    assert r.status_code == 303
    assert [p["pair_id"] for p in read_jsonl(out)] == [order[0]]
    pid, page = _current(client, "ann")
    assert pid == order[2] and "2 of 3 done" in page
    # a restarted server (a new Store on the same file) continues there
    store.close()
    again = label_store.Store(out, pairs)
    try:
        assert again.next_pair("ann")["pair_id"] == order[2]
        assert again.progress("ann") == (2, 3)
        assert again.progress("bob") == (0, 3)
        assert again.undo("ann").pair_id == order[1]  # the tie, from the sidecar
        assert read_jsonl(label_store.undecided_path(out)) == []
    finally:
        again.close()


def _current_page(client, annotator="ann"):
    return client.get(f"/?token={TOKEN}&annotator={annotator}").text


def test_bad_requests_are_4xx_with_one_line(served):
    client, store, pairs, out = served
    pid, _ = _current(client)
    assert _judge(client, "no-such-pair", "0").status_code == 400
    r = _judge(client, pid, "3")
    assert r.status_code == 400 and r.text.startswith("400: verdict must be one of")
    assert _judge(client, pid, "0", annotator="<script>").status_code == 400
    big = "pair_id=" + "x" * MAX_BODY_BYTES
    r = client.post(f"/judge?token={TOKEN}", content=big,
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = client.post(f"/judge?token={TOKEN}", content=b"\xff\xfe",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert not out.exists()  # nothing was written


def test_annotators_have_their_own_order_and_a_second_server_is_refused(served):
    client, store, pairs, out = served
    orders = {a: label_store.annotator_order([p["pair_id"] for p in _pairs(12)], a)
              for a in ("ann", "bob")}
    assert orders["ann"] != orders["bob"] and sorted(orders["ann"]) == sorted(orders["bob"])
    with pytest.raises(RlhfkitError, match="another `rlhfkit label serve`"):
        label_store.Store(out, pairs)


def test_a_partial_last_line_is_cut_on_restart(tmp_path):
    pairs = _pairs(2)
    out = tmp_path / "preference.jsonl"
    store = label_store.Store(out, pairs)
    store.record("ann", pairs[0]["pair_id"], "1")
    store.close()
    with open(out, "a") as f:
        f.write('{"input_text": "half a li')  # killed mid-write
    assert len(label_store.read_judgements(out)) == 1
    store = label_store.Store(out, pairs)
    store.record("ann", pairs[1]["pair_id"], "0")
    store.close()
    assert [p["choice"] for p in read_jsonl(out)] == [1, 0]


def test_render_escapes_the_annotator_and_the_end_page():
    page = render_pair(None, "a&b", 2, 2, "token=x")
    assert "All 2 pairs are done" in page and "a&amp;b" in page


# -- statistics ------------------------------------------------------------------------

def test_cohen_kappa_hand_checked():
    # 10 items, A: 1111100000 B: 1111000001 -> p_o = 8/10; shares A 1: .5, B 1: .5
    # p_e = .5*.5 + .5*.5 = .5 -> kappa = (.8 - .5) / (1 - .5) = 0.6
    a, b = list("1111100000"), list("1111000001")
    assert cohen_kappa(a, b) == pytest.approx(0.6)
    # three labels: A = 0 0 1 tie, B = 0 1 1 tie -> p_o = 3/4;
    # p_e = (2/4)(1/4) + (1/4)(2/4) + (1/4)(1/4) = 5/16 -> kappa = (12/16 - 5/16) / (11/16)
    assert cohen_kappa(["0", "0", "1", "tie"], ["0", "1", "1", "tie"]) == pytest.approx(7 / 11)
    assert cohen_kappa(["1", "1"], ["1", "1"]) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None


def test_stats_counts_and_kappa_on_doubly_labelled_pairs(tmp_path):
    pairs = _pairs(4)
    ids = [p["pair_id"] for p in pairs]
    out = tmp_path / "preference.jsonl"
    store = label_store.Store(out, pairs)
    for pid, v in zip(ids, ["0", "0", "1", "skip"], strict=True):
        store.record("ann", pid, v)
    for pid, v in zip(ids[:3], ["0", "1", "1"], strict=True):
        store.record("bob", pid, v)
    store.record("cat", ids[3], "tie")
    store.close()
    counts, agree = label_store.stats(out)
    assert counts == {"ann": {"choices": 3, "ties": 0, "skips": 1},
                      "bob": {"choices": 3, "ties": 0, "skips": 0},
                      "cat": {"choices": 0, "ties": 1, "skips": 0}}
    # ann 0 0 1, bob 0 1 1: p_o 2/3, p_e (2/3)(1/3) + (1/3)(2/3) = 4/9 -> (2/3-4/9)/(5/9)
    assert [(p.a, p.b, p.n) for p in agree] == [("ann", "bob", 3)]
    assert agree[0].kappa == pytest.approx(0.4) and agree[0].agreement == pytest.approx(2 / 3)
    res = CliRunner().invoke(app, ["label", "stats", str(out)])
    assert res.exit_code == 0, res.output
    assert "ann vs bob: 3 pairs labelled by both, agreement 0.667, Cohen's kappa 0.400" in \
        res.stdout
    # the course's tools accept the file as it is
    res = CliRunner().invoke(app, ["data", "validate", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_train_reward_on_labels_from_the_page(tmp_path, tiny_llama_dir):
    pairs = [label.Pair(f"post {i}: my roommate eats my food [summary]: ", "a short summary",
                        "no no no this goes on and on", None).to_record() for i in range(16)]
    out = tmp_path / "preference.jsonl"
    store = label_store.Store(out, pairs)
    for i, p in enumerate(pairs):
        store.record("ann", p["pair_id"], str(i % 2))
    store.close()
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "preference_dataset": str(out), "prompt_dataset": str(out),
        "large_model_reference": str(tiny_llama_dir), "prompt_sequence_length": 24,
        "target_sequence_length": 12, "reward_model_train_steps": 2, "batch_size": 8}))
    res = CliRunner().invoke(app, ["train-reward", str(params), "--output-dir",
                                   str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "reward_model" / "DONE").is_file()


def test_serve_cli_prints_one_url_and_refuses_a_second_writer(tmp_path):
    import subprocess
    import sys
    import time

    import httpx

    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in _pairs()))
    out = tmp_path / "preference.jsonl"
    cmd = [sys.executable, "-m", "rlhfkit", "label", "serve", str(pairs_file), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(url + "&annotator=ann", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no answer within 30 s"
                time.sleep(0.1)
        assert r.status_code == 200 and "0 of 3 done" in r.text
        assert httpx.get(url.split("?")[0], timeout=5).status_code == 401
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "another `rlhfkit label serve`" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)
