"""The web page in a real headless browser (Debian's chromium via Playwright), and the JSON API's refusals."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import CIFAKE, REPO, call_kit, smoke_experiment

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_file(url: str, name: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def server(home):
    smoke_experiment(home, "web", train={"folds": [0]})
    call_kit(home, "competition.experiment", "web")
    port = free_port()
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "competition.serve", "web", "--port", str(port), "--max-mb", "1"],
                            cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_api_predicts_and_refuses_bad_uploads(server):
    image = next((CIFAKE / "test_data_v2").glob("*.jpg")).read_bytes()
    status, data = post_file(server + "/predict", "x.jpg", image)
    assert status == 200 and 0 <= data["prob"] <= 1 and data["label_name"] in ("AI-generated", "human-made")
    assert data["gradcam_png"]
    status, data = post_file(server + "/predict", "notes.jpg", b"plain text, not an image")
    assert status == 415 and "not a readable image" in data["detail"]
    status, data = post_file(server + "/predict", "big.jpg", b"\xff" * (2 * 2**20))
    assert status == 413 and "larger than 1 MB" in data["detail"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    image = next((CIFAKE / "test_data_v2").glob("*.jpg"))
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page()
        page.goto(server)
        assert "Is this image AI-generated?" in page.content()
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#verdict", timeout=60_000)
        page.wait_for_selector("#gradcam", timeout=10_000)
        verdict = page.inner_text("#verdict")
        prob = float(page.inner_text("#prob"))
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert verdict in ("AI-generated", "human-made") and 0 <= prob <= 1
    assert (tmp_path / "page.png").stat().st_size > 10_000
