"""A small client of ``mind-recbole serve`` over one keep-alive HTTP/1.1 connection (standard library only).

>>> client = ServiceClient("127.0.0.1", 8000)                       # doctest: +SKIP
>>> reply = client.retrieve(["B004ZT0SSG", "B004756YJA"], topk=10)  # doctest: +SKIP
>>> reply.status, reply.payload["items"], reply.payload["scores"]  # doctest: +SKIP

One client holds one connection: give each thread its own. The load test
(``benchmarks/serving_load.py``) and the tests use it.
"""

import http.client
import json
from typing import NamedTuple


class Reply(NamedTuple):
    status: int
    payload: object  # the JSON body, or None when the body is not JSON
    text: str  # the raw body
    headers: dict  # lower-case names


class ServiceClient:
    """Requests to one service at ``host:port``; the connection is reopened once if the server closed it."""

    def __init__(self, host="127.0.0.1", port=8000, timeout=30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._connection = None

    def request(self, method, path, body=None, raw=None, content_type="application/json"):
        """``method path`` with ``body`` as JSON (or the bytes ``raw`` as they are) -> :class:`Reply`."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": content_type} if data is not None and content_type else {}
        for attempt in (1, 2):
            reused = self._connection is not None
            if not reused:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                text = response.read().decode("utf-8", errors="replace")
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # an idle keep-alive connection the server closed: one fresh try
                if not reused or attempt == 2:
                    raise
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = None
        return Reply(response.status, payload, text, {name.lower(): value for name, value in response.getheaders()})

    def retrieve(self, history, **fields):
        """``POST /retrieve`` for one user: ``fields`` are ``user``, ``topk``, ``include_history``, ``ann``, ``skip_unknown``."""
        return self.request("POST", "/retrieve", {"history": list(history), **fields})

    def get(self, path):
        return self.request("GET", path)

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None
