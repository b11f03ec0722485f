"""The labeling page: `rlhfkit label serve pairs.jsonl -o preference.jsonl`.

A FastAPI app served by uvicorn on loopback. Server-rendered HTML, one small plain-JS file
for the keyboard (`1` / `2` choose, `t` tie, `s` skip, `u` undo), one CSS file; every
asset is served by the app itself, so the page works with no network. Buttons are plain
HTML forms, so the page also works with a mouse and without JavaScript.

Safety, because the page shows model output and listens on a port:
- every route (assets and unknown paths included) answers 401 without the random token
  the command prints in its one URL; tokens are compared in constant time;
- everything shown is HTML-escaped; a Content-Security-Policy allows only the app's own
  script and style (no inline script can run, nothing is fetched from elsewhere);
  no-referrer keeps the token out of Referer headers;
- request bodies are limited to MAX_BODY_BYTES (413 above); a bad request (unknown pair,
  verdict or annotator) is a 400 with one line, never a traceback.
POST-redirect-GET: a choice is appended and fsynced (label_store) before the redirect
that shows the next pair.
"""

from __future__ import annotations

import html
import secrets
import socket
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from rlhfkit import log
from rlhfkit.compare_metrics import parse_word_limit, within_limit, word_count
from rlhfkit.data import format_prompt
from rlhfkit.errors import RlhfkitError
from rlhfkit.label_store import DEFAULT_ANNOTATOR, UNDECIDED, Store, check_annotator

MAX_BODY_BYTES = 4096  # a judgement is ~60 bytes of form data
VERDICTS = ("0", "1", *UNDECIDED)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY", "Cache-Control": "no-store",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


# -- HTML -------------------------------------------------------------------------------

def _page(title: str, body: str, q: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"/assets/label.css?{_esc(q)}\">"
            f"<script src=\"/assets/label.js?{_esc(q)}\" defer></script></head>"
            f"<body>{body}</body></html>\n")


def _candidate(k: int, text: str, limit) -> str:
    words = word_count(text)
    over = limit is not None and not within_limit(words, limit)
    note = ' <span class="over">over the limit</span>' if over else ""
    return (f'<div class="cand" id="cand{k + 1}"><h2>{k + 1}</h2>'
            f'<div class="text">{_esc(text)}</div>'
            f'<p class="wc">{words} words{note}</p>'
            f'<button type="submit" name="verdict" value="{k}" id="choose{k + 1}">'
            f'<kbd>{k + 1}</kbd> this one is better</button></div>')


def render_pair(pair: dict, annotator: str, done: int, total: int, q: str,
                message: str = "") -> str:
    """The page for one pair (or, with pair None, the end page)."""
    head = (f'<header><span class="who">annotator <b>{_esc(annotator)}</b></span>'
            f'<span class="progress" id="progress">{done} of {total} done</span>'
            f'<progress value="{done}" max="{total}"></progress></header>')
    msg = f'<p class="msg" id="msg">{_esc(message)}</p>' if message else ""
    undo = (f'<form method="post" action="/undo?{_esc(q)}" class="undo">'
            '<button type="submit" id="undo"><kbd>u</kbd> undo the last choice</button></form>')
    help_ = ('<p class="help" id="help">Keys: <kbd>1</kbd> / <kbd>2</kbd> choose the better '
             'answer, <kbd>t</kbd> tie, <kbd>s</kbd> skip, <kbd>u</kbd> undo. Every choice is '
             'saved at once; close the page at any time and come back later.</p>')
    if pair is None:
        body = (f"{head}{msg}<main><h1 id=\"finished\">All {total} pairs are done. Thank you!"
                f"</h1>{undo}</main>{help_}")
        return _page("rlhfkit label: done", body, q)
    instruction = pair.get("instruction")
    limit = parse_word_limit(format_prompt(instruction, pair["input_text"])) \
        if instruction else None
    limit_note = (f'<p class="limit" id="limit">Word limit: {"less than" if limit[1] else "at most"}'
                  f" {limit[0]} words</p>") if limit else ""
    instr = (f'<p class="instruction" id="instruction"><b>Instruction:</b> {_esc(instruction)}'
             "</p>") if instruction else ""
    body = (f"{head}{msg}<main>{instr}{limit_note}"
            f'<div class="prompt" id="prompt">{_esc(pair["input_text"])}</div>'
            f'<form method="post" action="/judge?{_esc(q)}" id="judge">'
            f'<input type="hidden" name="pair_id" value="{_esc(pair["pair_id"])}">'
            f'<div class="cands">{_candidate(0, pair["candidate_0"], limit)}'
            f'{_candidate(1, pair["candidate_1"], limit)}</div>'
            '<div class="other"><button type="submit" name="verdict" value="tie" id="tie">'
            '<kbd>t</kbd> tie: equally good</button>'
            '<button type="submit" name="verdict" value="skip" id="skip">'
            "<kbd>s</kbd> skip</button></div></form>"
            f"{undo}</main>{help_}")
    return _page(f"rlhfkit label: {done} of {total}", body, q)


# -- the app ----------------------------------------------------------------------------

async def _form(request) -> dict[str, str]:
    """The url-encoded body, read with a size cap (no multipart, no JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=bool(body), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, "the body must be a url-encoded form") from None
    return {k: v[-1] for k, v in fields.items()}


def make_app(store: Store, token: str) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def annotator_of(request: Request) -> str:
        name = request.query_params.get("annotator", DEFAULT_ANNOTATOR)
        try:
            return check_annotator(name)
        except RlhfkitError as exc:
            raise BadRequest(400, str(exc)) from None

    def query(annotator: str) -> str:
        return urlencode({"token": token, "annotator": annotator})

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return PlainTextResponse(f"{exc.status}: {exc}\n", status_code=exc.status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        given = request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            response = PlainTextResponse("401: open the URL `rlhfkit label serve` printed "
                                         "(it holds the access token)\n", status_code=401)
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        annotator = annotator_of(request)
        done, total = store.progress(annotator)
        message = {"undone": "Undone: that pair is shown again.",
                   "nothing": "Nothing to undo."}.get(request.query_params.get("m", ""), "")
        return render_pair(store.next_pair(annotator), annotator, done, total,
                           query(annotator), message)

    def back(annotator: str, message: str = "") -> RedirectResponse:
        extra = f"&m={message}" if message else ""
        return RedirectResponse(f"/?{query(annotator)}{extra}", status_code=303)

    @app.post("/judge")
    async def judge(request: Request):
        annotator = annotator_of(request)
        form = await _form(request)
        pair_id, verdict = form.get("pair_id", ""), form.get("verdict", "")
        if pair_id not in store.pairs:
            raise BadRequest(400, "unknown pair_id")
        if verdict not in VERDICTS:
            raise BadRequest(400, f"verdict must be one of {', '.join(VERDICTS)}")
        store.record(annotator, pair_id, verdict)
        return back(annotator)

    @app.post("/undo")
    async def undo(request: Request):
        annotator = annotator_of(request)
        await _form(request)  # the size cap applies to every body
        return back(annotator, "undone" if store.undo(annotator) else "nothing")

    @app.get("/assets/{name}")
    def asset(name: str):
        from rlhfkit.label_assets import LABEL_CSS, LABEL_JS

        assets = {"label.js": (LABEL_JS, "text/javascript"), "label.css": (LABEL_CSS, "text/css")}
        if name not in assets:
            raise BadRequest(404, "no such asset")
        return Response(assets[name][0], media_type=assets[name][1])

    return app


def serve(pairs_path: str, out: str, host: str = "127.0.0.1", port: int = 0,
          token: str | None = None, on_ready=None) -> None:
    """Serve until interrupted. Prints one URL (with the token) on stdout."""
    import uvicorn

    from rlhfkit.label import read_pairs

    pairs = read_pairs(pairs_path)
    store = Store(out, pairs)
    token = token or secrets.token_urlsafe(24)
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        store.close()
        raise RlhfkitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warn(f"listening on {host}: anyone who can reach it and has the URL can label; "
                 "the token travels in clear text (no TLS)")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/?token={token}"
    done = sum(store.progress(a)[0] for a in store.judged)
    print(url, flush=True)
    log.info(f"{len(pairs)} pairs from {pairs_path}; choices -> {out} ({done} judgements "
             f"already there); add &annotator=NAME per person; Ctrl-C stops")
    if on_ready is not None:
        on_ready(url)
    config = uvicorn.Config(make_app(store, token), log_level="warning", access_log=False,
                            lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()
        sock.close()
