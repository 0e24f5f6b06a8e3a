"""Command `serve`: the champion over HTTP, checked before it loads, behind a validating front.

Serves the model the CLI checked (champion.py: by default the registry's champion, whose logged
checkpoint must be the workspace's; the network rebuilt from that checkpoint, so nothing the
tracking server holds runs), from memory. It speaks `mlflow models serve`'s protocol (POST
/invocations, GET /ping, /health and /version) itself, parsing each request once, and answers
only requests the model can answer; everything else gets a short JSON error of MLflow's shape
(`{"error_code": ..., "message": ...}`) that never repeats the request:

- a body of at most `max_body_bytes` (default 10 MiB, about 600 images written at full float
  precision); a larger one is refused with 413 before it is read: at once by its
  Content-Length, or as soon as a chunked body passes the limit; a body not received within
  30 s gets 408;
- `Content-Type: application/json` (else 415); CSV and Parquet are not served;
- a JSON object with exactly one key, `inputs` or `instances`, holding N x 28 x 28 pixels (the
  shape of the model's signature, N >= 1) that are finite numbers in [0, 1] (what `as_inputs`
  feeds the network in training: uint8 / 255); anything else is 400, including NaN, Infinity,
  1e400 and JSON nested deeper than the parser goes. `dataframe_split` and `dataframe_records`
  are refused with a pointer to `inputs`: MLflow cannot score them against a tensor signature.

An answer is MLflow's, `{"predictions": [[10 logits], ...]}` with the logits in the order of
dataset.CLASS_NAMES; NaN or Infinity logits (from a model whose weights diverged: not JSON)
become a 500. Only the four endpoints exist.

It listens on 127.0.0.1 unless `host` says otherwise, without TLS or authentication: put a
reverse proxy in front to serve anyone else. Port 0 takes a free port. Ctrl-C or SIGTERM stops
it gracefully (requests in flight finish) and the command exits 0.

    fashion-mlp serve --port 5001
"""

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fashion_mlp.champion import CheckedModel
from fashion_mlp.dataset import IMAGE_SHAPE
from fashion_mlp.documents import unique_pairs
from fashion_mlp.errors import PipelineError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 10 * 2**20
READ_SECONDS = 30.0
ENDPOINTS = {"/invocations", "/ping", "/health", "/version"}
INPUT_KEYS = {"inputs", "instances"}
# What the network saw in training: as_inputs turns uint8 pixels into float32 / 255.
PIXEL_RANGE = (0.0, 1.0)


def serve(
    checked: CheckedModel,
    host: str,
    port: int,
    announce: Callable[[str], None],
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Serve the checked model on host:port until Ctrl-C or SIGTERM; `announce` gets what is
    served, and where."""
    import torch
    import uvicorn

    def predict(pixels: Any) -> Any:
        """Logits for N x 28 x 28 pixels already in PIXEL_RANGE (what as_inputs makes)."""
        with torch.inference_mode():
            return checked.network(torch.from_numpy(pixels).to(torch.float32)).numpy()

    front = ValidatingFront(predict, (-1, *IMAGE_SHAPE), max_body_bytes)
    listener = _listen(host, port)
    bound_host, bound_port = listener.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    announce(f"checked {checked.describe()}")
    announce(f"serving http://{shown_host}:{bound_port}/invocations (Ctrl-C to stop)")
    # uvicorn's own startup lines would repeat ours; its warnings and errors still show.
    config = uvicorn.Config(front, log_level="warning", ws="none", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # the stop signal, which uvicorn raises again once it has shut down gracefully
    finally:
        listener.close()
    announce("stopped")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so a taken port or an unknown host is one line before
    anything is served."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as err:
        raise PipelineError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --host or "
            "--port (--port 0: any free one)"
        ) from None
    listener.listen()
    return listener


class Refused(Exception):
    """A request the front answers itself, with an HTTP status and a short message."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


class ValidatingFront:
    """An ASGI app speaking MLflow's scoring protocol: refuses what the model cannot answer
    (module docstring), parses the rest once and answers with the model's logits."""

    def __init__(
        self, predict: Callable[[Any], Any], image_shape: tuple[int, ...], max_body_bytes: int
    ):
        self.predict = predict
        self.image_shape = image_shape
        self.expected = " x ".join(str(size) for size in ("N", *image_shape[1:]))
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] not in ENDPOINTS:
            shown = ", ".join(sorted(ENDPOINTS))
            return await _answer(send, Refused(404, "ENDPOINT_NOT_FOUND", f"endpoints: {shown}"))
        if scope["path"] != "/invocations":
            if scope["method"] not in ("GET", "HEAD"):
                return await _answer(send, Refused(405, "METHOD_NOT_ALLOWED", "use GET"))
            body = _version() if scope["path"] == "/version" else "\n"
            return await _respond(send, 200, body.encode(), b"text/plain; charset=utf-8")
        if scope["method"] != "POST":
            return await _answer(send, Refused(405, "METHOD_NOT_ALLOWED", "POST JSON here"))
        try:
            _refuse_unless_json(_header(scope, b"content-type"))
            body = await asyncio.wait_for(self._read_body(scope, receive), READ_SECONDS)
            # Parsing up to 10 MiB, and the model, take a while: off the event loop, so /ping
            # still answers.
            answer = await asyncio.to_thread(self.answer, body)
        except Refused as refused:
            return await _answer(send, refused)
        except TimeoutError:
            message = f"the body did not arrive within {READ_SECONDS:.0f} s"
            return await _answer(send, Refused(408, "REQUEST_TIMEOUT", message))
        except ConnectionAbortedError:
            return  # the client left before sending the whole body
        await _respond(send, 200, answer, b"application/json")

    def answer(self, body: bytes) -> bytes:
        """The JSON answer to a request body: its pixels checked (`pixels`), the model's logits;
        a model that answers NaN or Infinity is a 500 (its weights diverged)."""
        import numpy as np

        logits = self.predict(self.pixels(body))
        if not np.isfinite(logits).all():
            message = "the model answered NaN or Infinity; its weights are not usable, retrain it"
            raise Refused(500, "INTERNAL_ERROR", message)
        return json.dumps({"predictions": logits.tolist()}).encode()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        too_large = Refused(
            413,
            "REQUEST_TOO_LARGE",
            f"the body is over {self.max_body_bytes} bytes; send fewer images per request",
        )
        declared = _header(scope, b"content-length")
        # uvicorn has checked that Content-Length is a number; refuse before reading a byte.
        if declared and int(declared) > self.max_body_bytes:
            raise too_large
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                raise too_large
            if not message.get("more_body", False):
                return b"".join(parts)

    def pixels(self, body: bytes) -> Any:
        """The float32 pixels of `body`, refused unless it is JSON holding pixels this model
        was trained on: `inputs` or `instances`, N x 28 x 28, finite, in [0, 1]."""
        import numpy as np

        try:
            request = json.loads(
                body, parse_constant=_refuse_non_finite, object_pairs_hook=unique_pairs
            )
        except RecursionError:
            raise Refused(400, "BAD_REQUEST", "the JSON is nested too deeply") from None
        except ValueError as err:  # not JSON, not UTF-8, an integer of thousands of digits
            raise Refused(400, "BAD_REQUEST", f"not valid JSON: {str(err)[:100]}") from None
        keys = set(request) if isinstance(request, dict) else set()
        if keys & {"dataframe_split", "dataframe_records"}:
            raise Refused(
                400,
                "BAD_REQUEST",
                "this model takes tensors, which MLflow cannot read from a dataframe: send "
                f'{{"inputs": {self.expected} pixels}}',
            )
        if len(keys) != 1 or not keys <= INPUT_KEYS:
            raise Refused(
                400,
                "BAD_REQUEST",
                'expected a JSON object with one key, "inputs" or "instances", holding '
                f"{self.expected} pixels",
            )
        try:
            pixels = np.asarray(request[keys.pop()])
        except (ValueError, OverflowError):  # ragged, or deeper than numpy's dimensions
            pixels = None
        # An array of strings, nulls or booleans holds no pixels.
        if pixels is None or pixels.dtype.kind not in "iuf":
            raise Refused(400, "BAD_REQUEST", f"expected {self.expected} numbers in [0, 1]")
        if pixels.ndim != len(self.image_shape) or pixels.shape[1:] != self.image_shape[1:]:
            got = " x ".join(map(str, pixels.shape)) or "a single number"
            raise Refused(400, "BAD_REQUEST", f"expected {self.expected} pixels, got {got}")
        low, high = PIXEL_RANGE
        if not np.isfinite(pixels).all():
            raise Refused(400, "BAD_REQUEST", f"pixels must be finite, in [{low:g}, {high:g}]")
        if pixels.min() < low or pixels.max() > high:
            raise Refused(
                400,
                "BAD_REQUEST",
                f"pixels must be in [{low:g}, {high:g}] (uint8 values / 255, as in training), "
                f"got {pixels.min():g} to {pixels.max():g}",
            )
        return pixels.astype(np.float32)


def _refuse_unless_json(content_type: str) -> None:
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise Refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            'send JSON with Content-Type: application/json, e.g. {"inputs": [28 x 28 pixels]}',
        )


def _refuse_non_finite(constant: str) -> float:
    raise Refused(400, "BAD_REQUEST", f"pixels must be finite numbers, got {constant}")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _version() -> str:
    from importlib.metadata import version

    return f"fashion-mlp {version('fashion-mlp')}\n"


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer(send: Send, refused: Refused) -> None:
    """The front's own answer, shaped like MLflow's errors; it closes the connection, since a
    refused request may leave body bytes unread on it."""
    body = json.dumps({"error_code": refused.error_code, "message": refused.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
