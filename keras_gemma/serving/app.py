"""The HTTP side: FastAPI routes over a ``Scheduler``, run by uvicorn.

FastAPI (on Starlette) and uvicorn are the most used, best kept Python
stack for this: async request handling (many open streams on one thread),
server-sent events through ``StreamingResponse``, client disconnects seen
as cancellation, and a graceful shutdown on SIGTERM with a time limit.
vLLM's and ``transformers serve``'s OpenAI servers use the same stack.

Requests are checked by hand (``protocol.py``), not by FastAPI's pydantic
models, so that every bad request gets OpenAI's error body with a message
that names the field, instead of FastAPI's 422 shape.
"""

import asyncio
import hmac
import logging
import signal
import socket
import sys
import threading
import time

from fastapi import FastAPI
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keras_gemma.chat import chat_template
from keras_gemma.serving import protocol
from keras_gemma.serving.protocol import RequestError
from keras_gemma.serving.scheduler import GenerationRequest
from keras_gemma.serving.scheduler import NotAccepting
from keras_gemma.serving.scheduler import QueueFull

logger = logging.getLogger("keras_gemma.serving")

MAX_BODY_BYTES = 4 * 2**20
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def create_app(scheduler, model_name, api_key=None, max_body_bytes=MAX_BODY_BYTES):
    """An ASGI app serving the OpenAI API from a started ``Scheduler``.

    With ``api_key``, every path but ``/health`` needs
    ``Authorization: Bearer <api_key>``.
    """
    app = FastAPI(title="keras-gemma", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    tokenizer = scheduler.tokenizer

    @app.exception_handler(RequestError)
    async def request_error(request, error):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        return JSONResponse(
            protocol.error_body(str(error.detail), code=_CODES.get(error.status_code)),
            status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.get("/health")
    async def health():
        stats = scheduler.stats()
        return {"status": "ok" if stats.pop("accepting") else "draining",
                "model": model_name, **stats}

    @app.get("/v1/models")
    async def models():
        return protocol.models_list(model_name, created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != model_name:
            raise RequestError(f"The model `{name}` does not exist; this server serves "
                               f"`{model_name}`.", param="model", code="model_not_found",
                               status=404)
        return protocol.model_card(model_name, created)

    def encode(text, param):
        try:
            return [tokenizer.bos_token_id] + tokenizer.tokenize(text)
        except (ValueError, TypeError) as error:
            raise RequestError(f"`{param}` cannot be tokenized: {error}", param=param) from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _read_json(request, max_body_bytes)
        prompts, sampling = protocol.completion_request(body, model_name, scheduler.max_batch)
        protocol.check_top_k(sampling, scheduler.max_top_k)
        prompt_ids = [encode(p, "prompt") for p in prompts]
        run = _Run(request, scheduler, protocol.new_id("cmpl"), prompt_ids, sampling, "prompt")
        if sampling.stream:
            return run.stream(_sse_events(
                run, model_name, "text_completion",
                lambda i, text: protocol.completion_chunk(run.id, model_name, i, text),
                lambda i, reason: protocol.completion_chunk(run.id, model_name, i, "", reason),
            ))
        results = await run.collect()
        return protocol.completion_response(
            run.id, model_name, [(r.text, r.finish_reason) for r in results], run.usage())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_json(request, max_body_bytes)
        messages, sampling = protocol.chat_request(body, model_name)
        protocol.check_top_k(sampling, scheduler.max_top_k)
        try:
            prompt = chat_template(messages)
        except ValueError as error:
            raise RequestError(str(error), param="messages") from None
        run = _Run(request, scheduler, protocol.new_id("chatcmpl"), [encode(prompt, "messages")],
                   sampling, "messages")
        if sampling.stream:
            return run.stream(_sse_events(
                run, model_name, "chat.completion.chunk",
                lambda i, text: protocol.chat_chunk(run.id, model_name, {"content": text}),
                lambda i, reason: protocol.chat_chunk(run.id, model_name, {}, reason),
                opening=protocol.chat_chunk(run.id, model_name,
                                            {"role": "assistant", "content": ""}),
            ))
        (result,) = await run.collect()
        return protocol.chat_response(run.id, model_name, result.text, result.finish_reason,
                                      run.usage())

    return _Gate(app, api_key)


class _Run:
    """The scheduler requests behind one HTTP request (one per prompt), their
    events on this event loop, and the request's log line."""

    def __init__(self, http_request, scheduler, response_id, prompt_ids, sampling, param):
        self.http_request = http_request
        self.scheduler = scheduler
        self.id = response_id
        self.sampling = sampling
        self.log = http_request.state.log
        self.log["id"] = response_id
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()

        def post(index, event):
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:
                pass  # the event loop is gone (shutdown)

        arguments = sampling.scheduler_arguments()
        self.requests = [
            GenerationRequest(
                ids, protocol.check_length(sampling, len(ids), scheduler.context_length, param),
                on_event=lambda event, index=index: post(index, event), **arguments,
            )
            for index, ids in enumerate(prompt_ids)
        ]
        try:
            scheduler.submit(*self.requests)
        except QueueFull as error:
            raise RequestError(str(error), code="rate_limit_exceeded", status=429,
                               type="rate_limit_error") from None
        except NotAccepting as error:
            raise RequestError(str(error), code="shutting_down", status=503,
                               type="server_error") from None

    async def events(self):
        """(index, event) until every request is done."""
        pending = len(self.requests)
        while pending:
            index, event = await self.queue.get()
            if event[0] != "text":
                pending -= 1
                if event[0] == "done" and event[1] == "cancelled":
                    event = ("error", "The request was cancelled: the server is shutting down.")
            yield index, event

    def usage(self):
        return protocol.usage(sum(r.prompt_tokens for r in self.requests),
                              sum(r.completion_tokens for r in self.requests))

    def finish(self):
        """Cancels what is still running (a client gone) and fills the log line."""
        for request in self.requests:
            self.scheduler.cancel(request)
        first = [r.time_to_first_token() for r in self.requests]
        first = [t for t in first if t is not None]
        elapsed = time.monotonic() - min(r.arrived for r in self.requests)
        completion = sum(r.completion_tokens for r in self.requests)
        self.log.update(
            prompt_tokens=sum(r.prompt_tokens for r in self.requests),
            completion_tokens=completion,
            ttft=min(first) if first else None,
            tokens_per_s=completion / elapsed if elapsed > 0 else None,
            finish=",".join(sorted({"cancelled" if r.cancelled else str(r.finish_reason)
                                    for r in self.requests})),
        )

    async def collect(self):
        """Waits for every request (cancelling them if the client leaves)."""
        errors = []

        async def drain():
            async for _, event in self.events():
                if event[0] == "error":
                    errors.append(event[1])

        waiting = asyncio.ensure_future(drain())
        gone = asyncio.ensure_future(_disconnect(self.http_request))
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waiting.done():
                waiting.cancel()
            self.finish()
        if not waiting.done() or waiting.cancelled():
            raise RequestError("The client disconnected.", status=499, code="client_closed")
        if errors:
            raise RequestError(errors[0], status=503, type="server_error")
        return self.requests

    def stream(self, chunks):
        async def body():
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                self.finish()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _sse_events(run, model_name, kind, piece, last, opening=None):
    """The run's events as server-sent events: ``piece(index, text)`` and
    ``last(index, finish_reason)`` make the chunks; ``[DONE]`` ends them."""
    if opening is not None:
        yield protocol.sse(opening)
    async for index, event in run.events():
        if event[0] == "error":
            yield protocol.sse(protocol.error_body(event[1], "server_error"))
            return
        yield protocol.sse((piece if event[0] == "text" else last)(index, event[1]))
    if run.sampling.include_usage:
        yield protocol.sse(protocol.usage_chunk(run.id, model_name, kind, run.usage()))
    yield protocol.SSE_DONE


async def _read_json(request, limit):
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"The request body is larger than {limit} bytes.", status=413,
                           code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"The request body is larger than {limit} bytes.",
                               status=413, code="request_too_large")
        chunks.append(chunk)
    return protocol.parse_json(b"".join(chunks))


async def _disconnect(request):
    """Returns when the client has closed the connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Gate:
    """ASGI middleware: the API key check, and one log line per request.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would wrap
    streamed responses and hide client disconnects from them.
    """

    def __init__(self, app, api_key):
        self.app = app
        self.api_key = None if api_key is None else api_key.encode()

    def _authorized(self, scope):
        if self.api_key is None or scope["path"] == "/health":
            return True
        header = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest takes time independent of where the strings differ.
        return hmac.compare_digest(token.strip(), self.api_key) and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        record = {}
        scope.setdefault("state", {})["log"] = record

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_noting_status)
            else:
                await JSONResponse(
                    protocol.error_body(
                        "Incorrect or missing API key: send the header "
                        "`Authorization: Bearer <key>` with the key the server was "
                        "started with.", code="invalid_api_key"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send_noting_status)
        finally:
            _log_request(scope, record, time.monotonic() - started)


def _log_request(scope, record, elapsed):
    status = record.get("status", 499)
    if scope["path"] == "/health" and status == 200:
        return  # health probes would drown the log
    parts = [record.get("id", "-"), scope["method"], scope["path"], str(status)]
    if "prompt_tokens" in record:
        ttft, speed = record["ttft"], record["tokens_per_s"]
        parts += [
            f"prompt_tokens={record['prompt_tokens']}",
            f"completion_tokens={record['completion_tokens']}",
            f"ttft={'-' if ttft is None else f'{ttft:.3f}s'}",
            f"tokens/s={'-' if speed is None else f'{speed:.1f}'}",
            f"finish={record['finish']}",
        ]
    parts.append(f"time={elapsed:.3f}s")
    logger.info("request %s", " ".join(parts))


# -- running it -------------------------------------------------------------------


def serve(scheduler, model_name, host="127.0.0.1", port=8000, api_key=None,
          drain_timeout=30.0, log=None):
    """Serves until SIGTERM or Ctrl-C, then drains for up to ``drain_timeout``
    seconds; returns when everything has stopped.

    ``scheduler`` is started here if it is not yet. ``log`` (default:
    stderr) receives one line per request.
    """
    import uvicorn

    _log_to(log)
    if scheduler._thread is None:
        scheduler.start()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"Cannot listen on {host}:{port}: {error.strerror or error}.") from None
    sock.listen(2048)
    bound = sock.getsockname()[1]

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                logger.info("draining: no new requests; finishing those in flight "
                            "(at most %gs)", drain_timeout)
                # The scheduler ends what is still running at the deadline, so
                # that those clients get an error message, not a cut connection.
                threading.Thread(target=scheduler.stop, args=(drain_timeout,),
                                 daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(scheduler, model_name, api_key=api_key), log_level="warning",
        access_log=False, lifespan="off",
        # A backstop only: the scheduler has ended every request by then.
        timeout_graceful_shutdown=drain_timeout + 10,
    )
    server = Server(config)
    display = f"[{host}]" if family == socket.AF_INET6 else host
    logger.info("serving %s on http://%s:%d (%d batch slots, context %d tokens)%s",
                model_name, display, bound, scheduler.max_batch, scheduler.context_length,
                ", API key required" if api_key else "")
    # uvicorn re-raises the signal it stopped for once it is done; SIGTERM's
    # default action would then kill us with status 143 instead of 0.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
        scheduler.stop(timeout=0)
        logger.info("stopped")
    return bound


def _log_to(stream):
    stream = stream or sys.stderr
    if not any(getattr(h, "_keras_gemma", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("keras-gemma serve: %(message)s"))
        handler._keras_gemma = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
