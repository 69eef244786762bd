"""truss's routes over the model: predict (preprocess → predict under `predict_concurrency` → postprocess),
readiness fed by is_healthy(), liveness, and the OpenAI-style methods; streaming of generators, gathering
them for `Accept: application/json`, and the error answers truss gives (400, 404, 412, 500, 503)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from .http11 import Connection, Request
from .log import Logger, describe_exception
from .truss_model import LoadedModel, Method, ModelDefinitionError
from .websocket import WebSocket, WebSocketDisconnect, accept_key, is_upgrade, valid_key

PREDICT = "/v1/models/model:predict"
READINESS = "/v1/models/model"
LIVENESS = "/"
# What the ingress's /websocket reaches (docs/realtime.md), as the JavaScript host.
WEBSOCKET = "/v1/websocket"
# OpenAI-style routes truss serves when the class has the method.
OPENAI_ROUTES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
HEALTH_CHECK_TIMEOUT = 10.0
NOT_READY = "Model with name model is not ready."
USER_ERROR = "Internal Server Error"
STREAM_WITH_POSTPROCESS = (
    "ModelDefinitionError: If the predict function returns a generator (streaming), you cannot use "
    "postprocessing. Include all processing in the predict method."
)
CONTENT_TYPES = {
    "text": b"text/plain; charset=utf-8",
    "bytes": b"application/octet-stream",
    "ndjson": b"application/x-ndjson",
}
EVENT_STREAM = b"text/event-stream"
_END = object()


class QueueFull(Exception):
    pass


def _resolve(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Workers:
    """Threads for the model's sync methods, as truss runs them. A call crosses to a thread and back with
    one queue put and one call_soon_threadsafe: about half the CPU of loop.run_in_executor (measured:
    14 against 28 µs per round trip), which a sync predict pays on every request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._size = size
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        future = self._loop.create_future()
        self._queue.put((future, fn, args))
        if self._idle == 0 and self._threads < self._size:
            with self._lock:
                if self._threads < self._size:
                    self._threads += 1
                    threading.Thread(target=self._work, name=f"model-{self._threads}", daemon=True).start()
        return future

    def _work(self) -> None:
        call_soon = self._loop.call_soon_threadsafe
        while True:
            with self._lock:
                self._idle += 1
            future, fn, args = self._queue.get()
            with self._lock:
                self._idle -= 1
            try:
                result = fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting request as is
                call_soon(_resolve, future, False, err)
            else:
                call_soon(_resolve, future, True, result)


class Limiter:
    """`predict_concurrency` slots around predict, and at most `max_queued` callers waiting for one."""

    def __init__(self, limit: int, max_queued: int) -> None:
        self.limit = limit
        self.max_queued = max_queued
        self.running = 0
        self._queue: Deque[asyncio.Future] = collections.deque()

    async def acquire(self, gone: asyncio.Future) -> bool:
        """True with a slot held; False when the client left while queued. Raises QueueFull."""
        if self.running < self.limit and not self._queue:
            self.running += 1
            return True
        if len(self._queue) >= self.max_queued:
            raise QueueFull()
        slot = asyncio.get_running_loop().create_future()
        self._queue.append(slot)
        await asyncio.wait((slot, gone), return_when=asyncio.FIRST_COMPLETED)
        if slot.done():
            if gone.done():
                self.release()
                return False
            return True
        slot.cancel()
        try:
            self._queue.remove(slot)
        except ValueError:
            pass
        return False

    def release(self) -> None:
        # A freed slot passes straight to the next waiter, so `running` counts it still.
        while self._queue:
            slot = self._queue.popleft()
            if not slot.done():
                slot.set_result(True)
                return
        self.running -= 1

    @property
    def queued(self) -> int:
        return len(self._queue)


def encode_json(value: Any) -> bytes:
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json_default(value: Any) -> Any:
    # What truss's server serialises besides plain JSON: pydantic models and numpy arrays or scalars.
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    as_dict = getattr(value, "dict", None)
    if callable(as_dict) and not isinstance(value, type):
        return as_dict()
    to_list = getattr(value, "tolist", None)
    if callable(to_list):
        return to_list()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def chunk_format(first: Any) -> str:
    if isinstance(first, str):
        return "text"
    if isinstance(first, (bytes, bytearray, memoryview)):
        return "bytes"
    return "ndjson"


def encode_chunk(chunk: Any) -> bytes:
    """Strings and bytes go out as they are; any other chunk is one JSON line (as the JavaScript host)."""
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    return encode_json(chunk) + b"\n"


def encode_event(chunk: Any) -> Tuple[bytes, bool]:
    """One Server-Sent Event (WHATWG HTML §9.2). Text a model already framed as events passes through;
    other text and JSON values become `data:` events. Returns the bytes and whether the host framed them."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        text = bytes(chunk).decode("utf-8", "replace")
    elif isinstance(chunk, str):
        text = chunk
    else:
        return b"data: " + encode_json(chunk) + b"\n\n", True
    if text.startswith(("data:", "event:", "id:", "retry:", ":")):
        return text.encode("utf-8"), False
    lines = text.split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode("utf-8"), True


def gather_text(chunks: list) -> str:
    """truss joins a gathered stream into one string."""
    parts = []
    for chunk in chunks:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            parts.append(bytes(chunk).decode("utf-8", "replace"))
        elif isinstance(chunk, str):
            parts.append(chunk)
        else:
            parts.append(json.dumps(chunk, default=_json_default))
    return "".join(parts)


def should_gather(request: Request) -> bool:
    # truss: the OpenAI SDK sends `Accept: application/json` while it expects a stream.
    if "openai" in request.headers.get("user-agent", "").lower():
        return False
    return request.headers.get("accept") == "application/json"


def _last_line(err: BaseException) -> str:
    return describe_exception(err)["message"]


class Host:
    """The model's state and the routes; one per process."""

    def __init__(
        self,
        logger: Logger,
        predict_concurrency: int,
        max_queued: int,
        on_finished: Callable[[int], None],
    ) -> None:
        self.logger = logger
        self.state = "loading"
        self.model: Optional[LoadedModel] = None
        self.limiter = Limiter(predict_concurrency, max_queued)
        self._pool_size = max(32, predict_concurrency + 16)
        self.workers: Optional[Workers] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._on_finished = on_finished

    # -- loading -----------------------------------------------------------------------------------------

    def start_loading(self, load: Callable[["Host"], LoadedModel]) -> None:
        """Runs `load` (import, construct, setup_environment, load()) in its own thread; readiness says
        503 meanwhile. A failure ends the process with exit code 3."""
        self.loop = asyncio.get_running_loop()
        self.workers = Workers(self.loop, self._pool_size)
        started = time.monotonic()

        def run() -> None:
            try:
                model = load(self)
            except BaseException as err:  # noqa: BLE001 - every failure of the model's load is reported
                self.loop.call_soon_threadsafe(self._load_failed, err)
                return
            self.loop.call_soon_threadsafe(self._loaded, model, started)

        threading.Thread(target=run, name="model-load", daemon=True).start()

    def run_sync(self, method: Method, *args: Any) -> Any:
        """Calls a method from a worker thread: a coroutine (async def, or returned by a plain function)
        runs on the event loop and this thread waits for it."""
        result = method.fn(*args)
        if inspect.isawaitable(result):
            return asyncio.run_coroutine_threadsafe(_awaited(result), self.loop).result()
        return result

    def _loaded(self, model: LoadedModel, started: float) -> None:
        if self.state != "loading":
            return
        self.model = model
        self.state = "ready"
        self.logger.info("model ready", load_ms=round((time.monotonic() - started) * 1000))

    def _load_failed(self, err: BaseException) -> None:
        if self.state != "loading":
            return
        self.state = "failed"
        self.logger.error("model load failed", err=load_failure(err))
        self._on_finished(3)

    # -- routes ------------------------------------------------------------------------------------------

    async def handle(self, request: Request, conn: Connection) -> None:
        path = request.path
        method = request.method
        if path == PREDICT:
            if method != "POST":
                return _not_allowed(conn, "POST")
            return await self.predict(request, conn)
        if path == READINESS:
            if method not in ("GET", "HEAD"):
                return _not_allowed(conn, "GET, HEAD")
            return await self.readiness(conn)
        if path == LIVENESS:
            if method not in ("GET", "HEAD"):
                return _not_allowed(conn, "GET, HEAD")
            return conn.send(200, b"application/json", b"true")
        if path == WEBSOCKET:
            return await self.websocket(request, conn)
        name = OPENAI_ROUTES.get(path)
        if name is not None:
            if method != "POST":
                return _not_allowed(conn, "POST")
            return await self.openai(name, request, conn)
        conn.send_error("route_not_found", f"No such route: {path}", {"path": path})

    def _not_ready(self, conn: Connection) -> bool:
        if self.state == "ready" or (self.state == "stopping" and self.model is not None):
            return False
        detail = {"state": self.state}
        message = "The model server is shutting down." if self.state == "stopping" else NOT_READY
        conn.send_error("model_unavailable", message, detail)
        return True

    async def readiness(self, conn: Connection) -> None:
        if self.state != "ready":
            return conn.send_error("model_unavailable", NOT_READY, {"state": self.state})
        check = self.model.method("is_healthy")
        if check is not None:
            healthy = False
            try:
                healthy = bool(await asyncio.wait_for(self.call(check), HEALTH_CHECK_TIMEOUT))
            except asyncio.TimeoutError:
                self.logger.warn("health check failed", reason=f"is_healthy() took over {HEALTH_CHECK_TIMEOUT} s")
            except Exception as err:  # noqa: BLE001 - an unhealthy model is reported, not fatal
                self.logger.warn("health check failed", err=describe_exception(err))
            if not healthy:
                return conn.send_error("model_unavailable", NOT_READY, {"state": "unhealthy"})
        conn.send(200, b"application/json", b"{}")

    async def call(self, method: Method, *args: Any) -> Any:
        """Calls a model method the way truss does: a generator function returns its generator at once,
        an async one is awaited, a plain one runs in a worker thread."""
        if not method.takes_input:
            args = ()
        if method.is_generator:
            return method.fn(*args)
        if method.is_async:
            return await method.fn(*args)
        return await self.workers.run(self.run_sync, method, *args)

    def _inputs(self, request: Request, conn: Connection) -> Tuple[bool, Any]:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == "application/octet-stream":
            conn.send_error(
                "unsupported_media_type",
                "Binary (msgpack) inputs are not supported by Meridian's Python host; send JSON.",
                {"content_type": content_type},
            )
            return False, None
        try:
            return True, json.loads(request.body)
        except (ValueError, RecursionError) as err:
            # ValueError covers malformed JSON, bad UTF-8 and integers too long to convert.
            conn.send_error("invalid_json", f"Invalid JSON payload: {err}", {"reason": str(err)})
            return False, None

    async def predict(self, request: Request, conn: Connection) -> None:
        if self._not_ready(conn):
            return
        ok, inputs = self._inputs(request, conn)
        if not ok:
            return
        model = self.model
        pre, run, post = model.method("preprocess"), model.method("predict"), model.method("postprocess")
        try:
            if pre is not None:
                inputs = await self.call(pre, inputs)
            if conn.gone.done():
                return
            try:
                held = await self.limiter.acquire(conn.gone)
            except QueueFull:
                return conn.send_error(
                    "rate_limited",
                    "Too many requests: every predict slot is busy and the queue is full.",
                    {"predict_concurrency": self.limiter.limit, "max_queued": self.limiter.max_queued},
                )
            if not held:
                return
            try:
                result = await self.call(run, inputs)
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    if post is not None:
                        await self.close_generator(result)
                        raise ModelDefinitionError(STREAM_WITH_POSTPROCESS)
                    # The slot is held until the stream ends, so predict_concurrency bounds streams too.
                    return await self.answer_generator(result, request, conn, sse=False)
            finally:
                self.limiter.release()
            if post is not None:
                if conn.gone.done():
                    return
                result = await self.call(post, result)
        except ModelDefinitionError as err:
            self.logger.error("predict failed", err=describe_exception(err))
            return conn.send_error("model_definition_error", str(err), None, truss_code=600)
        except Exception as err:  # noqa: BLE001 - an exception in user code is a 500; the host keeps serving
            self.logger.error("predict failed", err=describe_exception(err))
            return conn.send_error("internal_error", USER_ERROR, None, truss_code=600)
        self.answer_value(result, conn)

    async def openai(self, name: str, request: Request, conn: Connection) -> None:
        if self._not_ready(conn):
            return
        method = self.model.method(name)
        if method is None:
            return conn.send_error(
                "route_not_found", f"The model has no {name} method.", {"path": request.path, "method": name}
            )
        ok, inputs = self._inputs(request, conn)
        if not ok:
            return
        try:
            result = await self.call(method, inputs)
            if inspect.isgenerator(result) or inspect.isasyncgen(result):
                return await self.answer_generator(result, request, conn, sse=True)
        except Exception as err:  # noqa: BLE001
            self.logger.error(f"{name} failed", err=describe_exception(err))
            return conn.send_error("internal_error", USER_ERROR, None, truss_code=600)
        self.answer_value(result, conn)

    async def websocket(self, request: Request, conn: Connection) -> None:
        """RFC 6455 §4.2.2: the upgrade is answered 101 and the model's `websocket(ws)` runs on the loop. It
        takes no predict slot (a websocket lives for minutes). Returning closes with 1000, raising with 1011."""
        if request.method != "GET":
            return _not_allowed(conn, "GET")
        key = request.headers.get("sec-websocket-key")
        if not is_upgrade(request.headers) or not valid_key(key) or request.headers.get("sec-websocket-version") != "13":
            return conn.send_error(
                "websocket_upgrade_required",
                None,
                None,
                extra=[("upgrade", "websocket"), ("sec-websocket-version", "13")],
                close=True,
            )
        if self._not_ready(conn):
            return
        handler = self.model.method("websocket")
        if handler is None:
            conn.close_after = True
            return conn.send_error("route_not_found", f"No websocket at {request.path}", {"path": request.path})
        conn.started = True
        conn.close_after = True
        conn.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: %s\r\n\r\n" % accept_key(key).encode("ascii")
        )
        ws = WebSocket(conn, request.path, request.headers)
        conn.websocket = ws
        failure: Optional[BaseException] = None
        try:
            await handler.fn(ws)
        except WebSocketDisconnect:
            pass
        except Exception as err:  # noqa: BLE001 - a failing handler closes its websocket, not the host
            failure = err
            self.logger.warn("websocket handler failed", err=describe_exception(err))
        await ws.finish(failure)

    def answer_value(self, value: Any, conn: Connection) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return conn.send(200, CONTENT_TYPES["bytes"], bytes(value))
        try:
            body = encode_json(value)
        except (TypeError, ValueError, RecursionError) as err:
            message = f"The model's output cannot be sent as JSON: {_last_line(err)}"
            self.logger.error("predict failed", err=describe_exception(err))
            return conn.send_error("internal_error", message, None, truss_code=600)
        conn.send(200, b"application/json", body)

    # -- generators --------------------------------------------------------------------------------------

    async def next_chunk(self, generator: Any, conn: Connection) -> Any:
        """The generator's next chunk, _END when exhausted, or None... raised as _Gone when the client left
        first (an async generator is then cancelled where it waits)."""
        if inspect.isasyncgen(generator):
            step = self.loop.create_task(generator.__anext__())
            await asyncio.wait((step, conn.gone), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                try:
                    await step
                except BaseException:  # noqa: BLE001 - the generator ends however it ends
                    pass
                raise _Gone()
            try:
                return step.result()
            except StopAsyncIteration:
                return _END
        # A sync generator's next step runs in a worker thread, as truss runs it.
        return await self.workers.run(next, generator, _END)

    async def close_generator(self, generator: Any) -> None:
        try:
            if inspect.isasyncgen(generator):
                await generator.aclose()
            else:
                await self.workers.run(generator.close)
        except Exception as err:  # noqa: BLE001 - a generator that fails while closing is only logged
            self.logger.warn("closing the model's generator failed", err=describe_exception(err))

    async def answer_generator(self, generator: Any, request: Request, conn: Connection, sse: bool) -> None:
        exhausted = False
        try:
            if should_gather(request):
                chunks = []
                while True:
                    chunk = await self.next_chunk(generator, conn)
                    if chunk is _END:
                        break
                    if conn.gone.done():
                        return
                    chunks.append(chunk)
                exhausted = True
                return conn.send(200, b"application/json", encode_json(gather_text(chunks)))
            first = await self.next_chunk(generator, conn)
            if first is _END:
                exhausted = True
                return conn.send(200, EVENT_STREAM if sse else CONTENT_TYPES["text"], b"")
            content_type = EVENT_STREAM if sse else CONTENT_TYPES[chunk_format(first)]
            extra = [("cache-control", "no-cache")] if sse else []
            framed = False
            chunk = first
            conn.start_stream(200, content_type, extra)
            while chunk is not _END:
                if sse:
                    data, by_host = encode_event(chunk)
                    framed = framed or by_host
                else:
                    data = encode_chunk(chunk)
                if not await conn.stream_write(data):
                    return
                chunk = await self.next_chunk(generator, conn)
                if conn.gone.done():
                    return
            exhausted = True
            if sse and framed:
                if not await conn.stream_write(b"data: [DONE]\n\n"):
                    return
            conn.end_stream()
        except _Gone:
            return
        except Exception as err:  # noqa: BLE001
            exhausted = True
            self.logger.error("predict failed", err=describe_exception(err), streaming=conn.started)
            # Before the first chunk this is an ordinary 500; after it the answer can only be cut off.
            conn.send_error("internal_error", USER_ERROR, None, truss_code=600)
        finally:
            if not exhausted:
                # The client went away (or stopped reading) mid-stream: the generator is closed, so its
                # `finally` runs and it stops producing.
                await self.close_generator(generator)


class _Gone(Exception):
    pass


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _not_allowed(conn: Connection, allow: str) -> None:
    conn.send_error("method_not_allowed", None, None, extra=[("allow", allow)])


def load_failure(err: BaseException) -> Dict[str, Any]:
    """The `err` of the `model load failed` line: for the host's own import and definition errors the
    message it wrote, else the traceback's last line of what load() (or the constructor) raised."""
    from .truss_model import ModelImportError

    described = describe_exception(err)
    if isinstance(err, (ModelImportError, ModelDefinitionError)):
        described["message"] = str(err)
        cause = err.__cause__
        if cause is not None:
            described["stack"] = describe_exception(cause)["stack"]
    return described
