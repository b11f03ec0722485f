"""`rlhfkit serve`: the real server on a free loopback port, real HTTP, good and bad.

One server (uvicorn in a thread, the app `rlhfkit serve` runs) serves a finished run on a
tiny Llama for the whole module; every request has a time-out and every loop a bound.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest_serve import make_run

from rlhfkit import serve
from rlhfkit.errors import RlhfkitError

INSTRUCTION = "Summarize briefly."
GREEDY = {"temperature": 0, "max_tokens": 6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread, stopped by close()."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start in 30 s"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def served(tiny_model_dirs, tmp_path_factory):
    run = make_run(tiny_model_dirs["llama"], tmp_path_factory.mktemp("serve") / "run",
                   instruction=INSTRUCTION)
    cfg = serve.ServeConfig(source=str(run), max_body_bytes=20_000, max_choices=8)
    return cfg, serve.load_served(cfg)


@pytest.fixture(scope="module")
def server(served):
    cfg, model = served
    running = Running(serve.build_app(model, cfg))
    yield running
    running.close()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _events(text: str) -> list:
    """The JSON objects of a server-sent-event stream, checking it ends with [DONE]."""
    lines = [ln for ln in text.split("\n\n") if ln.strip()]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]


def test_health_models_and_a_greedy_completion(client, served):
    _, model = served
    assert client.get("/health").json()["status"] == "ok"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["run"]  # the run directory's name
    r = client.post("/v1/completions", json={"model": "run", "prompt": "My roommate", **GREEDY})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 6
    # The run's instruction is prepended as in training, unless the request opts out.
    tok = model.tokenizer
    with_instr = len(tok(f"{INSTRUCTION}\n\n\nMy roommate")["input_ids"])
    assert body["usage"]["prompt_tokens"] == with_instr
    bare = client.post("/v1/completions", json={"prompt": "My roommate",
                                                "add_instruction": False, **GREEDY}).json()
    assert bare["usage"]["prompt_tokens"] == len(tok("My roommate")["input_ids"]) < with_instr
    # Greedy is deterministic.
    again = client.post("/v1/completions", json={"prompt": "My roommate", **GREEDY}).json()
    assert again["choices"][0]["text"] == choice["text"]


def test_streaming_sends_the_same_text_as_one_response(client):
    req = {"prompt": ["My roommate", "I got a job offer"], **GREEDY}
    whole = client.post("/v1/completions", json=req).json()
    r = client.post("/v1/completions", json={**req, "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    texts, reasons = {0: "", 1: ""}, {}
    for e in events[:-1]:
        (c,) = e["choices"]
        texts[c["index"]] += c["text"]
        if c["finish_reason"]:
            reasons[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert reasons == {c["index"]: c["finish_reason"] for c in whole["choices"]}
    assert events[-1]["usage"] == whole["usage"]  # stream_options.include_usage


def test_chat_completion_and_chat_stream(client):
    req = {"messages": [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": "My dog chewed the couch."}], **GREEDY}
    body = client.post("/v1/chat/completions", json=req).json()
    (choice,) = body["choices"]
    assert body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    events = _events(client.post("/v1/chat/completions", json={**req, "stream": True}).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == choice["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    # OpenAI's other spellings of the same conversation: text parts, the developer role.
    parts = {**req, "messages": [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "My dog chewed "},
                                     {"type": "text", "text": "the couch."}]}]}
    same = client.post("/v1/chat/completions", json=parts).json()
    assert same["choices"] == body["choices"] and same["usage"] == body["usage"]


def test_concurrent_clients_are_batched(client, server):
    prompts = [f"My roommate keeps eating my food, day {i}." for i in range(8)]
    solo = {p: client.post("/v1/completions", json={"prompt": p, **GREEDY}).json()
            for p in prompts[:2]}
    before = server.app.state.batcher.batches

    def ask(p):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post("/v1/completions", json={"prompt": p, **GREEDY})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    assert all(r.status_code == 200 for r in answers)
    assert server.app.state.batcher.batches - before < len(prompts)  # shared generate calls
    # Batched with others (left padding), a greedy answer is the one it gets alone.
    for p, r in zip(prompts[:2], answers[:2], strict=True):
        assert r.json()["choices"][0]["text"] == solo[p]["choices"][0]["text"]


def test_sampling_n_seed_and_stop(client):
    req = {"prompt": "My roommate", "temperature": 1.0, "max_tokens": 8, "n": 3, "seed": 7}
    a = client.post("/v1/completions", json=req).json()
    b = client.post("/v1/completions", json=req).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert a["choices"] == b["choices"]  # a seeded request repeats
    text = client.post("/v1/completions", json={"prompt": "My roommate", **GREEDY}
                       ).json()["choices"][0]["text"]
    if len(text) >= 3:  # stop at the greedy text's third character
        cut = client.post("/v1/completions", json={"prompt": "My roommate", "stop": text[2],
                                                    **GREEDY}).json()["choices"][0]
        assert cut["text"] == text[:text.index(text[2])] and cut["finish_reason"] == "stop"


BAD = [  # (body, status, words in the error message)
    ("{not json", 400, "invalid JSON"),
    ("[1, 2]", 400, "dictionary"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, 400, "greater than or equal to 1"),
    ({"prompt": "x", "max_tokens": 10**9}, 400, "at most 1024"),
    ({"prompt": "x " * 300}, 400, "maximum context length is 256"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "n": 9}, 400, "limit of 8"),
    ({"prompt": "x", "logprobs": 5}, 400, "not supported"),
    ({"prompt": "x", "max_token": 5}, 400, "max_token"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "does not exist"),
    ({}, 400, "prompt"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD)
def test_bad_completion_requests_get_openai_errors(client, body, status, words):
    content = body if isinstance(body, str) else json.dumps(body)
    r = client.post("/v1/completions", content=content,
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"


def test_bad_chat_requests_oversized_bodies_and_routes(client):
    for messages, words in (([], "messages"), ([{"role": "system", "content": "x"}], "user"),
                            ([{"role": "robot", "content": "x"}], "role"),
                            ([{"role": "user", "content": 3}], "content")):
        r = client.post("/v1/chat/completions", json={"messages": messages})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    big = json.dumps({"prompt": "x" * 30_000})
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 20000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(30):
            yield b"x" * 1000

    r = client.post("/v1/completions", content=chunks(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/v1/nothing").json()["error"]["message"] == "Not Found"
    assert client.get("/v1/completions").status_code == 405
    # After all of that the server still answers.
    assert client.post("/v1/completions", json={"prompt": "hi", **GREEDY}).status_code == 200


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(client, server):
    with httpx.Client(base_url=server.url, timeout=30) as c, c.stream(
            "POST", "/v1/completions",
            json={"prompt": "My roommate", "max_tokens": 64, "stream": True}) as r:
        next(r.iter_lines())  # read one event, then hang up
    assert client.post("/v1/completions", json={"prompt": "hi", **GREEDY}).status_code == 200


def test_a_failing_generation_is_a_500_and_the_server_lives_on(client, served):
    _, model = served
    real = model.model.generate

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    model.model.generate = broken
    try:
        r = client.post("/v1/completions", json={"prompt": "hi", **GREEDY})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert "out of memory" in r.json()["error"]["message"]
        r = client.post("/v1/completions", json={"prompt": "hi", "stream": True, **GREEDY})
        assert "out of memory" in r.text and "Traceback" not in r.text
    finally:
        model.model.generate = real
    assert client.post("/v1/completions", json={"prompt": "hi", **GREEDY}).status_code == 200


def test_api_key_is_required_when_given(served):
    cfg, model = served
    keyed = serve.ServeConfig(source=cfg.source, api_key="s3cret")
    running = Running(serve.build_app(model, keyed))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            assert c.get("/health").status_code == 200  # liveness needs no key
            r = c.post("/v1/completions", json={"prompt": "hi", **GREEDY})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = c.post("/v1/completions", json={"prompt": "hi", **GREEDY},
                       headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200
    finally:
        running.close()


def test_other_addresses_need_an_api_key():
    with pytest.raises(RlhfkitError, match="--api-key"):
        serve.ServeConfig(source="x", host="0.0.0.0").validate()
    serve.ServeConfig(source="x", host="0.0.0.0", api_key="k").validate()
    serve.ServeConfig(source="x", host="::1").validate()  # loopback
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    res = CliRunner().invoke(app, ["serve", "nowhere", "--host", "192.168.1.5"],
                             env={"RLHFKIT_API_KEY": None})
    assert res.exit_code != 0 and "reachable from other machines" in str(res.exception)


@pytest.mark.slow
def test_the_serve_command_end_to_end(tmp_path, tiny_llama_dir):
    """`rlhfkit serve RUN` as a user runs it: a subprocess, killed at the end."""
    run = make_run(tiny_llama_dir, tmp_path / "run")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve", str(run),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while True:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "no /health within 120 s"
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            r = c.post("/v1/chat/completions", json={
                "model": "run", "messages": [{"role": "user", "content": "hi"}], **GREEDY})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == \
                "assistant"
    finally:
        proc.terminate()
        proc.wait(30)
