#!/usr/bin/env bash
# The kit's one entry point.
#   ./run.sh exp001 [section.key=value ...] [--restart]   train every fold, OOF + TTA test preds, leaderboard
#   ./run.sh test [pytest args]                           the test suite (what .ci/run calls)
#   ./run.sh audit [--shift]                              shortcut audit, or the train-vs-test shift check
#   ./run.sh folds|ensemble|submit|audit|shift|leaderboard|predict|report|explain|serve|compare [args]   python -m competition.<that>
#   ./run.sh exp001 --devices 0,1 | --folds 0,1 --no-assemble; ./run.sh assemble exp001   folds in parallel
#   ./run.sh kaggle push|status|pull exp001 (push|status BLEND --inference, submit-kernel BLEND: code competitions); ./run.sh bundle exp001 DIR; ./run.sh export exp001 [--fp16]   Kaggle, offline, ONNX
# Python: $KIT_PYTHON if set (e.g. KIT_PYTHON=python3 on a machine that already has torch/timm),
# else .venv, created from requirements.txt on first use and refreshed when requirements.txt changes.
set -euo pipefail
# Paths the person types (images, --csv, --out, KIT_HOME, a YAML) are resolved against the folder the command
# was typed in, not the kit (competition/paths.py).
export KIT_CWD="$PWD"
cd "$(dirname "$0")"

if [[ -n "${KIT_PYTHON:-}" ]]; then
  PY="$KIT_PYTHON"
else
  PY=.venv/bin/python
  stamp=.venv/.requirements.sha256
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [[ ! -x "$PY" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "run.sh: setting up .venv from requirements.txt (first use: a few minutes)" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    echo "$want" > "$stamp"
  fi
fi

# glibc keeps large buffers instead of returning and refaulting them: a whole run on 1-8 MP photos took 3.6 min
# vs 5.7 with glibc's defaults (49.6 M vs 12 M page faults: the system time). The kit returns freed memory
# between phases and in DataLoader workers (competition/allocator.py): peak 4.4 GB main process, not 9.7 GB.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1073741824}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-4294967296}"
# Idle OpenMP threads sleep instead of spinning. Whole runs (benchmarks/thread_policy.py): exp001 1 fold x 1 epoch
# alone 164 s PASSIVE vs 290 s ACTIVE (spinning threads starve the DataLoader workers); large photos alone 154 vs
# 156 s, beside a second run 249 vs 385 s; single steps beside a training slowed 4.8x spinning, 2.1x PASSIVE.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cmd="${1:-}"
[[ -n "$cmd" ]] || { sed -n '2,7p' "$(basename "$0")"; exit 2; }  # $0 as typed may be relative to KIT_CWD
shift
case "$cmd" in
  test)  # one pytest-xdist worker per core, unless the arguments choose (-n N, -p no:xdist)
    xdist=(-n auto --dist loadgroup)
    for a in "$@"; do [[ "$a" == -n* || "$a" == --numprocesses* || "$a" == *no:xdist ]] && xdist=(); done
    exec "$PY" -m pytest ${xdist[@]+"${xdist[@]}"} "$@" ;;  # no path given: pytest.ini's testpaths (tests/)
  audit)  # --shift: the train-vs-test shift check instead of the shortcut audit
    args=(); check=audit
    for a in "$@"; do if [[ "$a" == "--shift" ]]; then check=shift; else args+=("$a"); fi; done
    exec "$PY" -m "competition.$check" ${args[@]+"${args[@]}"} ;;
  folds|ensemble|submit|shift|leaderboard|predict|report|explain|serve|compare) exec "$PY" -m "competition.$cmd" "$@" ;;
  assemble) exec "$PY" -m competition.experiment "$@" --assemble ;;
  kaggle) exec "$PY" -m competition.kaggle_kernel "$@" ;;
  bundle|export) exec "$PY" -m "competition.$cmd" "$@" ;;
  config) exec "$PY" -m competition.config_reference "$@" ;;  # [exp] [key=value ...]: every key, value, origin
  *) exec "$PY" -m competition.experiment "$cmd" "$@" ;;
esac
