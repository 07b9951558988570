"""The HTTP side of ``mind-recbole serve``: FastAPI routes over a micro-batched :class:`BatchRetriever`.

Routes (JSON in and out):

- ``POST /retrieve`` ``{"history": [item tokens, oldest first], "user": token or null, "topk": 50,
  "include_history": false, "ann": false, "skip_unknown": false}`` (only ``history`` is required;
  ``user`` only, and always, for models with user profile fields) -> ``{"items": [tokens, best
  first], "scores": [...], "interests": [...], "active_interests", "search", "skipped"}``: what
  ``mind-recbole retrieve`` gives for this user, as columns (one list per field encodes and parses
  about 3x faster than one object per item); ``interests`` holds each item's winning interest
  (``0 .. K-1``), ``search`` is ``exact`` or the ANN index's kind (``hnsw``, ``ivf``), ``skipped``
  the unknown tokens ``skip_unknown`` dropped.
- ``GET /healthz`` -> ``{"status": "ok", "loaded": true}`` (503 while the batcher is not running);
- ``GET /metadata`` -> :meth:`BatchRetriever.describe` plus the batching settings;
- ``GET /stats`` -> batching counters (:class:`~export.service.batcher.BatchStats`) and ``tower_calls``.

Concurrent ``/retrieve`` requests are checked one by one on the event loop, then answered
together by :class:`~export.service.batcher.MicroBatcher` (at most ``max_batch`` per batch, at
most ``max_wait_ms`` of waiting for more) in one user-tower call and one scoring pass.

Every answer that is not 200 is ``{"error": message, "field": name or null}`` and never holds a
traceback: 400 for a body that is not a JSON object; 422 for a field of the wrong type or value
(``history[3]``: an unknown item token; ``topk`` out of range); 404 / 405 for other paths and
methods; 503 with ``Retry-After`` when the queue is full, the request's deadline (``timeout_ms``)
passed, or the server is stopping; 500 when the model code failed (the server logs the traceback).

Needs fastapi and uvicorn (``pip install mind-recbole[serve]``); never imports torch or RecBole.
"""

import contextlib
import socket

try:
    import fastapi
    import pydantic
    import uvicorn
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as error:
    raise ImportError(f"{error.name or 'fastapi'} is not installed: pip install mind-recbole[serve]") from error

from export.service import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, DEFAULT_QUEUE_SIZE, DEFAULT_TIMEOUT_MS
from export.service.batch_retrieval import DEFAULT_TOPK, BatchFailure, RequestError
from export.service.batcher import BatcherError, MicroBatcher, QueueFullError, check_number

BODY_EXAMPLE = '{"history": ["ITEM", ...]}'


class RetrieveRequest(pydantic.BaseModel):
    """The body of ``POST /retrieve``: types only; values are checked by :meth:`BatchRetriever.check`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    history: list[pydantic.StrictStr]  # item tokens (ASINs), oldest first
    user: pydantic.StrictStr | None = None  # user token, for models with user profile fields
    topk: pydantic.StrictInt = DEFAULT_TOPK  # items to return
    include_history: pydantic.StrictBool = False  # allow the history's own items in the answer
    ann: pydantic.StrictBool = False  # faiss search (a server started with --ann) instead of exact
    skip_unknown: pydantic.StrictBool = False  # drop unknown item (and user) tokens instead of refusing


def error_response(status, message, field=None, headers=None):
    """The service's one error shape: ``{"error": message, "field": name or null}``."""
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def field_name(location):
    """pydantic's error location ``("body", "history", 3)`` -> ``"history[3]"``."""
    name = ""
    for part in location[1:]:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_response(error):
    """The first problem of a ``RequestValidationError`` as a 400 (no JSON object) or 422 (a field)."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return error_response(400, f"body: not valid JSON ({first['msg']}); expected an object like {BODY_EXAMPLE}", "body")
    name = field_name(first["loc"])
    if name == "body":
        return error_response(
            400, f"body: {first['msg']}; expected a JSON object like {BODY_EXAMPLE} with Content-Type: application/json",
            "body",
        )
    return error_response(422, f"{name}: {first['msg']}", name)


def check_settings(max_wait_ms, timeout_ms):
    """``ValueError`` naming the setting unless ``max_wait_ms >= 0`` and ``timeout_ms > 0`` (finite)."""
    check_number("max_wait_ms", max_wait_ms, minimum=0)
    check_number("timeout_ms", timeout_ms, minimum=0, above=True)


def create_app(retriever, max_batch=DEFAULT_MAX_BATCH, max_wait_ms=DEFAULT_MAX_WAIT_MS, timeout_ms=DEFAULT_TIMEOUT_MS,
               queue_size=DEFAULT_QUEUE_SIZE):
    """The FastAPI app serving ``retriever`` (a loaded :class:`BatchRetriever`; see the module doc).

    ``app.state.batcher`` and ``app.state.retriever`` are the live objects; the batcher runs
    between the app's startup and shutdown.
    """
    check_settings(max_wait_ms, timeout_ms)
    batcher = MicroBatcher(retriever.answer, max_batch=max_batch, max_wait_s=max_wait_ms / 1000, queue_size=queue_size)
    timeout_s = timeout_ms / 1000

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = fastapi.FastAPI(title="mind-recbole retrieval", lifespan=lifespan)
    app.state.batcher, app.state.retriever = batcher, retriever

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error):
        return validation_response(error)

    @app.exception_handler(RequestError)
    async def unservable_request(_request, error):
        return error_response(422, str(error), error.field)

    @app.exception_handler(BatcherError)
    async def overloaded(_request, error):
        reason = "overloaded" if isinstance(error, QueueFullError) else "unavailable"
        return error_response(503, f"service {reason}: {error}", headers={"Retry-After": "1"})

    @app.exception_handler(BatchFailure)
    async def failed_batch(_request, error):
        return error_response(500, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(_request, error):
        return error_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(_request, error):  # starlette re-raises it afterwards: uvicorn logs the traceback
        return error_response(500, f"internal error ({type(error).__name__}); the server log has the details")

    @app.post("/retrieve")
    async def retrieve_route(body: RetrieveRequest):
        query = retriever.check(**body.model_dump())
        answer = await batcher.submit(query, timeout_s)
        return JSONResponse({  # columns, not one object per item: a third of the encoding time
            "items": [r.item for r in answer.items],
            "scores": [r.score for r in answer.items],
            "interests": [r.interest for r in answer.items],
            "active_interests": answer.active_interests,
            "search": answer.search,
            "skipped": list(answer.skipped),
        })

    @app.get("/healthz")
    async def healthz():
        if not batcher.running:
            return error_response(503, "the batcher is not running (starting or stopping)")
        return {"status": "ok", "loaded": True}

    @app.get("/metadata")
    async def metadata():
        settings = {"max_batch": batcher.max_batch, "max_wait_ms": max_wait_ms, "timeout_ms": timeout_ms,
                    "queue_size": batcher.queue_size}
        return {**retriever.describe(), "batching": settings}

    @app.get("/stats")
    async def stats():
        return {**batcher.stats.to_dict(), "queued": batcher.queued, "tower_calls": retriever.tower_calls}

    return app


def listening_socket(host, port):
    """A TCP socket bound to ``host:port`` and listening (port 0: any free port); ``OSError`` naming the address."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections made before uvicorn starts wait here
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return sock


def build_server(app, log_level="info", access_log=False):
    """A ``uvicorn.Server`` for ``app``; ``server.run(sockets=[sock])`` serves on a :func:`listening_socket`."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on"))


def serve(app, sock, log_level="info", access_log=False, announce=print):
    """Serve ``app`` on the listening socket ``sock`` until SIGINT / SIGTERM; 0 after a clean
    stop, 1 when the server did not start.

    ``announce`` gets one line with the address (the real port when it was asked as 0) before the
    server starts; connections made from then on wait in the socket's backlog until it does.
    """
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"serving on http://{shown_host}:{port} (POST /retrieve; GET /healthz, /metadata, /stats)")
    server = build_server(app, log_level=log_level, access_log=access_log)
    server.run(sockets=[sock])
    return 0 if server.started else 1
