"""OpenAI's wire format for `rlhfkit serve`: request models, response bodies, errors.

Requests are parsed strictly (pydantic strict mode: "5" is not an integer, 1 is not
true) and unknown fields are refused, as OpenAI's API refuses them, so a typo is an error
rather than a silently ignored setting. OpenAI parameters rlhfkit does not implement
(logprobs, penalties, logit_bias, echo, suffix, best_of > 1) are accepted only at their
neutral value. One extra field: `add_instruction` (default true) prepends the run's
instruction as training did; false sends the prompt as it is.

Errors are {"error": {"message", "type", "param", "code"}}, OpenAI's shape, with 400 for
bad requests, 401 for a bad key, 404 for an unknown model or route, 413 for a body over
the limit, 500 if generation itself fails.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOP = 4  # OpenAI allows up to 4 stop sequences


class ApiError(Exception):
    """An HTTP error with OpenAI's body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = \
            status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None  # accepted, unused
    add_instruction: bool = True  # rlhfkit: prepend the run's instruction (as training)
    # OpenAI parameters accepted only at their neutral value:
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    logprobs: bool | int | None = None

    def max_tokens_asked(self) -> int | None:
        return self.max_tokens

    @model_validator(mode="after")
    def _neutral(self):
        unsupported = [name for name, neutral in (
            ("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("logit_bias", None))
            if getattr(self, name) not in (neutral, {})]
        if self.logprobs not in (None, False, 0):
            unsupported.append("logprobs")
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)}: not supported by rlhfkit serve "
                             "(leave unset)")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop: up to {MAX_STOP} non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream: true")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_only(self):
        if self.echo or self.suffix is not None or self.best_of not in (None, 1):
            raise ValueError("echo, suffix and best_of > 1: not supported by rlhfkit serve")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat turn. `content` may be OpenAI's list of text parts (joined); `developer` is
    OpenAI's newer name for `system`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content)

    def chat_role(self) -> str:
        return "system" if self.role == "developer" else self.role


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name

    def max_tokens_asked(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @model_validator(mode="after")
    def _has_user_turn(self):
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages: needs at least one message with role 'user'")
        return self


# -- responses -----------------------------------------------------------------------------

def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(rid: str, model: str, texts: dict, reasons: dict,
                        prompt_tokens: int, tokens: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [{"index": i, "text": texts[i], "logprobs": None,
                                         "finish_reason": reasons[i]} for i in sorted(texts)],
            "usage": _usage(prompt_tokens, tokens)}


def chat_response(rid: str, model: str, texts: dict, reasons: dict,
                  prompt_tokens: int, tokens: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [
                {"index": i, "message": {"role": "assistant", "content": texts[i]},
                 "logprobs": None, "finish_reason": reasons[i]} for i in sorted(texts)],
            "usage": _usage(prompt_tokens, tokens)}


def completion_chunk(rid: str, model: str, index: int, text, reason) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [{"index": index, "text": text or "",
                                         "logprobs": None, "finish_reason": reason}]}


def chat_chunk(rid: str, model: str, index: int, delta, reason) -> dict:
    if isinstance(delta, str):
        delta = {"content": delta}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": index, "delta": delta or {},
                                         "logprobs": None, "finish_reason": reason}]}


# -- errors and limits ---------------------------------------------------------------------

def _validation_message(errors: list) -> tuple[str, str | None]:
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return f"invalid JSON in the request body: {first.get('msg')}", None
    if first.get("type") == "missing" and not loc:
        return "the request body must be a JSON object", None
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app) -> None:
    """Every error the app can raise, in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}",
                                     kind="server_error").body(), status_code=500)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before anything parses
    it, whether the client declared its length or streams it in chunks."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        import json

        data = json.dumps(ApiError(413, f"request body over {self.limit} bytes").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
