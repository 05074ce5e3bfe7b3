"""semask serve: the JSON endpoint, its limits and error answers, and the page in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import NAMED_TINY
from PIL import Image

import semask
from semask.cli import build_parser
from semask.serve import ModelService, make_server
from semask.serve.app import MAX_FORM_PARTS
from semask.serve.page import PAGE

K = NAMED_TINY["num_classes"]
NAMES = NAMED_TINY["class_names"]
MAX_BYTES = 200_000
MAX_PIXELS = 120 * 120


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return semask.create_model("semask_swin_t_fpn", **NAMED_TINY).eval()


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def scene(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Any, ModelService]]:
    service = ModelService(tiny_model(), max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, name="tiny")
    httpd = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, service
    httpd.shutdown()
    httpd.server_close()


def request(
    httpd: Any, method: str, path: str, body: bytes | None = None, content_type: str | None = None
) -> tuple[int, dict[str, Any] | str]:
    conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data.decode()


def decode_png(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def test_predict_returns_the_label_png_of_semask_predict(server: Any) -> None:
    httpd, service = server
    image = scene()
    status, answer = request(httpd, "POST", "/predict", png_bytes(image), "image/png")
    assert status == 200, answer
    label = decode_png(answer["label_png"])
    expected = semask.predict(service.model, image)
    np.testing.assert_array_equal(label, expected)
    assert (answer["width"], answer["height"]) == (80, 60)
    counts = np.bincount(expected.ravel(), minlength=K)
    assert {c["name"]: c["share"] for c in answer["classes"]} == pytest.approx(
        {NAMES[i]: counts[i] / expected.size for i in range(K) if counts[i]}
    )
    shares = [c["share"] for c in answer["classes"]]
    assert shares == sorted(shares, reverse=True)
    colours = decode_png(answer["color_png"])
    palette = np.asarray(service.palette, np.uint8)
    np.testing.assert_array_equal(colours, palette[expected])
    assert "priors" not in answer


def test_the_model_protocol_decides_unless_told_otherwise() -> None:
    """Labels come from the model's test protocol (here sliding windows on a resized image), with or
    without priors; ``scale`` replaces its resize."""
    model = tiny_model()
    protocol = {"mode": "slide", "crop_size": [32, 32], "stride": [24, 24], "scale": [96, 48]}
    model.config = dataclasses.replace(model.config, protocol=protocol)
    image = scene()
    expected = semask.predict(model, image)
    assert not np.array_equal(expected, semask.predict(model, image, mode="whole", scale=None))
    for priors in (False, True):
        answer = ModelService(model).run(image, priors=priors)
        np.testing.assert_array_equal(decode_png(answer["label_png"]), expected)
    native = ModelService(model, scale=None).run(image)
    np.testing.assert_array_equal(decode_png(native["label_png"]), semask.predict(model, image, scale=None))


def test_amp_runs_each_request_under_autocast() -> None:
    """``serve --amp`` autocasts in the request's own thread (autocast state is per thread)."""
    model = tiny_model()
    seen: list[tuple[bool, torch.dtype]] = []
    model.register_forward_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
    )
    service = ModelService(model, amp_dtype=torch.bfloat16)
    worker = threading.Thread(target=service.run, args=(scene(),))
    worker.start()
    worker.join()
    ModelService(model).run(scene())
    assert seen == [(True, torch.bfloat16), (False, torch.bfloat16)]


def test_priors_multipart_and_jpeg(server: Any) -> None:
    httpd, service = server
    image = scene(seed=3)
    status, answer = request(httpd, "POST", "/predict?priors=1&top_k=2", png_bytes(image), "image/png")
    assert status == 200
    assert [s["stage"] for s in answer["priors"]] == [0, 1, 2, 3]
    present = len(np.unique(semask.predict(service.model, image)))
    for stage in answer["priors"]:
        assert decode_png(stage["argmax_png"]).shape == (60, 80, 3)
        assert len(stage["heatmaps"]) == min(2, present) and decode_png(stage["heatmaps"][0]["png"]).shape == (
            60,
            80,
            3,
        )
    np.testing.assert_array_equal(decode_png(answer["label_png"]), semask.predict(service.model, image))
    boundary = "semaskboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes(image)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, multi = request(httpd, "POST", "/predict", body, f"multipart/form-data; boundary={boundary}")
    assert status == 200
    assert multi["label_png"] == answer["label_png"]
    jpeg = png_bytes(image, "JPEG")
    status, answer = request(httpd, "POST", "/predict", jpeg, "image/jpeg")
    assert status == 200
    decoded = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    np.testing.assert_array_equal(decode_png(answer["label_png"]), semask.predict(service.model, decoded))


def test_error_answers(server: Any) -> None:
    httpd, _ = server
    status, answer = request(httpd, "POST", "/predict", b"\x89PNG\r\n\x1a\n" + b"broken" * 50, "image/png")
    assert status == 400 and "could not decode" in answer["error"]
    status, answer = request(httpd, "POST", "/predict", b"x" * (MAX_BYTES + 1), "image/png")
    assert status == 413 and f"{MAX_BYTES:,}" in answer["error"]
    big = np.zeros((121, 120, 3), np.uint8)  # 14,520 pixels > 14,400, a tiny file
    assert len(png_bytes(big)) < MAX_BYTES
    status, answer = request(httpd, "POST", "/predict", png_bytes(big), "image/png")
    assert status == 422 and "121 = 14,520 pixels" in answer["error"]
    status, answer = request(httpd, "POST", "/predict", b"hello", "text/plain")
    assert status == 415 and "'text/plain' is not an image" in answer["error"]
    status, answer = request(httpd, "POST", "/predict", png_bytes(scene()))  # no Content-Type
    assert status == 415
    status, answer = request(httpd, "POST", "/nowhere", b"", "image/png")
    assert status == 404
    # the server still works after the errors
    status, answer = request(httpd, "POST", "/predict", png_bytes(scene()), "image/png")
    assert status == 200


def test_concurrent_requests_are_queued(server: Any) -> None:
    httpd, service = server
    images = [scene(seed=s) for s in range(4)]
    results: dict[int, Any] = {}

    def post(i: int) -> None:
        results[i] = request(httpd, "POST", "/predict", png_bytes(images[i]), "image/png")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, answer) in results.items():
        assert status == 200
        np.testing.assert_array_equal(decode_png(answer["label_png"]), semask.predict(service.model, images[i]))


def test_page_info_and_defaults(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    httpd, _ = server
    monkeypatch.chdir(tmp_path)
    status, page = request(httpd, "GET", "/")
    assert status == 200 and 'id="opacity"' in page and "/predict" in page
    assert "http://" not in PAGE and "https://" not in PAGE and "<link" not in PAGE  # no CDN assets
    status, info = request(httpd, "GET", "/info")
    assert status == 200 and info["class_names"] == NAMES and info["has_priors"]
    assert sorted(info["lambda"]) == ["stage0", "stage1", "stage2", "stage3"]
    request(httpd, "POST", "/predict?priors=1", png_bytes(scene()), "image/png")
    assert list(tmp_path.iterdir()) == []  # nothing written to the working folder
    args = build_parser().parse_args(["serve", "model_dir"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def drive_page(url: str, image_path: Path, screenshot: Path, opacity: int = 35) -> dict[str, Any]:
    """Upload ``image_path`` on the page at ``url`` in headless Chromium, move the slider, screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.fill("#opacity", str(opacity))  # moves the range input and fires 'input'
        state = page.evaluate(
            """() => ({
                opacity: document.getElementById('mask').style.opacity,
                label: document.getElementById('opacity-value').textContent,
                legendRows: document.querySelectorAll('#legend tr').length - 1,
                stages: document.querySelectorAll('#priors .stage').length,
                maskLoaded: document.getElementById('mask').naturalWidth,
                status: document.getElementById('status').textContent,
            })"""
        )
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return state


@pytest.mark.slow
def test_page_in_headless_chromium(server: Any, tmp_path: Path) -> None:
    if _browser() is None:
        pytest.skip("no chromium / chromium-browser / google-chrome on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    httpd, _ = server
    image_path = tmp_path / "scene.png"
    Image.fromarray(scene(90, 120)).save(image_path)
    shot = Path(os.environ.get("SEMASK_SCREENSHOT", tmp_path / "page.png"))
    state = drive_page(f"http://127.0.0.1:{httpd.server_address[1]}/", image_path, shot, opacity=35)
    assert state["opacity"] == "0.35" and state["label"] == "35%"
    assert state["maskLoaded"] == 120
    assert state["stages"] == 4
    label = semask.predict(tiny_model(), np.array(Image.open(image_path)))
    assert state["legendRows"] == len(np.unique(label))
    assert "segmented" in state["status"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- issue 23: a few requests cannot tie it up


@contextlib.contextmanager
def serving(model: torch.nn.Module, timeout_s: float = 30.0, **limits: Any) -> Iterator[tuple[Any, ModelService]]:
    service = ModelService(model, name="tiny", **limits)
    httpd = make_server(service, "127.0.0.1", 0, timeout_s=timeout_s)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd, service
    finally:
        httpd.shutdown()
        httpd.server_close()


def empty_fields_form(count: int, boundary: str = "b0und") -> bytes:
    """What a hostile client sends: a form of ``count`` empty fields (the email parser needed 17 s for 150k)."""
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'.encode()
    return field * count + f"--{boundary}--\r\n".encode()


def test_the_queue_limit_applies_before_an_upload_is_read_or_parsed() -> None:
    form = empty_fields_form(150_000)
    with serving(tiny_model(), max_queue=1, max_upload_bytes=len(form) + 1) as (httpd, service):
        results: dict[str, Any] = {}
        service.lock.acquire()  # the model is busy: the next request takes the only place and waits
        waiting = threading.Thread(
            target=lambda: results.update(first=request(httpd, "POST", "/predict", png_bytes(scene()), "image/png"))
        )
        waiting.start()
        try:
            deadline = time.monotonic() + 30
            while service.slots._value and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.01)
            start = time.monotonic()
            status, answer = request(httpd, "POST", "/predict", form, "multipart/form-data; boundary=b0und")
            assert status == 503 and "busy" in answer["error"]  # type: ignore[index]
            assert time.monotonic() - start < 3
        finally:
            service.lock.release()
        waiting.join()
        assert results["first"][0] == 200
        start = time.monotonic()  # admitted now: parsed only up to MAX_FORM_PARTS parts
        status, answer = request(httpd, "POST", "/predict", form, "multipart/form-data; boundary=b0und")
        assert status == 413 and f"more than {MAX_FORM_PARTS} parts" in answer["error"]  # type: ignore[index]
        assert time.monotonic() - start < 3
        image_part = (
            b'--b0und\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png_bytes(scene()) + b"\r\n--b0und--\r\n"
        )
        few = empty_fields_form(5)[: -len(b"--b0und--\r\n")] + image_part  # a few other fields first: fine
        status, answer = request(httpd, "POST", "/predict", few, "multipart/form-data; boundary=b0und")
        assert status == 200
        status, answer = request(httpd, "POST", "/predict", empty_fields_form(3), "multipart/form-data; boundary=b0und")
        assert status == 400 and "no 'image' field" in answer["error"]  # type: ignore[index]


def test_sides_are_bounded_as_well_as_the_pixel_count(server: Any) -> None:
    httpd, _ = server
    strip = np.zeros((1, 8200, 3), np.uint8)  # 8,200 pixels: under max_pixels, but one side of 8,200
    status, answer = request(httpd, "POST", "/predict", png_bytes(strip), "image/png")
    assert status == 422 and "sides of at most 8,192 pixels" in answer["error"]  # type: ignore[index]


def test_idle_and_slow_connections_are_closed() -> None:
    import socket

    with serving(tiny_model(), timeout_s=1.0) as (httpd, _):
        port = httpd.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            start = time.monotonic()
            assert idle.recv(1024) == b""  # closed by the server, not by our 10 s timeout
            assert time.monotonic() - start < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
            )
            slow.sendall(b"\x89PNG\r\n\x1a\n")  # and then nothing more
            answer = b""
            while chunk := slow.recv(4096):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        status, _ = request(httpd, "POST", "/predict", png_bytes(scene()), "image/png")
        assert status == 200  # the server itself is fine


def test_an_image_the_model_cannot_segment_is_a_422() -> None:
    from conftest import MIT_TINY

    torch.manual_seed(0)
    model = semask.create_model("semask_mit_b0", num_classes=4, **MIT_TINY).eval()
    with serving(model) as (httpd, _):
        status, answer = request(httpd, "POST", "/predict", png_bytes(np.zeros((10, 2000, 3), np.uint8)), "image/png")
        assert status == 422
        assert answer["error"] == (  # the reason, without the type name of the error
            "cannot segment the upload (2000x10 pixels): a 3x500 stage map is smaller than its spatial-reduction "
            "ratio 8; the input image is too small for this model"
        )
        assert "too small for this model" in answer["error"]  # type: ignore[index]
        status, _ = request(httpd, "POST", "/predict", png_bytes(scene()), "image/png")
        assert status == 200


def test_info_reads_lambda_from_the_current_weights() -> None:
    """No snapshot of a function of the parameters: /info after an update shows the new lambda."""
    model = tiny_model()
    service = ModelService(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lambda_"):
                param.fill_(0.25)
    assert set(service.info()["lambda"].values()) == {0.25}


def test_unnamed_classes_have_the_same_names_and_colours_everywhere() -> None:
    """Review finding 16: the web demo called unnamed classes "class 0", ... while predict, the
    ONNX metadata and the Hugging Face export called them "0", ...; one fallback now serves all."""
    from conftest import TINY

    from semask.explain import explain
    from semask.export import onnx_metadata
    from semask.models.palettes import default_palette

    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", num_classes=3, **TINY).eval()
    names, colours = ["0", "1", "2"], default_palette(3)
    assert model.config.names() == names and model.config.colours() == colours
    info = ModelService(model).info()
    assert info["class_names"] == names and info["palette"] == colours
    assert semask.predict(model, [scene()])[0].class_names == names
    metadata = onnx_metadata(model)
    assert json.loads(metadata["class_names"]) == names and json.loads(metadata["palette"]) == colours
    explained = explain(model, scene(), scale=None)
    assert explained.class_names == names and explained.palette == colours
    named = semask.create_model("semask_swin_t_fpn", num_classes=3, class_names=["a", "b", "c"], **TINY)
    named.config.palette = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]  # more colours than classes
    assert named.config.names() == ["a", "b", "c"] and named.config.colours() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
