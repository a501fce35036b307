#!/usr/bin/env bash
# One prepared check on a machine with a GPU (a few minutes): the quality preset's single run and
# a stacked group of seed-preset runs, each trained on the CPU and with --device cuda; their
# selected test metrics must agree within 1e-3, and the table gives each one's throughput.
#
#   bash benchmarks/device_check.sh            # from the repository root, on the GPU machine
#   DEVICE=cpu bash benchmarks/device_check.sh # the same script against the CPU alone (a dry run)
#
# It needs mtrec's dependencies importable by $PYTHON (default python3); it runs mtrec from src/.
# Data: MovieLens 100K where $MTREC_DATA_DIR holds ml-100k/, else a synthetic file of the same
# shape (mtrec synth: 100,000 ratings, 943 users, 1,682 items). Results go to $OUT (default a
# temporary folder): device_check.txt, and the runs.
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS_QUALITY=${EPOCHS_QUALITY:-15}
EPOCHS_STACKED=${EPOCHS_STACKED:-30}
SEEDS=${SEEDS:-0-7}
OUT=${OUT:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

missing=$("$PYTHON" - <<'EOF'
import importlib.util
names = ["torch", "numpy", "pydantic", "safetensors", "tqdm", "tensorboard", "pandas", "pyarrow", "scipy"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "device_check: missing Python packages: $missing (carry them as wheels; see the device tool's README)" >&2
    exit 2
fi
"$PYTHON" -c "import torch, sys; d = sys.argv[1]; ok = d == 'cpu' or torch.cuda.is_available(); print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'); sys.exit(0 if ok else 3)" "$DEVICE"

if [ -n "${MTREC_DATA_DIR:-}" ] && [ -f "$MTREC_DATA_DIR/ml-100k/u.data" ]; then
    DATA=(--dataset 100k --data-dir "$MTREC_DATA_DIR")
    echo "data: MovieLens 100K from $MTREC_DATA_DIR"
else
    "$PYTHON" -m mtrec synth --out "$WORK/ratings.csv" --num-ratings 100000 --num-users 943 --num-items 1682 --seed 0 >/dev/null
    DATA=(--ratings "$WORK/ratings.csv")
    echo "data: synthetic, 100,000 ratings (no MovieLens under MTREC_DATA_DIR)"
fi

timed() {  # timed NAME ARGS...: one mtrec train, its wall seconds appended to $WORK/times
    local name=$1; shift
    local began ended
    began=$(date +%s.%N)
    "$PYTHON" -m mtrec train "$@" "${DATA[@]}" --no-progress --logdir "$OUT/$name" >"$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log" >&2; exit 1; }
    ended=$(date +%s.%N)
    echo "$name $(echo "$ended $began" | awk '{print $1 - $2}')" >>"$WORK/times"
}

QUALITY=(--preset quality --epochs "$EPOCHS_QUALITY")
STACKED=(--preset seed --epochs "$EPOCHS_STACKED" --seeds "$SEEDS")
timed quality-cpu "${QUALITY[@]}" --device cpu
timed quality-device "${QUALITY[@]}" --device "$DEVICE"
timed stacked-cpu "${STACKED[@]}" --stack auto --device cpu
timed stacked-device "${STACKED[@]}" --stack auto --device "$DEVICE"
timed sequential-device "${STACKED[@]}" --stack 1 --device "$DEVICE"

"$PYTHON" - "$OUT" "$WORK/times" "$DEVICE" "$EPOCHS_QUALITY" "$EPOCHS_STACKED" <<'EOF' | tee "$OUT/device_check.txt"
import json, sys
from pathlib import Path
out, times, device, epochs_q, epochs_s = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
seconds = dict(line.split() for line in open(times))
def runs(name):
    found = {}
    for path in sorted((out / name).rglob("metrics.json")):
        m = json.loads(path.read_text())
        chosen = m.get("model") or m["selected"]
        found[str(path.parent.relative_to(out / name))] = {k: v for k, v in chosen.items() if k.startswith("test_") and isinstance(v, float)}
    return found
failed = False
print(f"device: {device} ('-device' rows)")
print(f"{'what':<22} {'runs':>4} {'seconds':>8} {'run-epochs/s':>13} {'max |Δ| vs cpu':>15}")
for what, reference, epochs in (("quality", "quality-cpu", epochs_q), ("stacked", "stacked-cpu", epochs_s), ("sequential", "stacked-cpu", epochs_s)):
    for name in ([f"{what}-cpu"] if what != "sequential" else []) + [f"{what}-device"]:
        if name not in seconds:
            continue
        got, ref = runs(name), runs(reference)
        assert got.keys() == ref.keys(), (name, got.keys(), ref.keys())
        worst = max(abs(v - ref[run][k]) for run, values in got.items() for k, v in values.items())
        failed |= worst > 1e-3
        rate = len(got) * epochs / float(seconds[name])
        print(f"{name:<22} {len(got):>4} {float(seconds[name]):>8.1f} {rate:>13.1f} {worst:>15.2g}")
print("FAIL: a metric differs from the CPU's by more than 1e-3" if failed else "PASS: every metric within 1e-3 of the CPU's")
sys.exit(1 if failed else 0)
EOF
