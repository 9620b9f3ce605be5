"""A TCP proxy that loses one answer: the connection drops after the server got a request."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class DroppingProxy:
    """Forwards every byte between clients and ``upstream``, except that it closes the
    client's connection instead of passing on the answer to the first request that starts
    with ``trigger``: the server received and processed it, the client never hears back."""

    def __init__(self, upstream: tuple[str, int], trigger: bytes = b"POST /v1/jobs HTTP/") -> None:
        self.upstream = upstream
        self.trigger = trigger
        self.dropped = 0
        self.connections = 0
        self._armed = True
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        drop_answer = threading.Event()

        def close_both() -> None:
            for sock in (client, server):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

        def requests() -> None:
            with suppress(OSError):
                while chunk := client.recv(65536):
                    if self.trigger in chunk:
                        with self._lock:
                            if self._armed:
                                self._armed = False
                                drop_answer.set()
                    server.sendall(chunk)
            with suppress(OSError):
                server.shutdown(socket.SHUT_WR)

        def answers() -> None:
            with suppress(OSError):
                while chunk := server.recv(65536):
                    if drop_answer.is_set():
                        # The server has answered: the job exists. The client never sees it.
                        with self._lock:
                            self.dropped += 1
                        close_both()
                        return
                    client.sendall(chunk)
            close_both()

        threading.Thread(target=requests, daemon=True).start()
        answers()
