"""Files served over real HTTP on loopback (the standard library's server), as a web server
or an object store's URL serves a video file."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Quiet(SimpleHTTPRequestHandler):
    cut: dict[str, int] = {}  # path -> bytes sent before the connection is dropped

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        limit = self.cut.get(self.path)
        if limit is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(limit))  # the full length was announced: a cut connection
        self.close_connection = True


class HttpFiles:
    def __init__(self, folder: Path, cut: dict[str, int] | None = None) -> None:
        """`cut`: for these paths ("/v.mp4"), drop the connection after that many bytes."""
        handler = type("Handler", (_Quiet,), {"cut": dict(cut or {})})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
