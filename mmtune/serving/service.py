"""A chat request from arrival to reply: mapped and encoded (``mmtune chat``'s prompt), checked against the
model's context, queued for the worker, and its events turned into OpenAI's response or stream chunks."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from mmtune.errors import MmtuneError
from mmtune.generation.decoding import as_source, encode_all, the_model
from mmtune.generation.options import GenerationOptions
from mmtune.generation.prompts import Prompt, model_media_specs
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.serving.errors import ApiError
from mmtune.serving.options import ServeOptions
from mmtune.serving.requests import ChatJob, ChatRequest, to_job
from mmtune.serving.worker import BatchingWorker, Delta, Failed, Finished, Work


def context_length(source) -> int | None:
    """The shortest context among the models that decode (None when their configs do not say)."""
    lengths = []
    for model in source.models:
        config = (model.language_model if isinstance(model, MultimodalLM) else model).config.get_text_config()
        if isinstance(config.max_position_embeddings, int):
            lengths.append(config.max_position_embeddings)
    return min(lengths, default=None)


def fit_to_context(job: ChatJob, prompt_tokens: int, limit: int | None) -> None:
    """A prompt must leave room for one token; an explicit ``max_tokens`` must fit after it (400 otherwise,
    as OpenAI and vLLM answer); the default budget shrinks to the room left."""
    if limit is None:
        return
    room = limit - prompt_tokens
    if room < 1 or (job.max_tokens_given and job.options.max_new_tokens > room):
        asked = f" + {job.options.max_new_tokens} max_tokens" if job.max_tokens_given else ""
        raise ApiError(400, f"the model's context is {limit} tokens; the prompt has {prompt_tokens}{asked}",
                       param="messages", code="context_length_exceeded")
    job.options.max_new_tokens = min(job.options.max_new_tokens, room)


class ChatService:
    """The model, its tokenizer and the worker; one per server."""

    def __init__(self, model, tokenizer, name: str, options: ServeOptions, defaults: GenerationOptions) -> None:
        self.source, self.tokenizer, self.name = as_source(model), tokenizer, name
        self.options, self.defaults = options, defaults
        model_alone = the_model(self.source)
        self.media_specs = model_media_specs(model_alone, tokenizer) if model_alone is not None else {}
        self.context = context_length(self.source)
        self.worker = BatchingWorker(self.source, tokenizer, max_batch_size=options.max_batch_size,
                                     batch_wait_s=options.batch_wait_ms / 1000)

    def prepare(self, req: ChatRequest, folder: Path) -> tuple[ChatJob, Prompt]:
        """The request as mmtune decodes it: the job and its prompt (blocking: run off the
        event loop)."""
        job = to_job(req, self.defaults, self.media_specs, folder, self.options.media_root,
                     self.options.max_media_items)
        try:
            prompt = encode_all(self.source, self.tokenizer, [job.conversation], ["request"])[0]
        except MmtuneError as exc:
            raise ApiError(400, str(exc).splitlines()[0], param="messages") from None
        fit_to_context(job, len(prompt.ids), self.context)
        return job, prompt

    async def start(self, req: ChatRequest) -> tuple[ChatJob, Work, int, asyncio.Queue]:
        """Queue the request; returns once its batch has started (its media decoded), or raises its error."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        with tempfile.TemporaryDirectory(prefix="mmtune-serve-") as tmp:  # media files live until decoded
            job, prompt = await asyncio.to_thread(self.prepare, req, Path(tmp))
            work = Work(prompt, job.options, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                        stop=job.stop, seeded=job.seeded)
            self.worker.submit(work)
            try:
                first = await events.get()
            except asyncio.CancelledError:
                work.cancelled.set()
                raise
        if isinstance(first, Failed):
            raise first.error
        return job, work, len(prompt.ids), events

    async def complete(self, req: ChatRequest) -> dict:
        """The non-streamed response body."""
        _, work, prompt_tokens, events = await self.start(req)
        text = ""
        try:
            while not isinstance(event := await events.get(), Finished):
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Delta):
                    text += event.text
        except asyncio.CancelledError:
            work.cancelled.set()
            raise
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": event.reason, "logprobs": None}],
                "usage": _usage(prompt_tokens, event.completion_tokens)}

    async def stream(self, req: ChatRequest) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content chunks, a final chunk with the finish reason (and usage
        when asked), then ``[DONE]``. Raises before the first chunk when the request fails to start."""
        job, work, prompt_tokens, events = await self.start(req)
        head = self._head("chat.completion.chunk")

        def chunk(delta: dict, finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        async def events_to_sse() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    event = await events.get()
                    if isinstance(event, Delta):
                        yield chunk({"content": event.text})
                    elif isinstance(event, Failed):
                        yield f"data: {json.dumps(event.error.body())}\n\n"
                        break
                    elif isinstance(event, Finished):
                        yield chunk({}, event.reason)
                        if job.include_usage:
                            usage = {**head, "choices": [], "usage": _usage(prompt_tokens, event.completion_tokens)}
                            yield f"data: {json.dumps(usage)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client went away: its row stops at the next step
                work.cancelled.set()

        return events_to_sse()

    def _head(self, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": self.name}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


