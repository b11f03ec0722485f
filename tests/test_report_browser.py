"""The labeling page and the report in a real browser (headless Chromium via Playwright).

Uses the system's Chromium (`apt-get install chromium` on Debian; `make test` installs it
when missing). Without a browser the tests skip, except in CI (CI=true), where they fail:
a CI that cannot run them must not look green. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfkit import compare, label, label_store

VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 20_000  # per browser action; the machine may be busy
N_PAIRS = 7
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=TIMEOUT_MS)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        _no_browser(f"playwright is not installed: {exc}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        _no_browser("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001 - any launch failure means no browser
            _no_browser(f"chromium does not start: {exc}")
        yield b
        b.close()


def _no_browser(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {why}")
    pytest.skip(why)


# -- the labeling page -----------------------------------------------------------------

class Server:
    """`rlhfkit label serve` in a subprocess; its URL read from its first stdout line."""

    def __init__(self, pairs: Path, out: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhfkit", "label", "serve", str(pairs), "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # printed before the server starts listening
        assert line.startswith("http://127.0.0.1:"), line + self.proc.stderr.read()
        self.url = line.strip()

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _open(page, url: str, done: int):
    from playwright.sync_api import expect

    deadline = time.monotonic() + 30  # uvicorn may need a moment after the URL is printed
    while True:
        try:
            page.goto(url + "&annotator=ann")
            break
        except Exception:  # noqa: BLE001 - connection refused until it listens
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.2)
    expect(page.locator("#progress")).to_have_text(f"{done} of {N_PAIRS} done")


def _press(page, key: str, done_after: int) -> str | None:
    """Press a key on the current pair; return that pair's id."""
    from playwright.sync_api import expect

    pid = page.locator("input[name=pair_id]").get_attribute("value") \
        if page.locator("input[name=pair_id]").count() else None
    page.wait_for_selector("body[data-keys=ready]")  # the page's script has run
    page.keyboard.press(key)
    expect(page.locator("#progress")).to_have_text(f"{done_after} of {N_PAIRS} done")
    return pid


def test_label_by_keyboard_with_undo_reload_and_a_killed_server(browser, tmp_path):
    from playwright.sync_api import expect

    pairs = [label.Pair(f"Post {i}: my roommate <b>eats</b> my food & never pays. " * 8,
                        f"Short answer {i}.", f"A much longer answer number {i} " * 4,
                        "Summarize in less than 25 words.").to_record() for i in range(N_PAIRS)]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "preference.jsonl"
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    expected: dict[str, str] = {}  # pair_id -> verdict the file must hold

    server = Server(pairs_file, out)
    try:
        _open(page, server.url, 0)
        assert page.locator("#prompt").inner_text().startswith("Post ")
        assert "<b>" in page.locator("#prompt").inner_text()  # escaped, shown literally
        expect(page.locator("#limit")).to_have_text("Word limit: less than 25 words")
        page.screenshot(path=str(tmp_path / "label-page.png"))
        expected[_press(page, "1", 1)] = "0"
        expected[_press(page, "2", 2)] = "1"
        tied = _press(page, "t", 3)
        _press(page, "u", 2)  # undo the tie: that pair comes back
        expect(page.locator("#msg")).to_contain_text("Undone")
        assert page.locator("input[name=pair_id]").get_attribute("value") == tied
        expected[_press(page, "s", 3)] = "skip"
        page.reload()
        expect(page.locator("#progress")).to_have_text(f"3 of {N_PAIRS} done")
        expected[_press(page, "1", 4)] = "0"
    finally:
        server.kill()

    server = Server(pairs_file, out)  # a new token and port; the file continues
    try:
        _open(page, server.url, 4)
        for k, key in enumerate(("2", "1", "2"), start=5):
            expected[_press(page, key, k)] = str(int(key) - 1)
        expect(page.locator("#finished")).to_contain_text(f"All {N_PAIRS} pairs are done")
    finally:
        server.kill()

    got = {j.pair_id: j.verdict for j in label_store.read_judgements(out)}
    assert got == expected and len(got) == N_PAIRS
    prefs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(prefs) == 6 and all(p["annotator"] == "ann" for p in prefs)
    by_id = {p["pair_id"]: p for p in pairs}
    for p in prefs:  # the texts are the pair's, as the course's format wants
        assert p["candidate_0"] == by_id[p["pair_id"]]["candidate_0"]
    res = subprocess.run([sys.executable, "-m", "rlhfkit", "data", "validate", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


# -- the report --------------------------------------------------------------------------

class LengthScorer:
    def score(self, prompts, responses):
        return [-len(r.split()) / 10 for r in responses]


def _demo_run(tmp_path) -> Path:
    """A run directory on demo-world eval prompts (gold scores), long posts included."""
    from rlhfkit.data import format_prompt
    from rlhfkit.demo import world

    records = world.generate(world.Config(output_dir=str(tmp_path), preference_size=0,
                                          prompt_size=0, eval_size=12))["eval"]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    run.mkdir()
    for name, key in (("eval_results_untuned.jsonl", "candidate_0"),
                      ("eval_results_tuned.jsonl", "candidate_1")):
        (run / name).write_text("".join(json.dumps({"inputs": {
            "inputs_pretokenized": format_prompt(world.DEMO_INSTRUCTION, r["input_text"]),
            "targets_pretokenized": ""}, "prediction": r[key] + " " + "word " * 60}) + "\n"
            for r in records))
    (run / "params.json").write_text(json.dumps({"eval_dataset": str(tmp_path / "eval.jsonl")}))
    return run


def test_report_fits_1400_px(browser, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = _demo_run(tmp_path)
    with SummaryWriter(str(run / "reinforcer-logs")) as w:
        for step in range(20):
            w.add_scalar("reward", 0.1 * step, step)
            w.add_scalar("objective/kl", 0.05 * step, step)
        w.add_scalar("hparam/kl_coeff", 0.1, 0)  # one point: a value, not a chart
    label.prepare(str(tmp_path / "pairs.jsonl"), from_run=str(run))
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    store = label_store.Store(tmp_path / "human.jsonl", pairs)
    for p in pairs[:6]:
        store.record("ann", p["pair_id"], "0")
    store.close()
    cfg = compare.Config.for_run(run, human=str(tmp_path / "human.jsonl"))
    result = compare.build(cfg, scorer=LengthScorer())
    compare.write(cfg, result)
    assert {"base_reward", "base_gold", "human"} <= set(result.table.columns)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(result.report_path.as_uri())
    page.screenshot(path=str(tmp_path / "report.png"))
    for details in page.locator("table.sbs details").all()[:3]:
        details.locator("summary").click()  # open full texts: still no overflow
    overflow = page.evaluate("""() => {
        const w = window.innerWidth, bad = [];
        for (const el of document.querySelectorAll('th, td, svg, .card, .instruction')) {
            const r = el.getBoundingClientRect();
            if (r.right > w + 0.5) bad.push(el.tagName + ': ' + el.textContent.slice(0, 40));
        }
        return {bad, scroll: document.documentElement.scrollWidth, w};
    }""")
    assert overflow["bad"] == [] and overflow["scroll"] <= VIEWPORT["width"], overflow
    assert page.locator("#verdict").inner_text().startswith("Verdict:")
    assert page.locator("#legend").is_visible()
    charts = page.locator("svg[aria-label]").evaluate_all("els => els.map(e => e.ariaLabel)")
    assert "hparam/kl_coeff" not in charts and "objective/kl" in charts
    assert page.locator("table.once").inner_text().startswith("hparam/kl_coeff")
    page.screenshot(path=str(tmp_path / "report-open.png"), full_page=True)
