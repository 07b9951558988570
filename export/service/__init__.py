"""``mind-recbole serve``: an HTTP retrieval service over an exported model, with micro-batching.

- :mod:`export.service.batcher`: :class:`MicroBatcher`, which gathers concurrent requests into
  bounded batches (bounded wait, bounded queue, a deadline per request); standard library only.
- :mod:`export.service.batch_retrieval`: :class:`BatchRetriever`, which checks one request
  against the model (naming the field at fault) and answers a batch with
  :func:`export.retrieval.retrieve`; numpy and onnxruntime only.
- :mod:`export.service.app`: the FastAPI routes, JSON errors and the uvicorn runner (the
  ``serve`` extra: ``pip install mind-recbole[serve]``).
- :mod:`export.service.client`: :class:`ServiceClient`, one keep-alive HTTP connection to a
  running service (standard library only; the load test and the tests use it).

Importing this package imports none of them (the ``mind-recbole`` parser reads the defaults
below from here), and nothing here imports torch or RecBole.
"""

DEFAULT_MAX_BATCH = 64  # requests answered by one user-tower call at most
DEFAULT_MAX_WAIT_MS = 2.0  # longest wait for more requests after the first of a batch
DEFAULT_TIMEOUT_MS = 2000.0  # a request's deadline: past it the caller gets 503
DEFAULT_QUEUE_SIZE = 1024  # requests waiting at most; more get 503 at once
DEFAULT_MAX_TOPK = 1000  # the largest topk a request may ask
