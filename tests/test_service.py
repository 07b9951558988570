"""`mind-recbole serve`: the micro-batcher, the batch retriever, the HTTP service on a free localhost port.

Servers run inside the tests (a uvicorn thread on a port the system picked, or the command in a
subprocess) and are stopped by them; requests go over real HTTP (``export.service.client``).
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from export import artifacts
from export.retrieval import FAISS_HINT, retrieve
from export.runtime import UserTower
from export.service.batch_retrieval import MAX_HISTORY, BatchFailure, BatchRetriever, Query, RequestError, same_ranking
from export.service.batcher import ClosedError, DeadlineError, MicroBatcher, QueueFullError
from export.service.client import ServiceClient
from mind_recbole.cli import main
from tests.conftest import PROJECT_ROOT
from tests.test_runtime import BLOCKED_RUN

try:
    from export.service.app import build_server, create_app, listening_socket
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # .ci/run installs the serve extra: CI cannot pass on skipped service tests
    pytest.skip("the serve extra is not installed: pip install -e '.[serve]'", allow_module_level=True)


# ---------------------------------------------------------------------------------------------- the batcher
def run_async(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_concurrent_submits_share_batches_and_each_caller_gets_its_own_result():
    batches = []

    def double(items):
        batches.append(list(items))
        return [2 * item for item in items]

    async def scenario():
        batcher = MicroBatcher(double, max_batch=8, max_wait_s=0.2)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i, timeout_s=10) for i in range(20)))
        await batcher.stop()
        return results, batcher.stats

    results, stats = run_async(scenario())
    assert results == [2 * i for i in range(20)]
    assert [len(b) for b in batches] == [8, 8, 4]  # all 20 queued at once: full batches, then the rest
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert (stats.batches, stats.processed, stats.largest_batch, stats.submitted) == (3, 20, 8, 20)


def test_an_exception_for_one_item_fails_that_caller_only():
    def picky(items):
        return [ValueError(f"item {item} is odd") if item % 2 else item for item in items]

    async def scenario():
        batcher = MicroBatcher(picky, max_batch=4, max_wait_s=0.05)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i, timeout_s=10) for i in range(4)), return_exceptions=True)
        await batcher.stop()
        return results

    results = run_async(scenario())
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError) and str(results[1]) == "item 1 is odd"
    assert isinstance(results[3], ValueError) and str(results[3]) == "item 3 is odd"


def test_a_late_answer_is_a_deadline_error_and_a_queued_item_past_its_deadline_is_dropped():
    release = threading.Event()
    processed = []

    def slow(items):
        processed.extend(items)
        release.wait(10)
        return list(items)

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit("first", timeout_s=0.1))
        await asyncio.sleep(0.02)  # "first" is running; "second" waits in the queue behind it
        started = time.perf_counter()
        with pytest.raises(DeadlineError, match="deadline of 50 ms"):
            await batcher.submit("second", timeout_s=0.05)
        waited = time.perf_counter() - started
        with pytest.raises(DeadlineError):
            await first
        release.set()
        for _ in range(500):  # the worker finishes "first", then takes and drops "second"
            if batcher.stats.dropped:
                break
            await asyncio.sleep(0.01)
        stats = batcher.stats
        await batcher.stop()
        return waited, stats

    waited, stats = run_async(scenario())
    assert 0.04 <= waited < 1.0  # answered at its deadline, not after the blocked batch
    assert processed == ["first"]  # "second" was never processed
    assert (stats.deadline_exceeded, stats.dropped) == (2, 1)


def test_a_full_queue_is_refused_at_once_and_stop_answers_everyone_waiting():
    release = threading.Event()

    def blocked(items):
        release.wait(10)
        return list(items)

    async def scenario():
        batcher = MicroBatcher(blocked, max_batch=1, max_wait_s=0, queue_size=2)
        await batcher.start()
        waiting = [asyncio.create_task(batcher.submit(0, timeout_s=10))]
        await asyncio.sleep(0.05)  # 0 is running
        waiting += [asyncio.create_task(batcher.submit(i, timeout_s=10)) for i in (1, 2)]
        await asyncio.sleep(0.05)  # 1 and 2 fill the queue
        with pytest.raises(QueueFullError, match="2 requests are waiting"):
            await batcher.submit(3, timeout_s=10)
        rejected = batcher.stats.rejected
        await batcher.stop()
        release.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        with pytest.raises(ClosedError):
            await batcher.submit(4, timeout_s=10)
        return rejected, outcomes

    rejected, outcomes = run_async(scenario())
    assert rejected == 1
    assert all(isinstance(outcome, ClosedError) for outcome in outcomes), outcomes


@pytest.mark.parametrize(
    "settings, field",
    [({"max_batch": 0}, "max_batch"), ({"max_batch": 2.5}, "max_batch"), ({"max_wait_s": -1}, "max_wait_s"),
     ({"max_wait_s": float("nan")}, "max_wait_s"), ({"queue_size": True}, "queue_size")],
)
def test_bad_batcher_settings_name_the_setting(settings, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        MicroBatcher(lambda items: items, **settings)


# ---------------------------------------------------------------------------------------------- the retriever
@pytest.fixture(scope="module")
def tower(mind_export):
    return UserTower(mind_export[0], provider="cpu")


@pytest.fixture(scope="module")
def histories(tower):
    """Eight histories of real item tokens, 1 to 15 items long."""
    rng = np.random.default_rng(7)
    return [[tower.item_tokens[i] for i in rng.integers(1, tower.n_items, n)] for n in (1, 2, 3, 5, 8, 10, 12, 15)]


def alone(tower, history, topk, include_history=False, index=None):
    """The in-process reference: ``retrieve`` for this one user, as ``(item, score)`` pairs."""
    recommendations, _ = retrieve(tower, [history], topk=topk, index=index, exclude_history=not include_history)
    return pairs(recommendations[0])


def pairs(items):
    """``(item, score)`` pairs of an answer's :class:`Recommendation` items."""
    return [(r.item, r.score) for r in items]


def reply_pairs(payload):
    """``(item, score)`` pairs of a ``/retrieve`` JSON answer (its ``items`` and ``scores`` columns)."""
    return list(zip(payload["items"], payload["scores"]))


def test_a_mixed_batch_is_one_tower_call_per_kind_and_each_answer_equals_retrieve_alone(tower, histories):
    retriever = BatchRetriever(tower)
    queries = [retriever.check(h, topk=5 + 7 * row, include_history=row % 3 == 0) for row, h in enumerate(histories)]
    answers = retriever.answer(queries)
    assert retriever.tower_calls == 2  # include_history False and True: one retrieve call each
    assert retriever.queries == len(queries)
    for query, answer in zip(queries, answers):
        assert len(answer.items) == query.topk and answer.search == "exact"
        assert same_ranking(pairs(answer.items), alone(tower, list(query.history), query.topk, query.include_history))
        history_ids = {tower.item_index[t] for t in query.history}
        assert query.include_history or not history_ids & {r.item_id for r in answer.items}
        assert 1 <= answer.active_interests <= tower.interest_num
        assert all(0 <= r.interest < tower.interest_num for r in answer.items)


def test_ann_queries_are_grouped_by_topk_and_equal_retrieve_alone(tower, histories):
    pytest.importorskip("faiss")
    from export.retrieval import build_index

    index = build_index(tower.item_vectors, kind="hnsw")
    retriever = BatchRetriever(tower, index=index)
    queries = [retriever.check(h, topk=10 if row < 4 else 20, ann=True) for row, h in enumerate(histories)]
    queries.append(retriever.check(histories[0], topk=10))  # one exact query beside them
    answers = retriever.answer(queries)
    assert retriever.tower_calls == 3  # ann topk 10, ann topk 20, exact
    for query, answer in zip(queries, answers):
        assert answer.search == ("hnsw" if query.ann else "exact")
        expected = alone(tower, list(query.history), query.topk, index=index if query.ann else None)
        assert same_ranking(pairs(answer.items), expected)


def test_ann_answers_name_the_kind_of_the_server_index(tower, histories):
    """A saved index may be IVF (``mind-recbole index``'s default): ``search`` says so, as ``retrieve`` does."""
    pytest.importorskip("faiss")
    from export.retrieval import build_index

    retriever = BatchRetriever(tower, index=build_index(tower.item_vectors, kind="ivf"))
    (answer,) = retriever.answer([retriever.check(histories[3], topk=5, ann=True)])
    assert answer.search == "ivf"


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"history": []}, "history", "is empty"),
        ({"history": ["<t1>", "NOPE-1", "<t2>", "NOPE-2"]}, "history[1]", "2 unknown item token(s): 'NOPE-1', 'NOPE-2'"),
        ({"history": ["<t1>"] * (MAX_HISTORY + 1)}, "history", "at most 10,000"),
        ({"history": ["<t1>"], "topk": 0}, "topk", "must be in 1.."),
        ({"history": ["<t1>"], "topk": 10**6}, "topk", "must be in 1.."),
        ({"history": ["<t1>"], "ann": True}, "ann", "serve --ann"),
        ({"history": ["<t1>"], "user": "A1"}, "user", "no user profile fields"),
        ({"history": ["NOPE-1"], "skip_unknown": True}, "history", "no known item"),
    ],
)
def test_check_names_the_field_at_fault(tower, fields, field, words):
    known = {"<t1>": tower.item_tokens[1], "<t2>": tower.item_tokens[2]}
    fields = {**fields, "history": [known.get(t, t) for t in fields["history"]]}
    with pytest.raises(RequestError) as caught:
        BatchRetriever(tower).check(**fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and words in str(caught.value)


def test_skip_unknown_drops_and_reports_the_unknown_tokens(tower):
    history = [tower.item_tokens[3], "NOPE-1", tower.item_tokens[4]]
    query = BatchRetriever(tower).check(history, topk=3, skip_unknown=True)
    assert query == Query((tower.item_tokens[3], tower.item_tokens[4]), None, 3, False, False, ("NOPE-1",))


def test_max_topk_is_capped_at_the_catalogue(tower):
    assert BatchRetriever(tower, max_topk=10**9).max_topk == tower.n_items - 1
    with pytest.raises(ValueError, match="^max_topk must be an integer >= 1"):
        BatchRetriever(tower, max_topk=0)


def test_same_ranking_allows_near_ties_only():
    reference = [("a", 3.0), ("b", 2.0), ("c", 1.000001), ("d", 1.0)]
    assert same_ranking(reference, reference)
    assert same_ranking([("a", 3.0), ("b", 2.0), ("d", 1.0000005), ("c", 1.000001)], reference)  # near-tie swapped
    assert same_ranking([("a", 3.0), ("b", 2.0), ("c", 1.000001), ("e", 1.000004)], reference)  # near-tie at the cut
    assert not same_ranking([("b", 3.0), ("a", 2.0), ("c", 1.000001), ("d", 1.0)], reference)  # distinct scores swapped
    assert not same_ranking([("a", 3.0), ("b", 2.0), ("c", 1.000001), ("e", 1.0)], reference[:3] + [("d", 1.1)])
    assert not same_ranking(reference[:3], reference)


class FailingIndex:
    """Stands in for an ANN index whose search fails inside the worker (a broken faiss build)."""

    kind = "hnsw"

    @property
    def index(self):
        raise RuntimeError("simulated faiss failure: secret detail")


def test_a_failing_group_is_logged_and_fails_only_its_own_queries(tower, histories, caplog):
    retriever = BatchRetriever(tower, index=FailingIndex())
    queries = [retriever.check(histories[0], topk=5, ann=True), retriever.check(histories[1], topk=5)]
    with caplog.at_level(logging.ERROR, logger="export.service.batch_retrieval"):
        ann_answer, exact_answer = retriever.answer(queries)
    assert isinstance(ann_answer, BatchFailure) and "secret" not in str(ann_answer)
    assert len(exact_answer.items) == 5
    assert "simulated faiss failure" in caplog.text and "Traceback" in caplog.text  # the server log has it


# ---------------------------------------------------------------------------------------------- over HTTP
@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn in a thread on a free localhost port; yields a :class:`ServiceClient`."""
    sock = listening_socket("127.0.0.1", 0)
    server = build_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        assert thread.is_alive() and time.monotonic() - started < 30, "the server did not start"
        time.sleep(0.01)
    client = ServiceClient("127.0.0.1", sock.getsockname()[1])
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def service(tower):
    """A client of one service with the default settings, shared by the tests that only send requests."""
    with running(create_app(BatchRetriever(tower))) as client:
        yield client


def check_error(reply, status, field):
    """A JSON error with only ``error`` and ``field``, naming ``field``, and no traceback."""
    assert reply.status == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.payload) == {"error", "field"} and reply.payload["field"] == field, reply.payload
    assert "Traceback" not in reply.text and 'File "' not in reply.text


def test_concurrent_requests_are_micro_batched_and_equal_retrieve_alone(tower, histories):
    retriever = BatchRetriever(tower)
    app = create_app(retriever, max_batch=64, max_wait_ms=300)
    requests = [(histories[row % len(histories)], 5 + row) for row in range(16)]
    gate = threading.Barrier(len(requests))

    def one(port, history, topk):
        client = ServiceClient("127.0.0.1", port)
        gate.wait(10)  # all 16 at once
        try:
            return client.retrieve(history, topk=topk)
        finally:
            client.close()

    with running(app) as client:
        with ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(lambda r: one(client.port, *r), requests))
        stats = client.get("/stats").payload
    for (history, topk), reply in zip(requests, replies):
        assert reply.status == 200, reply.text
        assert len(reply.payload["items"]) == len(reply.payload["interests"]) == topk
        assert all(0 <= k < tower.interest_num for k in reply.payload["interests"])
        assert same_ranking(reply_pairs(reply.payload), alone(tower, history, topk))
        assert reply.payload["search"] == "exact" and reply.payload["skipped"] == []
    assert stats["processed"] == 16 and stats["tower_calls"] == stats["batches"]
    assert stats["batches"] < 16 and stats["largest_batch"] > 1, stats  # batched: fewer tower calls than requests


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"history": []}, 422, "history"),
        ({"history": ["<known>", 5]}, 422, "history[1]"),
        ({"history": ["<known>", "NOPE"]}, 422, "history[1]"),
        ({"history": "<known>"}, 422, "history"),
        ({"history": ["<known>"], "topk": 0}, 422, "topk"),
        ({"history": ["<known>"], "topk": 10**9}, 422, "topk"),
        ({"history": ["<known>"], "topk": "5"}, 422, "topk"),
        ({"history": ["<known>"], "topk": 2.5}, 422, "topk"),
        ({"history": ["<known>"], "include_history": "yes"}, 422, "include_history"),
        ({"history": ["<known>"], "ann": True}, 422, "ann"),
        ({"history": ["<known>"], "user": "A1"}, 422, "user"),
        ({"history": ["<known>"], "colour": 1}, 422, "colour"),
        ({}, 422, "history"),
        ([1, 2], 400, "body"),
        (b"{not json", 400, "body"),
        (b'{"history": ["x"]}', 400, "body"),  # sent without Content-Type: application/json
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_field(tower, service, body, status, field):
    known = tower.item_tokens[7]
    if isinstance(body, dict):
        body = {k: [known if t == "<known>" else t for t in v] if isinstance(v, list) else (known if v == "<known>" else v)
                for k, v in body.items()}
    if isinstance(body, bytes):
        reply = service.request("POST", "/retrieve", raw=body, content_type=None if body.startswith(b'{"') else "application/json")
    else:
        reply = service.request("POST", "/retrieve", body)
    check_error(reply, status, field)
    assert reply.payload["error"].startswith(f"{field}: ")
    assert service.retrieve([known], topk=3).status == 200  # the server goes on serving


def test_unknown_paths_and_methods_are_json_errors(service):
    check_error(service.get("/nowhere"), 404, None)
    check_error(service.get("/retrieve"), 405, None)


def test_ann_requests_over_http_use_the_server_index(tower, histories):
    pytest.importorskip("faiss")
    from export.retrieval import build_index

    index = build_index(tower.item_vectors, kind="hnsw")
    with running(create_app(BatchRetriever(tower, index=index))) as client:
        ann = client.retrieve(histories[4], topk=7, ann=True)
        exact = client.retrieve(histories[4], topk=7, include_history=True)
        meta = client.get("/metadata").payload
    assert ann.status == 200 and ann.payload["search"] == "hnsw" and meta["ann_index"] == "hnsw"
    assert same_ranking(reply_pairs(ann.payload), alone(tower, histories[4], 7, index=index))
    assert exact.payload["search"] == "exact"
    assert same_ranking(reply_pairs(exact.payload), alone(tower, histories[4], 7, include_history=True))


class SlowRetriever(BatchRetriever):
    """Answers each batch only after ``release`` is set (or ``delay_s`` passed); ``started`` when one begins."""

    def __init__(self, tower, delay_s=10.0):
        super().__init__(tower)
        self.delay_s, self.started, self.release = delay_s, threading.Event(), threading.Event()

    def answer(self, queries):
        self.started.set()
        self.release.wait(self.delay_s)
        return super().answer(queries)


def test_a_request_past_its_deadline_gets_503_not_a_hang(tower):
    retriever = SlowRetriever(tower)
    history = [tower.item_tokens[5]]
    with running(create_app(retriever, timeout_ms=100)) as client:
        started = time.perf_counter()
        reply = client.retrieve(history, topk=3)
        waited = time.perf_counter() - started
        retriever.release.set()  # the batch it gave up on now ends
        check_error(reply, 503, None)
        assert "deadline of 100 ms" in reply.payload["error"] and reply.headers["retry-after"] == "1"
        assert 0.1 <= waited < 5  # answered at the deadline, not when the blocked batch ended (10 s)
        assert client.retrieve(history, topk=3).status == 200
        assert client.get("/stats").payload["deadline_exceeded"] == 1


def test_a_full_queue_gets_503_at_once(tower):
    retriever = SlowRetriever(tower)
    history = [tower.item_tokens[5]]
    with running(create_app(retriever, max_batch=1, max_wait_ms=0, queue_size=1)) as client:
        with ThreadPoolExecutor(2) as pool:
            running_one = pool.submit(ServiceClient("127.0.0.1", client.port).retrieve, history, topk=3)
            assert retriever.started.wait(10)
            queued_one = pool.submit(ServiceClient("127.0.0.1", client.port).retrieve, history, topk=3)
            deadline = time.monotonic() + 10
            while client.get("/stats").payload["queued"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            reply = client.retrieve(history, topk=3)
            check_error(reply, 503, None)
            assert "service overloaded: 1 requests are waiting" in reply.payload["error"]
            retriever.release.set()
            assert running_one.result(10).status == 200 and queued_one.result(10).status == 200
        assert client.get("/stats").payload["rejected"] == 1


def test_an_error_inside_the_worker_is_a_500_without_traceback(tower, caplog):
    history = [tower.item_tokens[9]]
    with caplog.at_level(logging.ERROR, logger="export.service.batch_retrieval"):
        with running(create_app(BatchRetriever(tower, index=FailingIndex()))) as client:
            reply = client.retrieve(history, topk=3, ann=True)
            check_error(reply, 500, None)
            assert "secret" not in reply.text and "server log" in reply.payload["error"]
            assert client.retrieve(history, topk=3).status == 200  # exact search still works
    assert "simulated faiss failure" in caplog.text


class BrokenChecks(BatchRetriever):
    """A bug outside the batch: checking a request raises."""

    def check(self, history, **fields):
        raise RuntimeError(f"a bug holding {history[0]}: secret detail")


def test_an_unexpected_error_is_a_500_without_traceback(tower):
    with running(create_app(BrokenChecks(tower))) as client:
        reply = client.retrieve([tower.item_tokens[9]], topk=3)
        check_error(reply, 500, None)
        assert reply.payload["error"] == "internal error (RuntimeError); the server log has the details"
        assert client.get("/healthz").status == 200  # the server goes on


def test_healthz_and_metadata_describe_the_loaded_export(tower, mind_export):
    model_dir = mind_export[0]
    manifest = json.loads((model_dir / artifacts.MANIFEST_FILE).read_text())
    with running(create_app(BatchRetriever(tower), max_batch=32, timeout_ms=1500)) as client:
        assert client.get("/healthz").payload == {"status": "ok", "loaded": True}
        meta = client.get("/metadata").payload
    assert (meta["model"], meta["interest_num"], meta["embedding_size"], meta["max_seq_length"]) == ("MIND", 4, 16, 20)
    assert meta["items"] == tower.n_items - 1 and meta["uses_user_id"] is False and meta["ann_index"] is None
    assert meta["file_digests"][artifacts.ITEM_EMBEDDINGS_FILE] == artifacts.file_digest(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)
    assert meta["file_digests"] == manifest["files"]
    assert meta["versions"] == manifest["versions"] and meta["checkpoint_sha256"] == manifest["checkpoint"]["sha256"]
    assert meta["batching"] == {"max_batch": 32, "max_wait_ms": 2.0, "timeout_ms": 1500, "queue_size": 1024}


# ---------------------------------------------------------------------------------------------- the command
def test_serve_refuses_bad_settings_and_model_dirs_in_one_line(tmp_path, capsys):
    assert main(["serve", "--model-dir", str(tmp_path), "--port", "0", "--timeout-ms", "0"]) == 2
    assert capsys.readouterr().err == "mind-recbole serve: error: timeout_ms must be a finite number > 0, got 0.0\n"
    assert main(["serve", "--model-dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mind-recbole serve: error: ") and artifacts.ONNX_FILE in err and err.count("\n") == 1
    with listening_socket("127.0.0.1", 0) as busy:
        assert main(["serve", "--model-dir", str(tmp_path), "--port", str(busy.getsockname()[1])]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{busy.getsockname()[1]}" in err and err.count("\n") == 1


def test_serve_without_fastapi_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    monkeypatch.delitem(sys.modules, "export.service.app")
    assert main(["serve", "--model-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "mind-recbole serve: error: fastapi is not installed: pip install mind-recbole[serve]\n"


def test_serve_ann_without_faiss_says_how_to_install_it(mind_export, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    assert main(["serve", "--model-dir", str(mind_export[0]), "--port", "0", "--ann"]) == 2
    assert capsys.readouterr().err == f"mind-recbole serve: error: {FAISS_HINT}\n"


@pytest.mark.slow
def test_cli_serve_starts_on_a_free_port_without_torch_and_stops_on_ctrl_c(mind_export, tmp_path):
    """The real command in a subprocess where torch and RecBole cannot be imported (BLOCKED_RUN also
    checks that neither was imported when the command returns). SIGINT stops it gracefully;
    uvicorn then raises the signal again, which the command reports as an interruption (130)."""
    model_dir = mind_export[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_RUN, "serve", "--model-dir", str(model_dir), "--port", "0", "--provider", "cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a test run started in the background inherits SIGINT ignored, and so would the server
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith(f"mind-recbole serve: MIND from {model_dir}"), lines
        assert lines[1].startswith("mind-recbole serve: serving on http://127.0.0.1:"), lines
        port = int(lines[1].split("http://127.0.0.1:")[1].split()[0])
        client = ServiceClient("127.0.0.1", port)
        assert client.get("/healthz").payload == {"status": "ok", "loaded": True}
        history = json.loads((model_dir / artifacts.ITEM_TOKENS_FILE).read_text())[30:36]
        reply = client.retrieve(history, topk=10)
        assert reply.status == 200 and len(reply.payload["items"]) == 10
        client.close()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err[-3000:]
    assert "Application shutdown complete" in err and err.endswith("mind-recbole serve: interrupted\n")
    assert "Traceback" not in err
