"""Two trainings on one machine: how much a busy neighbour slows a training step, by thread setting.

    .venv/bin/python benchmarks/threads.py [--seconds 12]

Each setting runs the measured training (tf_efficientnet_lite0, 32 px x2, batch 64, channels_last: exp001's
step) alone and then beside a neighbour running the same training, both with the same environment. The
OpenMP wait policy decides what an idle intra-op thread does: spin (ACTIVE, the default) or sleep (PASSIVE).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import table

STEP = r"""
import os, sys, time, statistics
import torch, timm
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "0")) or torch.get_num_threads())
model = timm.create_model("tf_efficientnet_lite0", num_classes=1).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(64, 3, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.rand(64)
def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
times, end = [], time.time() + float(sys.argv[1])
while time.time() < end or len(times) < 3:
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    if sys.argv[2] == "forever":
        end = time.time() + 3600
print(statistics.median(times))
"""


def measure(env: dict, seconds: float, neighbour: bool) -> float:
    """Median step seconds of one training, alone or beside a neighbour training."""
    env = {**os.environ, **env}
    other = subprocess.Popen([sys.executable, "-c", STEP, "1", "forever"], env=env, stdout=subprocess.DEVNULL) \
        if neighbour else None
    try:
        if other:
            time.sleep(8)  # the neighbour is past its warm-up and training
        out = subprocess.run([sys.executable, "-c", STEP, str(seconds), "once"], env=env, capture_output=True,
                             text=True, check=True)
        return float(out.stdout.strip())
    finally:
        if other:
            other.kill()
            other.wait()


SETTINGS = [
    ("torch default threads (2), OMP wait ACTIVE", {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("1 thread each", {"BENCH_THREADS": "1"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    rows = []
    for label, env in SETTINGS:
        alone = measure(env, args.seconds, neighbour=False)
        shared = measure(env, args.seconds, neighbour=True)
        rows.append([label, alone, shared, shared / alone])
    table(f"Training step beside a second training ({os.cpu_count()} cores; seconds per step, median)",
          ["setting", "alone", "with a neighbour", "slowdown (fair share = 2x)"], rows)


if __name__ == "__main__":
    main()
