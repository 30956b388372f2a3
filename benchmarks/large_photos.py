"""Memory and CPU time of a whole run on large photos (1-8 megapixels, JPEG and PNG), per allocator setting.

    ../.venv/bin/python large_photos.py make /tmp/photos            # 200 train + 60 test photos, ~4 minutes
    ../.venv/bin/python large_photos.py make /tmp/huge --train 120 --test 40 --huge 4   # + 20-85 MP JPEG/PNG
    ../.venv/bin/python large_photos.py run /tmp/photos --malloc runsh glibc arena2 [--set tta.tiles=3 ...]

`make` writes a Kaggle-layout competition (train.csv, test.csv, sample_submission.csv, competition.yaml) of
photos assembled from the faces set: sizes 1-8 megapixels in 1:1, 4:3 and 3:2, half PNG, half JPEG q85-95;
label 1 = StyleGAN2 faces, 0 = FFHQ photos, every file re-encoded so no metadata is left. `--huge n` adds n
more (JPEG and PNG alternately, sizes spread over 20-85 MP: Pillow refuses images over 89.5 MP as decompression
bombs), half to train, half to test.
`run` trains the experiment below once per allocator setting, each in a fresh project folder (nothing
cached between them), while sampling every process of the run's tree (main process, DataLoader workers)
every 0.2 s: peak RSS (VmHWM) per process, and the whole tree's user/system CPU time from wait4.
The experiment is the photo recipe: tf_efficientnet_lite0, 224 px native crops (forensic), batch 32, hflip TTA
over 4x4 tiles + the centre crop (`tta.tiles: 4`; section 8's older rows used `--set tta.tiles=0 tta.crops=5`),
2 folds x 2 epochs, 1 DataLoader worker (this machine's default), OOF + test TTA, activation checkpointing
(`train.grad_checkpointing: true`: one training step at batch 32 held ~4.0-4.1 GB without it, 3.3 GB with it).
Allocator settings (glibc malloc environment):
- runsh:  MALLOC_MMAP_THRESHOLD_=1 GB, MALLOC_TRIM_THRESHOLD_=4 GB (what run.sh exports)
- glibc:  glibc's own defaults (dynamic mmap threshold from 128 KB up to 32 MB)
- arena2: run.sh's old thresholds with MALLOC_ARENA_MAX=2
- mmap32: MALLOC_MMAP_THRESHOLD_=32 MB, MALLOC_TRIM_THRESHOLD_=128 MB (fixed: no dynamic threshold)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from common import FACES, SHARED, table

REPO = Path(__file__).resolve().parent.parent
MALLOC = {
    "runsh": {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"},
    "glibc": {},
    "arena2": {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_ARENA_MAX": "2"},
    "mmap32": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"},
}
MALLOC_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_")
EXPERIMENT = {
    "model": {"name": "tf_efficientnet_lite0", "weights_dir": str(SHARED / "weights")},
    "data": {"img_size": 224, "augment": "forensic"},
    "train": {"epochs": 2, "batch_size": 32, "patience": 0, "grad_checkpointing": True},  # <= 4 GB per process
    "tta": {"views": "hflip", "crops": 1, "tiles": 4},
}


def photo(faces: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A 1-8 megapixel image tiled from 1024 px faces of one class (random offset, aspect 1:1, 4:3 or 3:2)."""
    megapixels = rng.uniform(1.0, 8.0)
    aspect = rng.choice([1.0, 4 / 3, 3 / 2])
    w = int(np.sqrt(megapixels * 1e6 * aspect))
    h = int(megapixels * 1e6 / w)
    reps = (int(np.ceil(h / 1024)) + 1, int(np.ceil(w / 1024)) + 1)
    rows = [np.concatenate([faces[rng.integers(len(faces))] for _ in range(reps[1])], 1) for _ in range(reps[0])]
    canvas = np.concatenate(rows, 0)
    y, x = rng.integers(0, 1024, 2)
    return np.ascontiguousarray(canvas[y:y + h, x:x + w])


def huge(faces: list[np.ndarray], megapixels: float, rng: np.random.Generator) -> np.ndarray:
    """A `megapixels` 4:3 image tiled from 1024 px faces (tiled views, then one copy: cheap to build)."""
    w = int(np.sqrt(megapixels * 1e6 * 4 / 3))
    h = int(megapixels * 1e6 / w)
    row = np.concatenate([faces[rng.integers(len(faces))] for _ in range(4)], 1)
    block = np.concatenate([np.roll(row, -1024 * k, axis=1) for k in range(4)], 0)  # 4096 x 4096
    return np.ascontiguousarray(np.tile(block, (h // 4096 + 1, w // 4096 + 1, 1))[:h, :w])


def encode(image: np.ndarray, fmt: str, rng: np.random.Generator) -> bytes:
    """The image as a PNG (fast zlib level for the huge ones) or a JPEG q85-95, without metadata."""
    buf = io.BytesIO()
    big = image.shape[0] * image.shape[1] > 16e6
    options = {"compress_level": 1 if big else 6} if fmt == "png" else {"quality": int(rng.integers(85, 96))}
    Image.fromarray(image).save(buf, "PNG" if fmt == "png" else "JPEG", **options)
    return buf.getvalue()


def make(out: Path, n_train: int = 200, n_test: int = 60, seed: int = 0, n_huge: int = 0) -> None:
    """Write the large-photo competition to `out` (n_huge 20-85 MP JPEG/PNG files among them)."""
    rng = np.random.default_rng(seed)
    table_ = pd.read_csv(FACES / "train.csv")
    by_label = {k: [np.asarray(Image.open(FACES / f).convert("RGB")) for f in table_[table_["label"] == k]["file_name"][:24]]
                for k in (0, 1)}
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    rows, test_ids = [], []
    sizes = np.linspace(20, 85, n_huge) if n_huge > 1 else [85.0] * n_huge
    jobs = [(i < n_train, None) for i in range(n_train + n_test)]
    jobs += [(k % 4 < 2, float(mp)) for k, mp in enumerate(sizes)]  # JPEG, PNG, JPEG, PNG...; train, train, test..
    for i, (is_train, megapixels) in enumerate(jobs):
        label = int(rng.integers(2))
        image = photo(by_label[label], rng) if megapixels is None else huge(by_label[label], megapixels, rng)
        fmt = ("png" if rng.random() < 0.5 else "jpg") if megapixels is None else ("jpg", "png")[(i - n_train - n_test) % 2]
        name = f"{'train' if is_train else 'test'}/{i:04d}.{fmt}"
        (out / name).write_bytes(encode(image, fmt, rng))
        del image
        if is_train:
            rows.append({"file_name": name, "label": label})
        else:
            test_ids.append(name)
    pd.DataFrame(rows).to_csv(out / "train.csv", index=False)
    pd.DataFrame({"id": test_ids}).to_csv(out / "test.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": 0.5}).to_csv(out / "sample_submission.csv", index=False)
    comp = {"competition": {"name": "photos", "data_dir": str(out), "metric": "auc"},
            "folds": {"n_splits": 2, "audit": False, "shift_check": False}}
    (out / "competition.yaml").write_text(yaml.safe_dump(comp, sort_keys=False))
    sizes = [Image.open(out / r["file_name"]).size for r in rows]
    mp = [w * h / 1e6 for w, h in sizes]
    print(f"wrote {len(rows)} train + {len(test_ids)} test photos to {out}: {min(mp):.1f}-{max(mp):.1f} MP in train")  # noqa: T201


def tree(root: int) -> list[int]:
    """The pids of root and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def status(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS), RssAnon, and Private (USS: pages no other process shares, e.g. copy-on-write copies
    a forked worker made) of a process, in MB (empty when it is gone)."""
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
        rollup = open(f"/proc/{pid}/smaps_rollup").read().splitlines()
    except OSError:
        return {}
    out = {k: int(v.split()[0]) // 1024 for k, v in (line.split(":", 1) for line in lines) if k in ("VmHWM", "VmRSS", "RssAnon")}
    private = [int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean:", "Private_Dirty:"))]
    return {**out, "Private": sum(private) // 1024}


def run_once(data: Path, setting: str, overrides: list[str], work: Path) -> list:
    """One whole run in a fresh project folder under one allocator setting: memory and time figures."""
    home = work / setting
    shutil.rmtree(home, ignore_errors=True)
    (home / "experiments").mkdir(parents=True)
    shutil.copyfile(data / "competition.yaml", home / "competition.yaml")
    (home / "experiments" / "big.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_KEYS}
    env.update({**MALLOC[setting], "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"})
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "competition.experiment", "big", *overrides], cwd=home, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(home / "run.log", "w"))
    peak: dict[int, dict] = {}
    with open(home / "rss.csv", "w") as trace:  # time, pid, RSS, anon MB: which phase a peak belongs to (run.log's clock)
        while proc.poll() is None:
            for pid in tree(proc.pid):
                now = status(pid)
                if now:
                    old = peak.setdefault(pid, dict.fromkeys(now, 0))
                    peak[pid] = {k: max(old[k], now[k]) for k in now}
                    trace.write(f"{time.strftime('%H:%M:%S')},{pid},{now['VmRSS']},{now['RssAnon']}\n")
            time.sleep(0.2)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's whole tree (workers are reaped by it)
    main = peak.pop(proc.pid, {"VmHWM": 0, "RssAnon": 0, "Private": 0})
    worker_rss = max((p["VmHWM"] for p in peak.values()), default=0)
    worker_private = max((p["Private"] for p in peak.values()), default=0)
    metrics = home / "experiments" / "big" / "metrics.json"
    score = json.loads(metrics.read_text())["oof_score"] if metrics.is_file() else float("nan")
    return [setting, " ".join(overrides) or "-", proc.returncode, main["VmHWM"], main["RssAnon"], worker_rss,
            worker_private, len(peak), wall / 60, (after.ru_utime - before.ru_utime) / 60,
            (after.ru_stime - before.ru_stime) / 60, (after.ru_minflt - before.ru_minflt) / 1e6, score]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["make", "run"])
    parser.add_argument("data", type=Path)
    parser.add_argument("--malloc", nargs="+", default=["runsh", "glibc"], choices=sorted(MALLOC))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. tta.tiles=3 tta.crops=1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/large_photos_runs"))
    parser.add_argument("--train", type=int, default=200, help="make: 1-8 MP training photos")
    parser.add_argument("--test", type=int, default=60, help="make: 1-8 MP test photos")
    parser.add_argument("--huge", type=int, default=0, help="make: 20-85 MP JPEG/PNG files added (half to test)")
    args = parser.parse_args()
    if args.action == "make":
        make(args.data, args.train, args.test, n_huge=args.huge)
        return
    rows = []
    for setting in args.malloc:  # one at a time: two runs at once on 2 cores would distort both
        rows.append(run_once(args.data, setting, args.set, args.work))
        print(rows[-1], flush=True)  # noqa: T201
    table(f"Whole run on {args.data} (peak RSS MB; CPU minutes of the whole process tree)",
          ["malloc", "overrides", "exit", "main peak RSS", "main peak anon", "worker peak RSS",
           "worker peak private", "workers", "wall min", "user min", "sys min", "page faults (M)", "OOF AUC"], rows)


if __name__ == "__main__":
    main()
