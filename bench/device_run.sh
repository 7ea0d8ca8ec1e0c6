#!/usr/bin/env bash
# The GPU benchmark as one prepared run on a lent GPU machine (one H200, no network, its own
# Python image: torch, transformers, numpy, pyarrow; no Ray, FlagEmbedding or `datasets`).
#
# Wheels to carry: none. Every import on this path is in the image (torch, transformers,
# tokenizers, safetensors, numpy, pyarrow); the models are random-weight bge-m3 and
# bge-reranker-large architectures built on the machine, the tokenizer a vocabulary built in
# bench/gpu.py, so nothing is downloaded. Should a package ever be missing, carry it as wheels
# in the git-ignored /.whl/ folder (see the device tool's README) and name ".whl" in `carry`.
#
# The device tool sends the checkout its session started in: this script must be on that
# checkout's branch. From the session, one call (the whole script stays under 8 minutes):
#     run(command="bash bench/device_run.sh", timeout_s=540)
# Results: $OUT/image.json, $OUT/gpu.json, $OUT/topk.json and $OUT/log.txt.
#
# Here, without a GPU (the same path on a CPU, tiny sizes, in seconds):
#     OUT=/tmp/device-out bash bench/device_run.sh --cpu-smoke
#
# Each part has its own time limit, so one failure cannot use up the lease; the script goes
# on to the next part and exits non-zero if any part failed.
set -u
cd "$(dirname "$0")/.."
mode=full
if [ "${1:-}" = "--cpu-smoke" ]; then mode=cpu-smoke; fi
OUT=${OUT:-$PWD/runs/device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/log.txt") 2>&1

log() { echo "[$(date -u +%H:%M:%S)] $*"; }
failed=0
part() {  # part NAME SECONDS COMMAND...: run COMMAND under a time limit, log how it ended
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  log "start $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  local status=$?
  if [ $status -eq 0 ]; then
    log "done $name in $((SECONDS - started)) s"
  else
    failed=1
    [ $status -eq 124 ] && log "TIMEOUT $name after $limit s" || log "FAILED $name: exit $status"
  fi
  return $status
}

if [ "$mode" = full ]; then
  device=cuda need_cuda=1
  gpu_args=(--size full --texts 20000 --batch-size 256 --precisions fp16,bf16)
  topk_args=(--corpus 1000000 --dim 1024 --queries 6980 --k 1000 --check-queries 8)
  limits=(45 240 180)
else
  device=cpu need_cuda=0
  gpu_args=(--size tiny --texts 32 --batch-size 16 --precisions fp32)
  topk_args=(--corpus 40000 --dim 32 --queries 2000 --k 20 --check-queries 8)  # 3 blocks
  limits=(45 120 60)
fi
log "mode $mode, python $PY, out $OUT"

part image "${limits[0]}" "$PY" - "$need_cuda" "$OUT/image.json" <<'EOF' || exit 2
import importlib.util, json, platform, sys

need_cuda, out = sys.argv[1] == "1", sys.argv[2]
import numpy, pyarrow, tokenizers, torch, transformers


def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


info = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "numpy": numpy.__version__,
    "pyarrow": pyarrow.__version__,
    "absent": [m for m in ("ray", "FlagEmbedding", "datasets") if not importable(m)],
}
print(json.dumps(info))
with open(out, "w") as handle:
    json.dump(info, handle, indent=2)
if need_cuda and not info["cuda_available"]:
    sys.exit("torch sees no CUDA device: stopping before the benchmarks")
EOF

part gpu "${limits[1]}" "$PY" bench/gpu.py --device "$device" "${gpu_args[@]}" --output "$OUT/gpu.json"
part topk "${limits[2]}" "$PY" bench/gpu_topk.py --device "$device" "${topk_args[@]}" --output "$OUT/topk.json"
log "finished: $( [ $failed -eq 0 ] && echo 'every part done' || echo 'some part FAILED' ); results in $OUT"
exit $failed
