"""A TCP proxy a test can cut and restore, for broker-outage tests.

It runs its own asyncio loop in a daemon thread, so a synchronous test drives it::

    with TcpProxy(listen_port=p, upstream=("127.0.0.1", b)) as proxy:
        ...
        proxy.cut()       # close every connection; new ones are refused (port closed)
        proxy.restore()   # listen again on the same port

While cut, nothing listens on the port, so a client's connect gets ECONNREFUSED, as it would
against a broker that is down; established connections are closed at once (both sides).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any

_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:listen_port`` to ``upstream``. Thread-safe public methods; each
    blocks until done. Counts connections accepted (``accepted``) for assertions."""

    def __init__(self, listen_port: int, upstream: tuple[str, int],
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = listen_port
        self.upstream = upstream
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- called from the test's thread ---------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Stop listening and close every open connection."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again (same port)."""
        self._call(self._listen())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- on the proxy's loop ---------------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                      reuse_address=True)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if server is not None:
            # Python 3.11's wait_closed returns at once; the listening socket is closed above.
            await server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        writers = (client_w, upstream_w)
        self._writers.update(writers)
        try:
            await asyncio.gather(self._pipe(client_r, upstream_w),
                                 self._pipe(upstream_r, client_w))
        finally:
            for w in writers:
                self._writers.discard(w)
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(_CHUNK):
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        # One direction ended (EOF or cut): end the other one too.
        writer.close()
