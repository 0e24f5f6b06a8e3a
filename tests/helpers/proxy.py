"""A slow proxy on 127.0.0.1: it passes every request on at once, but answers the first request
to each chosen path only after a delay, as a loaded server or proxy does. The server has done
the work by then; a client that gave up waiting and retried makes it twice."""

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def slow_proxy(upstream: int, slow_paths: set[str], delay: float) -> Iterator[tuple[str, Counter]]:
    """The proxy's URL, and how many requests it has seen per path."""
    seen: Counter = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            path = self.path.split("?", 1)[0]
            with lock:
                seen[path] += 1
                first = seen[path] == 1
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            connection = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            connection.request(self.command, self.path, body, headers)
            answer = connection.getresponse()
            content = answer.read()
            if first and path in slow_paths:
                time.sleep(delay)
            try:
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except OSError:
                pass  # the client stopped waiting

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
