"""One thread decodes for the whole server: it takes the requests that are waiting (up to a batch size),
decodes them together through the batched loop of ``mmtune chat`` / ``generate``, and streams each row to its
own request as its tokens arrive.

Why one worker and a queue rather than a model call per request: a batch of B rows costs little more than
one row on the same hardware (the weights are read once per step for all of them), so concurrent clients
share steps instead of waiting in line. Rows that end early (a stop token, a stop string, their own
``max_tokens``) stop streaming at once; the batch runs until its last row ends.

Requests decode together when they sample alike: all greedy ones, or sampled ones with the same temperature
and top_p. A sampled request with its own ``seed`` decodes alone with a generator seeded like ``mmtune chat``'s,
so the same seed gives the same reply.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from mmtune.errors import MmtuneError
from mmtune.generation.decoding import decode_batch, device_of, pad_id_of, source_stop_ids, the_model
from mmtune.generation.options import GenerationOptions
from mmtune.generation.prompts import Prompt, media_inputs
from mmtune.serving.errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class Started:
    """The request's batch has its media decoded and begins decoding."""


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    reason: str
    """``stop`` (a stop token or stop string) or ``length`` (``max_tokens`` reached)."""
    completion_tokens: int


@dataclass
class Failed:
    error: ApiError


Event = Started | Delta | Finished | Failed


@dataclass
class Work:
    """A request in the queue: its encoded prompt, how to decode it, and where its events go."""

    prompt: Prompt
    options: GenerationOptions
    emit: Callable[[Event], None]
    """Called from the worker thread; must be thread-safe."""
    stop: list[str] = field(default_factory=list)
    seeded: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sampling_key(self) -> tuple:
        """Requests with equal keys may share a batch (they sample the same way)."""
        if self.options.temperature <= 0:
            return ("greedy",)
        return (self.options.temperature, self.options.top_p, id(self) if self.seeded else None)


def visible_text(text: str, stops: list[str], final: bool) -> tuple[str, bool]:
    """What of a row's decoded ``text`` may be shown now, and whether a stop string ended it.

    The reply is cut before the first stop string; while the row runs, a tail that could still become a stop
    string, an incomplete UTF-8 character and trailing spaces are held back, and leading spaces are dropped,
    so the streamed pieces add up to the non-streamed reply (stripped, as ``mmtune chat`` returns it).
    """
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if cuts:
        return text[:min(cuts)].strip(), True
    if not final:
        hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        text = text[:len(text) - hold].rstrip("\ufffd")
    return text.strip() if final else text.lstrip().rstrip(), False


class RowStream:
    """One row of a batch: decodes its tokens, streams new text, and says when the row is over."""

    def __init__(self, work: Work, tokenizer) -> None:
        self.work, self.tokenizer, self.shown, self.done = work, tokenizer, "", False
        self.tokens: list[int] = []

    def step(self, tokens: list[int], stopped: bool) -> bool:
        """Called after each step of the row; True ends it."""
        self.tokens = tokens
        budget = len(tokens) >= self.work.options.max_new_tokens
        final = stopped or budget or self.work.cancelled.is_set()
        text, hit = visible_text(self.tokenizer.decode(tokens, skip_special_tokens=True), self.work.stop, final)
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.work.emit(Delta(text[len(self.shown):]))
            self.shown = text
        if final or hit:
            self.done = True
            self.work.emit(Finished("length" if budget and not (stopped or hit) else "stop", len(tokens)))
        return self.done


class BatchingWorker:
    """The request queue and the thread that decodes it (``start`` / ``stop``)."""

    def __init__(self, source, tokenizer, *, max_batch_size: int, batch_wait_s: float) -> None:
        self.source, self.tokenizer = source, tokenizer
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.queue: queue.Queue[Work | None] = queue.Queue()
        self.pending: deque[Work] = deque()
        self.batch_sizes: list[int] = []
        """Size of every batch decoded so far (for tests and benchmarks: were requests batched?)."""
        self.thread = threading.Thread(target=self._run, name="mmtune-serve-decoder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def submit(self, work: Work) -> None:
        self.queue.put(work)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._decode(batch)
            except Exception:  # a bug, not a bad request: logged with its traceback, the clients get a 500 body
                log.exception("decoding a batch failed")
                for work in batch:
                    work.emit(Failed(ApiError(500, "the server failed while decoding; see its log",
                                              code="internal_error")))

    def _next_batch(self) -> list[Work] | None:
        """The first waiting request and those that sample like it (up to the batch size), after a short wait
        for requests sent at the same moment."""
        if not self.pending:
            first = self.queue.get()
            if first is None:
                return None
            self.pending.append(first)
            deadline = time.monotonic() + self.batch_wait_s
            while len(self.pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    more = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)
                    break
                self.pending.append(more)
        while True:  # whatever else is already waiting
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self.queue.put(None)
                break
            self.pending.append(more)
        key = self.pending[0].sampling_key()
        batch = [w for w in self.pending if w.sampling_key() == key][: self.max_batch_size]
        for work in batch:
            self.pending.remove(work)
        return [w for w in batch if not w.cancelled.is_set()] or self._next_batch()

    def _decode(self, batch: list[Work]) -> None:
        batch, media = self._with_media(batch)
        if not batch:
            return
        for work in batch:
            work.emit(Started())
        first = batch[0].options
        opts = replace(first, max_new_tokens=max(w.options.max_new_tokens for w in batch))
        device = device_of(self.source)
        seed = first.seed if batch[0].seeded else random.getrandbits(63)
        generator = torch.Generator(device=device).manual_seed(seed)
        rows = [RowStream(work, self.tokenizer) for work in batch]
        self.batch_sizes.append(len(batch))
        decode_batch(self.source, [w.prompt.ids for w in batch], opts,
                     stop_ids=source_stop_ids(self.source, self.tokenizer), pad_id=pad_id_of(self.tokenizer),
                     generator=generator, media=media, row_hook=lambda i, toks, stopped: rows[i].step(toks, stopped))
        for row in rows:  # a row the loop ended without asking it (it should not happen) still finishes
            if not row.done:
                row.step(row.tokens, True)

    def _with_media(self, batch: list[Work]) -> tuple[list[Work], dict | None]:
        """The batch's decoded media; a request whose media fails to decode gets a 400 and leaves the batch."""
        model = the_model(self.source)
        if model is None or not any(w.prompt.media for w in batch):
            return batch, None
        device = device_of(self.source)
        try:
            return batch, media_inputs(model, self.tokenizer, [m for w in batch for m in w.prompt.media], device)
        except MmtuneError:
            pass
        kept = []
        for work in batch:
            try:
                media_inputs(model, self.tokenizer, work.prompt.media)
                kept.append(work)
            except MmtuneError as exc:
                work.emit(Failed(ApiError(400, f"media does not decode: {exc}", code="invalid_media")))
        if not kept:
            return [], None
        return kept, media_inputs(model, self.tokenizer, [m for w in kept for m in w.prompt.media], device)
