"""A small standard-library client for the LenVM serving protocol, and a server in a subprocess.

>>> with launch_server("path/to/lenvm") as client:        # doctest: +SKIP
...     client.encode([[1, 2, 3]])                          # [[z_0, z_1, z_2]]
...     client.tree_value([[1, 2]], [[3, 4, 5]])            # [[z(1 2 3), z(1 2 4), z(1 2 5)]]

Responses are parsed like the reference clients do: a single object stands for a batch of one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["LenVMClient", "ServerError", "free_port", "launch_server"]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


class ServerError(RuntimeError):
    """An HTTP error from the server: ``status`` and the decoded JSON ``body`` (or text)."""

    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class LenVMClient:
    """Calls a LenVM server at ``url`` (e.g. ``http://127.0.0.1:30010``); safe to share between threads."""

    url: str
    timeout: float = 60.0
    process: subprocess.Popen | None = field(default=None, repr=False)  # set by launch_server

    def request(self, path: str, payload=None, *, method: str | None = None, data: bytes | None = None):
        """The decoded JSON response of ``path``; raises :class:`ServerError` on an HTTP error status."""
        if data is None and payload is not None:
            data = json.dumps(payload).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method or
                                     ("GET" if data is None else "POST"), headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            raise ServerError(err.code, body) from None

    @staticmethod
    def embeddings(response) -> list[list[float]]:
        """The ``embedding`` lists of an ``/encode`` or ``/tree_value`` response (one object or a list)."""
        items = [response] if isinstance(response, dict) else response
        return [item["embedding"] for item in items]

    def encode(self, input_ids: list[list[int]]) -> list[list[float]]:
        """Raw head outputs ``z`` for every token of every sequence."""
        return self.embeddings(self.request("/encode", {"input_ids": input_ids,
                                                        "bypass_cache": [True] * len(input_ids)}))

    def tree_value(self, prefixes: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """``z(prefix_i + c)`` for each candidate ``c`` of each prefix."""
        return self.embeddings(self.request("/tree_value", {"input_ids": prefixes, "candidate_ids": candidates}))

    def predict(self, prompts: list) -> list[dict]:
        """``{"value", "length", "prompt_tokens"}`` per prompt (text or chat messages)."""
        return self.request("/predict", {"prompts": prompts})["predictions"]

    def health(self) -> dict:
        return self.request("/health")

    def flush_cache(self) -> dict:
        return self.request("/flush_cache", method="POST")


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def launch_server(
    model: str | os.PathLike,
    *args: str,
    port: int | None = None,
    startup_timeout: float = 180.0,
    stop_timeout: float = 30.0,
    log_file=None,
):
    """Run ``lenvm-rl serve --model MODEL *args`` on a loopback port; yield a client once ``/health`` answers.

    The client's ``process`` attribute is the ``subprocess.Popen``. On exit the server gets SIGTERM
    (then SIGKILL after ``stop_timeout``). Output goes to ``log_file`` (default: discarded).
    """
    port = port or free_port()
    command = [sys.executable, "-m", "lenvm_rl.cli", "serve", "--model", str(model), "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = LenVMClient(f"http://127.0.0.1:{port}", process=process)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode} before answering: "
                                   f"{' '.join(command)}")
            try:
                client.health()
                break
            except (OSError, ServerError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not answer /health within {startup_timeout} s") from None
                time.sleep(0.2)
        yield client
    finally:
        _stop(process, stop_timeout)
