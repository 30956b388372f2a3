"""A small web page and JSON API: drop an image, see P(AI-generated), the label and a Grad-CAM overlay.

    python -m competition.serve exp001 [--port 8000] [--host 127.0.0.1] [--device auto|cpu|cuda]
    python -m competition.serve submissions/<blend>.json

GET /            the page (drag and drop, or choose a file)
POST /predict    multipart field `file` -> {"prob", "label", "label_name", "threshold", "gradcam_png", ...}
GET /health      {"status": "ok", "model": ...}

A request is one image: a run's tta.adapt_bn (BatchNorm adapted on a batch of test images) is not applied
per request; serve answers unadapted and warns once at start.

Binds to 127.0.0.1 by default; a --host that does not resolve or a --port in use is refused before the model loads. Non-images get 415, uploads over --max-mb get 413, both with a JSON reason.
An unfinished experiment (a fold missing, not assembled, or still training) is refused with the fix;
--allow-incomplete serves it anyway, with a loud warning (threshold 0.5 when it has none yet).
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import socket
import sys
from pathlib import Path

import anyio
import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from competition import cli, options
from competition.decode import BadImageError, decode_image
from competition.errors import KitError
from competition.explain import GradCamUnsupported, eval_crop, explain_images
from competition.blend import load_blend
from competition.inference import ALLOW_INCOMPLETE_HELP, load_experiment, predict_image
from competition.model import pick_device
from competition.project import Project

log = logging.getLogger(__name__)

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>AI or human?</title>
<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}#drop{border:3px dashed #888;padding:2em;
text-align:center;border-radius:12px}#drop.over{background:#eef}#result{margin-top:1em;font-size:1.3em}
img{width:256px;image-rendering:pixelated;margin:.5em;vertical-align:top}.ai{color:#b00}.human{color:#070}</style></head><body>
<h1>Is this image AI-generated?</h1><p>Model: <code>__MODEL__</code></p>
<div id="drop">Drop an image here or <input type="file" id="file" accept="image/*"></div>
<div id="result"></div><div id="images"></div>
<script>
const drop = document.getElementById('drop'), result = document.getElementById('result');
async function send(file) {
  result.textContent = 'Analysing ' + file.name + '...';
  const form = new FormData(); form.append('file', file);
  const resp = await fetch('/predict', {method: 'POST', body: form});
  const data = await resp.json();
  if (!resp.ok) { result.innerHTML = '<span class="ai">Error: ' + data.detail + '</span>'; return; }
  result.innerHTML = '<b id="verdict" class="' + (data.label ? 'ai' : 'human') + '">' + data.label_name +
    '</b> &mdash; P(AI-generated) = <span id="prob">' + data.prob.toFixed(4) + '</span> (threshold ' +
    data.threshold.toFixed(3) + ')';
  const imgs = document.getElementById('images'); imgs.innerHTML = '';
  const orig = document.createElement('img'); orig.src = URL.createObjectURL(file); imgs.appendChild(orig);
  if (data.gradcam_png) { const cam = document.createElement('img'); cam.id = 'gradcam';
    cam.src = 'data:image/png;base64,' + data.gradcam_png; imgs.appendChild(cam); }
}
document.getElementById('file').addEventListener('change', e => send(e.target.files[0]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files[0]); });
</script></body></html>"""


class Predictor:
    """Fold models of one experiment, or of every member of a blend, held in memory."""

    def __init__(self, project: Project, target: str, device: torch.device | None = None,
                 allow_incomplete: bool = False):
        self.name = target
        device = device or torch.device("cpu")
        self.blend = load_blend(Path(target)) if target.endswith(".json") else None
        self.members = [load_experiment(project, m, device, allow_incomplete)
                        for m in (self.blend.members if self.blend else [target])]
        self.threshold = self.blend.threshold if self.blend else self.members[0].threshold
        warn_unadapted(self.members)

    def predict(self, image: np.ndarray) -> dict:
        """Probability, label and a Grad-CAM overlay (first member) for one RGB image."""
        probs = np.array([[predict_image(exp, image) for exp in self.members]])
        prob = float(self.blend.apply(probs)[0]) if self.blend else float(probs[0, 0])
        label = int(prob >= self.threshold)
        out = {"prob": prob, "label": label, "label_name": "AI-generated" if label else "human-made",
               "threshold": self.threshold, "model": self.name, "gradcam_png": None}
        first = self.members[0]
        try:
            (overlay,), _ = explain_images(first.models, [eval_crop(first.cfg, image)])
            scale = max(1, 256 // overlay.shape[0])
            buf = io.BytesIO()
            Image.fromarray(overlay).resize((overlay.shape[1] * scale, overlay.shape[0] * scale), Image.NEAREST).save(buf, "PNG")
            out["gradcam_png"] = base64.b64encode(buf.getvalue()).decode()
        except GradCamUnsupported as err:
            out["gradcam_error"] = str(err)
        return out


def warn_unadapted(members: list) -> None:
    """One warning at start naming the members whose run used tta.adapt_bn: a request is one image, which has no
    batch statistics to adapt on, so serve answers with the unadapted fold models (by design, no batch endpoint)."""
    adapted = [exp.name for exp in members if exp.cfg.tta.adapt_bn]
    if adapted:
        log.warning("serve: %s ran with tta.adapt_bn, which is NOT applied per request (one image has no batch "
                    "statistics): answers are unadapted and can differ from its test.csv; predict a whole test set "
                    "adapted with `python -m competition.predict <exp> <folder>` or kaggle_predict", ", ".join(adapted))


class BodyLimit:
    """ASGI middleware: refuse a POST whose declared body is over the limit (413) or undeclared (411), before a
    byte of it is read or spooled."""

    def __init__(self, app, max_mb: float):
        self.app, self.max_mb = app, max_mb
        self.max_bytes = int(max_mb * 2**20) + 64 * 1024  # multipart framing on top of the file

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            status, detail = None, ""
            if length is None:
                status, detail = 411, "send a Content-Length header"
            elif not length.isdigit() or int(length) > self.max_bytes:
                status, detail = 413, f"upload larger than {self.max_mb:g} MB"
            if status:
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(predictor: Predictor, max_mb: float = 20.0, max_queue: int = 8, max_megapixels: float = 40.0) -> FastAPI:
    """The FastAPI application around a loaded Predictor: inference runs on one worker thread, at most
    max_queue requests wait for it (503 beyond), bodies over max_mb and images over max_megapixels are refused."""
    app = FastAPI(title="AI-image detector")
    page = PAGE.replace("__MODEL__", predictor.name)
    worker = anyio.CapacityLimiter(1)  # one inference at a time; the event loop stays free for /health
    waiting = {"n": 0}
    max_pixels = int(max_megapixels * 1e6)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.name, "queued": waiting["n"]}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict:
        if waiting["n"] >= max_queue:
            raise HTTPException(503, f"busy: {waiting['n']} requests queued; retry shortly")
        data = await file.read(int(max_mb * 2**20) + 1)
        if len(data) > max_mb * 2**20:
            raise HTTPException(413, f"upload larger than {max_mb:g} MB")
        if not data:
            raise HTTPException(400, "empty upload")
        waiting["n"] += 1
        try:
            return await anyio.to_thread.run_sync(_answer, predictor, data, max_pixels, limiter=worker)
        finally:
            waiting["n"] -= 1

    return BodyLimit(app, max_mb)


def _answer(predictor: Predictor, data: bytes, max_pixels: int) -> dict:
    """Decode (bounded) and predict one upload, on the worker thread."""
    try:
        image = decode_image(io.BytesIO(data), max_pixels=max_pixels)
    except BadImageError as err:
        raise HTTPException(415, f"not a readable image ({err})") from None
    return predictor.predict(image)


class AddressError(KitError):
    """--host does not resolve, or --port cannot be bound on it."""


def check_bindable(host: str, port: int) -> None:
    """Refuse a --host that does not resolve or a --port that cannot be bound there (a socket is bound, then closed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise AddressError(f"--host {host!r} is not an address of this machine ({err}) - use 127.0.0.1 (this machine "
                           f"only) or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except PermissionError:
            raise AddressError(f"--port {port}: binding a port below 1024 needs root - use --port 8000 (or another "
                               f"port above 1023)") from None
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise AddressError(f"--port {port} on {host} is already in use - pass another port (e.g. --port "
                                   f"{port + 1 if port < 65535 else 8000}) or stop the process using it (lsof -i :{port})")\
                    from None
            raise AddressError(f"--host {host!r} --port {port} cannot be bound ({err.strerror or err}) - use --host "
                               f"127.0.0.1 or an address of this machine") from None


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    import uvicorn

    parser = cli.parser(__doc__, device=True)
    parser.add_argument("model", help="experiment name, or a blend's submissions/<name>.json")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    parser.add_argument("--allow-incomplete", action="store_true", help=ALLOW_INCOMPLETE_HELP)
    parser.add_argument("--port", type=options.port(), default=8000)
    parser.add_argument("--max-mb", type=options.number(float, gt=0, le=10240, unit="MB"), default=20.0,
                        help="largest accepted upload")
    parser.add_argument("--max-queue", type=options.number(int, ge=1, le=10000), default=8,
                        help="requests that may wait for inference (503 beyond)")
    parser.add_argument("--max-megapixels", type=options.number(float, gt=0, le=1000, unit="megapixels"), default=40.0,
                        help="largest decoded image accepted")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        check_bindable(args.host, args.port)  # before minutes of loading the model, not after
        predictor = Predictor(project, args.model, pick_device(args.device), args.allow_incomplete)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        uvicorn.run(create_app(predictor, args.max_mb, args.max_queue, args.max_megapixels), host=args.host, port=args.port, log_level="info")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
