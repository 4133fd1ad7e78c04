#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (CI has none): what only a real GPU can show.
#   1. the agent's NVML backend finds the GPUs and names their type (agent/gpus.py,
#      schedulerd/gputype.py);
#   2. `schedulerd --local-agent` registers them and runs a 1-GPU PyTorch job that does an
#      NCCL all_reduce on CUDA (scripts/gpu_check_job.py);
#   3. an elastic job (--gpus 1:1, examples/elastic_train.py) trains on cuda:0.
# Run from the repository root with schedulerd installed in the python3 that has torch
# (without network: `pip wheel --no-deps .` and the dependencies' wheels, installed there).
# What it printed on an H200: docs/design/field-notes.md, "On a real GPU".
set -x
export PYTHONUNBUFFERED=1
REPO=$(pwd)
BIN=$(dirname "$(command -v python3)")
nvidia-smi -L
python3 - <<'PYEOF'
from agent.gpus import NvmlBackend
from schedulerd.gputype import gpu_type, node_gpu_type

backend = NvmlBackend()
devices = backend.discover()
for d in devices:
    print("NVML:", d, "type", gpu_type(d.model))
print("node type", node_gpu_type([d.model for d in devices]))
print("sample", backend.sample([d.index for d in devices]))
PYEOF
WORK=$(mktemp -d)
cd "$WORK" || exit 1
"$BIN/schedulerd" --local-agent > daemon.log 2>&1 &
DAEMON=$!
for _ in $(seq 60); do "$BIN/schedctl" nodes > /dev/null 2>&1 && break; sleep 1; done
"$BIN/schedctl" nodes
timeout 120 "$BIN/schedctl" submit --consumer /default --gpus 1 --wait -- \
  python3 "$REPO/scripts/gpu_check_job.py"; echo "rigid NCCL job: exit $?"
timeout 180 "$BIN/schedctl" submit --consumer /default --gpus 1:1 --wait -- \
  python3 "$REPO/examples/elastic_train.py" --steps 200 --trace "$WORK/trace.jsonl"
echo "elastic job: exit $?"
"$BIN/schedctl" jobs --all
"$BIN/schedctl" logs 1
tail -1 "$WORK/trace.jsonl"
kill -INT $DAEMON; wait $DAEMON
grep -E "agent.gpus|FAKE|Traceback" daemon.log
