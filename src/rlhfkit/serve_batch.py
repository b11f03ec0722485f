"""The server's generation engine: one worker thread, requests batched across clients.

HTTP handlers never call the model. They turn a request into `Row`s (one per prompt and
per choice `n`) and hand them to the `Batcher`; its thread takes every row waiting (up to
`max_batch_size`, after a few milliseconds for stragglers), groups rows that share their
sampling settings, and runs each group as ONE left-padded, KV-cached `model.generate`
call built by the bulk inferrer's own helpers (`models.left_pad`,
`infer._generation_config`): the serving path generates exactly as `rlhfkit infer` does.

Each row keeps its own limits inside the shared batch: `RowStreamer` receives every
step's tokens (transformers' streamer interface), decodes each row incrementally and sends
text deltas to its client as they are made (so streaming is real, token by token);
`RowsDone` marks a row finished in `generate` when it reached its own `max_tokens`, hit a
stop string, or its client went away, so the batch runs only as long as its longest live
row.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlhfkit import log

STOP, LENGTH = "stop", "length"  # OpenAI's finish_reason values


@dataclass
class Row:
    """One completion to generate. `emit(event)` is called from the worker thread with
    ("delta", index, text), ("done", index, finish_reason, completion_tokens) or
    ("error", index, message)."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]
    index: int = 0  # the choice index in the response
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    request: int = 0  # which request the row belongs to
    cancelled: bool = False  # set by the HTTP side when the client disconnects

    def group_key(self) -> tuple:
        """Rows sharing this key can be generated in one call: every greedy row; sampled
        rows with the same temperature and top_p. A seeded request is batched only with
        itself, so that its samples do not depend on who else was waiting."""
        if self.temperature == 0:
            return (0.0,)
        if self.seed is not None:
            return (self.temperature, self.top_p, self.seed, self.request)
        return (self.temperature, self.top_p)


@dataclass
class _RowState:
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # text already emitted
    done: bool = False


class RowStreamer:
    """transformers streamer over a batch: put() gets the prompt ids once, then one token
    per row per step. Text is decoded from all of a row's tokens each step and only the new
    suffix is sent, so multi-byte characters split across tokens come out whole."""

    def __init__(self, rows: list[Row], tokenizer, eos_ids: list[int]):
        self.rows, self.tok, self.eos = rows, tokenizer, set(eos_ids)
        self.state = [_RowState() for _ in rows]
        self.hold = max((len(s) for r in rows for s in r.stop), default=1) - 1
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompts
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            row, st = self.rows[i], self.state[i]
            if st.done:
                continue
            if row.cancelled:
                self._finish(i, STOP, emit=False)
            elif token in self.eos:
                self._finish(i, STOP)
            else:
                st.ids.append(token)
                self._advance(i, final=len(st.ids) >= row.max_tokens)

    def end(self) -> None:
        for i, st in enumerate(self.state):  # generate stopped: every live row hit a limit
            if not st.done:
                self._finish(i, LENGTH)

    def _text(self, i: int) -> str:
        # Leading spaces are the prompt's "[summary]: " cue continuing; infer strips them too.
        return self.tok.decode(self.state[i].ids, skip_special_tokens=True).lstrip()

    def _advance(self, i: int, final: bool) -> None:
        row, st = self.rows[i], self.state[i]
        text = self._text(i)
        for s in row.stop:
            cut = text.find(s, max(0, len(st.sent) - len(s)))
            if cut >= 0:
                self._send(i, text[:cut])
                self._finish(i, STOP, text=text[:cut])
                return
        if final:
            self._finish(i, LENGTH)
            return
        # Hold back what might be a stop string's start, and a half-decoded character.
        ready = text[:len(text) - self.hold] if self.hold else text
        if not ready.endswith("\ufffd"):
            self._send(i, ready)

    def _send(self, i: int, text: str) -> None:
        st = self.state[i]
        if text.startswith(st.sent) and len(text) > len(st.sent):
            self.rows[i].emit(("delta", self.rows[i].index, text[len(st.sent):]))
            st.sent = text

    def _finish(self, i: int, reason: str, text: str | None = None, emit: bool = True) -> None:
        st = self.state[i]
        st.done = True
        if emit:
            self._send(i, self._text(i) if text is None else text)
            self.rows[i].emit(("done", self.rows[i].index, reason, len(st.ids)))


class RowsDone:
    """A stopping criterion per row: finished in the streamer, at its own max_tokens, or
    abandoned by its client. generate pads such rows and stops once all are finished."""

    def __init__(self, streamer: RowStreamer, prompt_width: int):
        self.streamer, self.width = streamer, prompt_width
        self.limits = torch.tensor([r.max_tokens for r in streamer.rows])

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids.shape[1] - self.width
        done = torch.tensor([st.done or r.cancelled for st, r
                             in zip(self.streamer.state, self.streamer.rows, strict=True)])
        return (done | (new >= self.limits)).to(input_ids.device)


@torch.no_grad()
def generate_rows(model, tokenizer, rows: list[Row]) -> None:
    """Generate every row of one sampling group in one batched generate call."""
    from transformers import StoppingCriteriaList

    from rlhfkit.infer import Config, _generation_config
    from rlhfkit.models import left_pad
    from rlhfkit.params import PipelineParams

    first = rows[0]
    cfg = Config(model="", eval_dataset="", output="", params=PipelineParams(
        inference_temperature=first.temperature,
        target_sequence_length=max(r.max_tokens for r in rows)))
    gen_cfg = _generation_config(tokenizer, model, cfg)
    if first.temperature > 0 and first.top_p < 1:
        gen_cfg.top_p = first.top_p
    enc = left_pad([r.prompt_ids for r in rows], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    streamer = RowStreamer(rows, tokenizer, list(gen_cfg.eos_token_id or []))
    # Decoder-only: new tokens follow the prompt; encoder-decoder: the decoder start token.
    width = 1 if getattr(model.config, "is_encoder_decoder", False) else enc["input_ids"].shape[1]
    stopping = StoppingCriteriaList([RowsDone(streamer, width)])
    if first.temperature > 0:  # a seeded request repeats; an unseeded one does not
        torch.manual_seed(first.seed if first.seed is not None else random.getrandbits(63))
    model.generate(**enc, generation_config=gen_cfg, streamer=streamer,
                   stopping_criteria=stopping)
    streamer.end()


class Batcher:
    """Collects rows from every client and feeds them to the model in batches."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, wait_ms: float = 5.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.wait_s = max_batch_size, wait_ms / 1000
        self.queue: queue.Queue[Row | None] = queue.Queue()
        self.batches = 0  # generate calls made (the tests check that batching happens)
        self.thread = threading.Thread(target=self._loop, name="rlhfkit-batcher", daemon=True)
        self.thread.start()

    def submit(self, rows: list[Row]) -> None:
        for row in rows:
            self.queue.put(row)

    def close(self, timeout: float = 30.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout)

    def _collect(self) -> list[Row] | None:
        first = self.queue.get()
        if first is None:
            return None
        rows, deadline = [first], time.monotonic() + self.wait_s
        while len(rows) < self.max_batch_size:
            try:
                row = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if row is None:
                self.queue.put(None)  # stop after this batch
                break
            rows.append(row)
        return rows

    def _loop(self) -> None:
        while (rows := self._collect()) is not None:
            groups: dict[tuple, list[Row]] = {}
            for row in rows:
                if not row.cancelled:
                    groups.setdefault(row.group_key(), []).append(row)
            for group in groups.values():
                self.batches += 1
                try:
                    generate_rows(self.model, self.tokenizer, group)
                except Exception as exc:  # a failed batch answers its clients; the server lives
                    log.notice(f"generation failed: {traceback.format_exc(limit=3)}")
                    for row in group:
                        row.emit(("error", row.index, f"generation failed: {exc}"))
