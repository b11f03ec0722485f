"""`rlhfkit serve`: the tuned model behind an OpenAI-compatible HTTP API.

Vertex's pipeline ends by deploying the tuned model to an endpoint (`deploy_model`); this
is the local endpoint. FastAPI + uvicorn, the routes OpenAI clients call:

    POST /v1/completions        prompt -> text     (stream: true for server-sent events)
    POST /v1/chat/completions   messages -> reply  (stream: true likewise)
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok"} once the model is loaded

What is served: a run directory (RUN/model/ when `deploy_model` exported it, else the
policy adapter applied to its base and merged once at start-up, as `rlhfkit infer` does),
a policy or adapter directory, or any model directory / hub id. The run's `instruction`
is prepended as in training (`data.format_prompt`) unless a request sends
`"add_instruction": false`. Requests from all clients are batched (serve_batch.py).

Every bad request gets a 4xx JSON body in OpenAI's error shape, never a traceback:
wrong types (strict: "5" is not an integer), a bad `max_tokens`, a prompt that does not
fit the model's context, bad JSON, a body over `max_body_bytes`, an unknown model name, a
missing or wrong API key. The server binds loopback unless given an API key.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import ipaddress
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request  # FastAPI reads handler annotations from module globals

from rlhfkit.errors import RlhfkitError
from rlhfkit.serve_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    install_error_handlers,
)


@dataclass
class ServeConfig:
    """How the server runs. Token counts in tokens, sizes in bytes."""

    source: str  # RUN, RUN/policy, a model directory or a hub id
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # required to bind anything but loopback
    instruction: str | None = None  # overrides the run's instruction
    model_name: str | None = None  # the id clients send as "model"; default: the source's
    max_batch_size: int = 16  # rows per generate call
    batch_wait_ms: float = 5.0  # how long the batcher waits for more rows
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_choices: int = 16  # prompts x n per request
    trust_remote_code: bool = False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise RlhfkitError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_tokens_limit", "max_body_bytes", "max_choices"):
            if getattr(self, name) <= 0:
                raise RlhfkitError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise RlhfkitError("--api-key must not be empty")
        if not is_loopback(self.host) and not self.api_key:
            raise RlhfkitError(
                f"--host {self.host} is reachable from other machines: give --api-key KEY "
                "(or RLHFKIT_API_KEY) so that only clients holding it can use the model")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from outside


@dataclass
class Served:
    """The loaded model and what requests are checked and rendered against."""

    name: str
    model: object
    tokenizer: object  # the batcher's (decoding)
    encoder: object  # a copy for the HTTP side: a fast tokenizer is not safe to share
    instruction: str | None
    context: int | None  # the model's maximum positions (prompt + completion)
    default_max_tokens: int  # the run's target_sequence_length


def _context_length(model, tokenizer) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**7 else None


def load_served(cfg: ServeConfig) -> Served:
    """Resolve the source (export.resolve_source) and load it as bulk inference does."""
    import torch

    from rlhfkit import export, infer
    from rlhfkit.params import PipelineParams

    src = export.resolve_source(cfg.source)
    icfg = infer.Config(model=src.full_dir or src.model, adapter=src.adapter,
                        eval_dataset="", output="",
                        params=PipelineParams(trust_remote_code=cfg.trust_remote_code))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = infer.load_model(icfg, device)
    name = cfg.model_name or _default_name(cfg.source)
    instruction = cfg.instruction if cfg.instruction is not None else src.meta.get("instruction")
    return Served(name=name, model=model, tokenizer=tokenizer,
                  encoder=copy.deepcopy(tokenizer), instruction=instruction or None,
                  context=_context_length(model, tokenizer),
                  default_max_tokens=int(src.meta.get("target_sequence_length") or 64))


def _default_name(source: str) -> str:
    p = Path(source).expanduser()
    if p.exists():
        p = p.resolve()
        return p.parent.name if p.name in ("policy", "model", "merged") else p.name
    return source


# -- requests -> rows ----------------------------------------------------------------------

def _encode(served: Served, text: str, max_tokens: int) -> list[int]:
    ids = served.encoder(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ApiError(400, "the prompt is empty (it has no tokens)", param="prompt")
    if served.context is not None and len(ids) + max_tokens > served.context:
        raise ApiError(400, f"This model's maximum context length is {served.context} "
                            f"tokens. However, you requested {len(ids) + max_tokens} tokens "
                            f"({len(ids)} in the prompt, {max_tokens} for the completion). "
                            "Please reduce the prompt or max_tokens.",
                       param="prompt", code="context_length_exceeded")
    return ids


def _check_model(served: Served, requested: str | None) -> None:
    if requested is not None and requested != served.name:
        raise ApiError(404, f"The model '{requested}' does not exist; this server serves "
                            f"'{served.name}' (GET /v1/models)", param="model",
                       code="model_not_found")


def _max_tokens(served: Served, cfg: ServeConfig, asked: int | None) -> int:
    n = served.default_max_tokens if asked is None else asked
    if n > cfg.max_tokens_limit:
        raise ApiError(400, f"max_tokens is {n}; this server allows at most "
                            f"{cfg.max_tokens_limit}", param="max_tokens")
    return n


def completion_prompts(served: Served, req: CompletionRequest) -> list[str]:
    from rlhfkit.data import format_prompt

    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    instruction = served.instruction if req.add_instruction else None
    return [format_prompt(instruction, p) for p in prompts]


def chat_prompt(served: Served, req: ChatRequest) -> str:
    """The conversation rendered as training renders chat records (data.prompt_text)."""
    from rlhfkit.data import prompt_text

    record = {"messages": [{"role": m.chat_role(), "content": m.text()}
                           for m in req.messages]}
    instruction = served.instruction if req.add_instruction else None
    return prompt_text(record, instruction, served.encoder)


class Pending:
    """The rows of one request and the events their worker sends back."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.events, self.rows = loop, asyncio.Queue(), []

    def emit(self, event: tuple) -> None:  # called from the batcher's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        for row in self.rows:
            row.cancelled = True


def make_rows(served: Served, cfg: ServeConfig, req, prompts: list[str]) -> Pending:
    from rlhfkit.serve_batch import Row

    if len(prompts) * req.n > cfg.max_choices:
        raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is over this server's "
                            f"limit of {cfg.max_choices} completions per request", param="n")
    max_tokens = _max_tokens(served, cfg, req.max_tokens_asked())
    pending = Pending(asyncio.get_running_loop())
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    for p, text in enumerate(prompts):
        ids = _encode(served, text, max_tokens)
        for k in range(req.n):
            pending.rows.append(Row(prompt_ids=ids, max_tokens=max_tokens, emit=pending.emit,
                                    index=p * req.n + k, temperature=req.temperature,
                                    top_p=req.top_p, seed=req.seed, stop=stop,
                                    request=id(pending)))
    return pending


async def collect(pending: Pending) -> tuple[dict[int, str], dict[int, str], int]:
    """Wait for every row: (texts, finish_reasons, completion tokens)."""
    texts = {r.index: "" for r in pending.rows}
    reasons: dict[int, str] = {}
    tokens = 0
    while len(reasons) < len(pending.rows):
        kind, index, *rest = await pending.events.get()
        if kind == "delta":
            texts[index] += rest[0]
        elif kind == "done":
            reasons[index], tokens = rest[0], tokens + rest[1]
        else:
            raise ApiError(500, rest[0], kind="server_error")
    return texts, reasons, tokens


# -- the app -------------------------------------------------------------------------------

def build_app(served: Served, cfg: ServeConfig):
    """The FastAPI app; the batcher starts and stops with it (lifespan)."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from rlhfkit.serve_api import BodyLimit
    from rlhfkit.serve_batch import Batcher

    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(served.model, served.tokenizer, cfg.max_batch_size,
                                   cfg.batch_wait_ms)
        app.state.batcher = state["batcher"]
        yield
        await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="rlhfkit serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    install_error_handlers(app)
    created = int(time.time())

    def authorized(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer "
                                "KEY'", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": created, "owned_by": "rlhfkit"}]}

    async def answer(req, prompts: list[str], chat: bool):
        _check_model(served, req.model)
        pending = make_rows(served, cfg, req, prompts)
        prompt_tokens = sum(len(r.prompt_ids) for r in pending.rows[::req.n])
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        state["batcher"].submit(pending.rows)
        if not req.stream:
            try:
                texts, reasons, tokens = await collect(pending)
            finally:
                pending.cancel()  # a client gone mid-request frees its rows
            make = chat_response if chat else completion_response
            return JSONResponse(make(rid, served.name, texts, reasons, prompt_tokens, tokens))
        return StreamingResponse(_stream(pending, rid, chat, prompt_tokens, req),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _stream(pending: Pending, rid: str, chat: bool, prompt_tokens: int, req):
        chunk = chat_chunk if chat else completion_chunk
        usage = req.stream_options.include_usage if req.stream_options else False
        done, tokens = 0, 0
        try:
            if chat:  # OpenAI's first chunk of each choice carries the role
                for r in pending.rows:
                    yield _sse(chunk(rid, served.name, r.index, {"role": "assistant",
                                                                 "content": ""}, None))
            while done < len(pending.rows):
                kind, index, *rest = await pending.events.get()
                if kind == "delta":
                    yield _sse(chunk(rid, served.name, index, rest[0], None))
                elif kind == "done":
                    done, tokens = done + 1, tokens + rest[1]
                    yield _sse(chunk(rid, served.name, index, None, rest[0]))
                else:  # headers are sent: the error travels in the stream, as OpenAI's
                    yield _sse({"error": {"message": rest[0], "type": "server_error",
                                          "param": None, "code": None}})
                    return
            if usage:
                yield _sse({**chunk(rid, served.name, 0, None, None), "choices": [],
                            "usage": {"prompt_tokens": prompt_tokens,
                                      "completion_tokens": tokens,
                                      "total_tokens": prompt_tokens + tokens}})
            yield "data: [DONE]\n\n"
        finally:
            pending.cancel()

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: CompletionRequest):
        return await answer(req, completion_prompts(served, req), False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(req: ChatRequest):
        return await answer(req, [chat_prompt(served, req)], True)

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def run(cfg: ServeConfig) -> None:
    """Load the model, print where it is served, and serve until interrupted."""
    import uvicorn

    from rlhfkit import log

    cfg.validate()
    served = load_served(cfg)
    app = build_app(served, cfg)
    log.info(f"serving {served.name!r} on http://{cfg.host}:{cfg.port}/v1 "
             f"(instruction: {served.instruction!r}; context {served.context} tokens"
             f"{'; API key required' if cfg.api_key else ''})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                timeout_graceful_shutdown=10)
