"""The ``semask serve`` web demo: standard library only (``http.server``), one model, no CDN.

* ``GET /`` the page (upload / drop an image, overlay with an opacity slider, class legend
  with colours and pixel shares, semantic-prior maps); ``GET /info`` the model's classes.
* ``POST /predict`` with the image as the body (``Content-Type: image/png``, ``image/jpeg``,
  ... or ``application/octet-stream``), or as the ``image`` field of a multipart form
  (``curl -F image=@x.jpg``). Answer (JSON): ``label_png`` (base64 8-bit PNG of class ids,
  the exact :func:`semask.predict` result), ``color_png`` (palette colours), ``classes``
  (present classes with name, colour and pixel share) and, with ``?priors=1`` on a SeMask
  model, ``priors`` (per stage, the prior argmax picture and heatmaps of the top classes).
* Errors answer JSON ``{"error": message}``: 400 undecodable image or malformed form, 408 an
  upload slower than ``timeout_s``, 411 no length, 413 upload larger than ``max_upload_bytes``
  or a form of more than :data:`MAX_FORM_PARTS` parts, 415 not an image type, 422 more than
  ``max_pixels`` pixels, a side longer than ``max_side``, or an image the model cannot segment,
  503 when ``max_queue`` requests are already in progress.

The server is a :class:`http.server.ThreadingHTTPServer`: requests are read in parallel and
the one model is run by one request at a time behind a lock (the others wait their turn).
A few requests cannot tie it up: the queue limit applies before a body is read or parsed, a
form is parsed only up to its ``image`` field and at most :data:`MAX_FORM_PARTS` parts of
bounded headers, pixels are bounded per side as well as in total, and a connection that sends
nothing for ``timeout_s`` (idle keep-alive, slow headers) or whose upload takes longer is closed.
Uploads are decoded in memory; nothing is written to disk.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..engine.inference import UnsegmentableImageError, image_error
from ..engine.predict import FROM_MODEL
from .page import PAGE

logger = logging.getLogger("semask.serve")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/gif")
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
MAX_FORM_PARTS = 16  # a browser's upload form sends one or two
MAX_PART_HEADER_BYTES = 8192

# viridis at 5 stops (0, .25, .5, .75, 1), linearly interpolated: heatmaps need no matplotlib
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


class RequestError(Exception):
    """An answer other than 200, with the HTTP status and a message for the user."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """[0, 1] values -> (H, W, 3) uint8 viridis-like colours."""
    x = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    low = np.minimum(x.astype(np.int64), len(_VIRIDIS) - 2)
    t = (x - low)[..., None]
    return (_VIRIDIS[low] * (1 - t) + _VIRIDIS[low + 1] * t + 0.5).astype(np.uint8)


def decode_image(data: bytes, max_pixels: int, max_side: int = 8192) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB; 422 above ``max_pixels`` or with a side above ``max_side``
    (checked before decoding: a 1x16M strip is few pixels but slow to segment), 400 if corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > max_pixels:
                raise RequestError(
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    f"image is {w}x{h} = {w * h:,} pixels; this server accepts at most {max_pixels:,}",
                )
            if max(w, h) > max_side:
                raise RequestError(
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    f"image is {w}x{h}; this server accepts sides of at most {max_side:,} pixels",
                )
            image.load()
            return np.array(image.convert("RGB"))
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"image has too many pixels: {exc}") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise RequestError(HTTPStatus.BAD_REQUEST, f"could not decode the upload as an image: {exc}") from None


def form_image(body: bytes, content_type: str) -> bytes:
    """The ``image`` field of a multipart form (RFC 7578), read without parsing the rest: at most
    :data:`MAX_FORM_PARTS` parts, each with at most :data:`MAX_PART_HEADER_BYTES` of headers, so
    a form of 150,000 empty fields costs no more than a few (the email parser took 17 s for it)."""
    found = re.search(r'boundary="?([^";]{1,200})"?', content_type)
    if found is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the multipart form has no boundary")
    delimiter = b"--" + found.group(1).encode("latin-1")
    pos = body.find(delimiter)
    for _ in range(MAX_FORM_PARTS):
        if pos < 0 or body[pos + len(delimiter) : pos + len(delimiter) + 2] == b"--":
            break  # no delimiter, or the closing one
        start = pos + len(delimiter) + 2  # past the CRLF
        end_of_headers = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER_BYTES)
        following = body.find(b"\r\n" + delimiter, max(end_of_headers, start))
        if end_of_headers < 0 or following < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the multipart form is malformed (part headers or end)")
        headers = body[start:end_of_headers].decode("latin-1").lower()
        if re.search(r'content-disposition:[^\r\n]*;\s*name="?image"?(;|\s|$)', headers, re.MULTILINE):
            part_type = re.search(r"^content-type:\s*([^;\s]+)", headers, re.MULTILINE)
            if part_type is not None and part_type.group(1) not in RAW_TYPES:
                raise RequestError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the 'image' field is {part_type.group(1)}, not an image"
                )
            return body[end_of_headers + 4 : following]
        pos = following + 2
    else:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the multipart form has more than {MAX_FORM_PARTS} parts before an 'image' field",
        )
    raise RequestError(HTTPStatus.BAD_REQUEST, "the multipart form has no 'image' field")


class ModelService:
    """One model behind a lock: :meth:`run` is safe to call from many threads."""

    def __init__(
        self,
        model: nn.Module,
        *,
        scale: tuple[int, int] | None = FROM_MODEL,
        max_pixels: int = 4096 * 4096,
        max_side: int = 8192,
        max_upload_bytes: int = 10 * 1024 * 1024,
        max_queue: int = 8,
        name: str = "model",
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        from ..engine.health import semantic_layers

        self.model = model.eval()
        config = model.config  # type: ignore[union-attr]
        self.scale = scale
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.max_upload_bytes = max_upload_bytes
        self.name = name
        self.class_names = config.names()
        self.palette = config.colours()
        self.has_priors = bool(semantic_layers(model))
        self.amp_dtype = amp_dtype  # autocast on the model's device (None: float32)
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_queue)

    def info(self) -> dict[str, Any]:
        from ..engine.health import semantic_lambdas

        return {
            "model": self.name,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "palette": self.palette,
            "has_priors": self.has_priors,
            "lambda": semantic_lambdas(self.model),  # read now: the weights may have changed since
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
        }

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """A place among the ``max_queue`` requests in progress, taken before the upload is read
        or parsed (503 when there is none), so that waiting requests cost nothing."""
        if not self.slots.acquire(blocking=False):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy; try again in a moment")
        try:
            yield
        finally:
            self.slots.release()

    def run(self, rgb: np.ndarray, priors: bool = False, top_k: int = 3) -> dict[str, Any]:
        from ..data.visualize import colorize
        from ..engine.amp import autocast
        from ..engine.predict import predict

        options = {} if self.scale is FROM_MODEL else {"scale": self.scale}  # default: the model's protocol
        with self.lock:
            start = time.perf_counter()
            found = None
            device = next(self.model.parameters()).device
            with torch.inference_mode(), autocast(device, self.amp_dtype):  # per request: autocast is per thread
                label = predict(self.model, rgb, **options)  # the model's protocol: what `semask predict` writes
                if priors and self.has_priors:
                    from ..explain import explain

                    found = explain(self.model, rgb, top_k=top_k, **options)
            seconds = time.perf_counter() - start
        ids, counts = np.unique(label, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        classes = [
            {
                "id": int(ids[i]),
                "name": self.class_names[int(ids[i])],
                "color": self.palette[int(ids[i])],
                "share": float(counts[i]) / label.size,
            }
            for i in order
        ]
        answer: dict[str, Any] = {
            "width": int(label.shape[1]),
            "height": int(label.shape[0]),
            "label_png": png_base64(label.astype(np.uint8)),
            "color_png": png_base64(colorize(label, self.palette)),
            "classes": classes,
            "class_names": self.class_names,
            "seconds": seconds,
        }
        if found is not None:
            h, w = label.shape
            stages = []
            for j, (stage, ids_map) in enumerate(zip(found.stages, found.prior_ids)):
                big = np.asarray(Image.fromarray(ids_map.astype(np.uint8)).resize((w, h), Image.NEAREST))
                stages.append(
                    {
                        "stage": stage,
                        "lambda": found.lambdas.get(f"stage{stage}"),
                        "argmax_png": png_base64(colorize(big, self.palette)),
                        "heatmaps": [
                            {"id": c, "name": self.class_names[c], "png": png_base64(heat_rgb(found.heatmaps[r, j]))}
                            for r, c in enumerate(found.classes)
                        ],
                    }
                )
            answer["priors"] = stages
            answer["agreement"] = float((found.semantic == found.prediction).mean())
        return answer


class Handler(BaseHTTPRequestHandler):
    server: SemaskHTTPServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    @property  # type: ignore[override]
    def timeout(self) -> float:
        """Socket timeout of the connection: an idle keep-alive or a stalled request is closed."""
        return self.server.timeout_s

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict[str, Any], close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", close)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/info":
            self._json(HTTPStatus.OK, self.server.service.info())
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}; try / or POST /predict"})

    def do_POST(self) -> None:
        self._body_read = False
        url = urlparse(self.path)
        if url.path != "/predict":
            self._discard_body()
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path}; POST images to /predict"}, True)
            return
        service = self.server.service
        try:
            query = parse_qs(url.query)
            priors = query.get("priors", ["0"])[0] not in ("0", "false", "")
            try:
                top_k = int(query.get("top_k", ["3"])[0])
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "top_k must be a whole number") from None
            with service.admit():
                rgb = decode_image(self._read_upload(), service.max_pixels, service.max_side)
                try:
                    answer = service.run(rgb, priors=priors, top_k=max(1, min(top_k, 10)))
                except UnsegmentableImageError as exc:  # e.g. a strip too thin for the encoder
                    raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, image_error("the upload", rgb, exc)) from None
        except RequestError as exc:
            self._discard_body()
            self._json(exc.status, {"error": str(exc)}, close=True)
            return
        self._json(HTTPStatus.OK, answer)

    def _discard_body(self, cap: int = 64 * 1024 * 1024) -> None:
        """Read an unread body (up to ``cap`` bytes, within the timeout) so that the client sees
        the error answer instead of a reset connection; larger or slower bodies are cut off."""
        if self._body_read:
            return
        self._body_read = True
        try:
            remaining = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if remaining > cap:
            return
        with contextlib.suppress(RequestError, OSError):
            self._read_body(remaining)

    def _read_body(self, length: int) -> bytes:
        """``length`` bytes of body within ``timeout_s`` in all (408 otherwise: a trickling client)."""
        deadline = time.monotonic() + self.server.timeout_s
        chunks, remaining = [], length
        try:
            while remaining > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(remaining, 1 << 20))
                if not chunk:
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload ended after {length - remaining:,} bytes")
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT, f"the upload did not arrive within {self.server.timeout_s:g} s"
            ) from None
        return b"".join(chunks)

    def _read_upload(self) -> bytes:
        service = self.server.service
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length header")
        try:
            length = int(length_text)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_text!r}") from None
        if length > service.max_upload_bytes:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload is {length:,} bytes; this server accepts at most {service.max_upload_bytes:,}",
            )
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data" and content_type not in RAW_TYPES:
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {content_type or '(none)'!r} is not an image; send one of "
                f"{', '.join(RAW_TYPES)} or a multipart form with an 'image' field",
            )
        self._body_read = True
        body = self._read_body(length)
        if content_type != "multipart/form-data":
            return body
        return form_image(body, self.headers.get("Content-Type") or "")


class SemaskHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: ModelService, timeout_s: float = 30.0) -> None:
        self.service = service
        self.timeout_s = timeout_s
        super().__init__(address, Handler)


def make_server(
    service: ModelService, host: str = "127.0.0.1", port: int = 8000, timeout_s: float = 30.0
) -> SemaskHTTPServer:
    """A bound server (``port=0`` picks a free one: ``server.server_address[1]``); call ``serve_forever``.

    ``timeout_s``: a connection that sends nothing for that long, or whose upload takes longer, is closed."""
    return SemaskHTTPServer((host, port), service, timeout_s)


def serve(
    model: str | nn.Module,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_mb: float = 10.0,
    max_pixels: int = 4096 * 4096,
    max_side: int = 8192,
    scale: tuple[int, int] | None = FROM_MODEL,
    device: torch.device | str = "cpu",
    amp: str | None = None,
) -> None:
    """Load ``model`` (a path as ``semask predict`` takes, or a module) once and serve it until Ctrl-C.

    Images are segmented with the model's test protocol; ``scale`` replaces its resize (None: the
    original size). ``device`` runs the model there, ``amp`` (``bf16`` / ``fp16``) under autocast."""
    from ..engine.amp import resolve_amp_dtype

    name = str(model) if not isinstance(model, nn.Module) else type(model).__name__
    if not isinstance(model, nn.Module):
        from ..engine.predict import load_model_any

        model, _ = load_model_any(model)
    model = model.to(device)
    service = ModelService(
        model,
        amp_dtype=resolve_amp_dtype(device, amp),
        scale=scale,
        max_pixels=max_pixels,
        max_side=max_side,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        name=name,
    )
    server = make_server(service, host, port)
    bound_host, bound_port = server.server_address[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines; there is no authentication", host)
    print(f"semask serve: {name} on http://{bound_host}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
