#!/usr/bin/env bash
# The checks and benchmarks that need a CUDA GPU, in one run:
#
#     bash benchmarks/gpu.sh OUT_DIR
#
# runs tests/test_cuda.py (one device read per step, deferred records, CUDA records equal to the
# CPU's, inductor, AMP training, resume) and the CUDA cases of tests/test_monitor.py, then the
# throughput and overhead benchmarks, all on the GPU. OUT_DIR gets test_cuda.log, throughput.json and overhead.json; copy the two JSON files
# into benchmarks/gpu/ and run
# `python benchmarks/run_all.py --render-only` to put them in BENCHMARKS.md.
# Uses $PYTHON (default: the python3 on PATH), which needs a CUDA build of torch (the .venv's is
# the CPU build), and this checkout's sources without installing.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" MPLCONFIGDIR="${TMPDIR:-/tmp}/gradhealth-mpl" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
status=0
"$py" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_monitor.py -k cuda \
    2>&1 | tee "$out/test_cuda.log" || status=1
"$py" benchmarks/throughput.py --device cuda --out "$out/throughput.json" || status=1
"$py" benchmarks/overhead.py --device cuda --steps 30 --out "$out/overhead.json" || status=1
exit $status
