"""The HTTP side: routes, the API key, request size limits, OpenAI-style errors for everything that goes wrong,
and the browser chat page at ``/`` (static files in ``static/``, no build step)."""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from mmtune.generation.options import GenerationOptions
from mmtune.serving.errors import ApiError
from mmtune.serving.options import ServeOptions
from mmtune.serving.requests import parse_request
from mmtune.serving.service import ChatService

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


def create_app(model, tokenizer, name: str, options: ServeOptions | None = None,
               defaults: GenerationOptions | None = None) -> FastAPI:
    """The server of ``model`` (a text or multimodal model, or a proxy combination) under the name ``name``."""
    options = options or ServeOptions()
    service = ChatService(model, tokenizer, name, options, defaults or GenerationOptions())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        yield
        service.worker.stop()

    app = FastAPI(title="mmtune serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, str(exc.errors()[0]["msg"])).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return ApiError(500, "internal server error; see the server's log", code="internal_error").response()

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {options.api_key}".encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    async def json_body(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_request_bytes:
            raise ApiError(413, f"request body of {declared} bytes; at most {options.max_request_bytes}",
                           code="request_too_large")
        raw = b""
        async for piece in request.stream():
            raw += piece
            if len(raw) > options.max_request_bytes:
                raise ApiError(413, f"request body over {options.max_request_bytes} bytes", code="request_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                             "owned_by": "mmtune", "media": sorted(service.media_specs)}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        req = parse_request(await json_body(request))
        if req.model != name:
            raise ApiError(404, f"model '{req.model}' is not served here (serving '{name}')", param="model",
                           code="model_not_found")
        if req.stream:
            return StreamingResponse(await service.stream(req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await service.complete(req)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
