#!/usr/bin/env bash
# On the offline GPU host, from the repo root: the GPU tests and the MSA microbenchmark.
# Usage: scripts/gpu_run.sh OUT_DIR [PART...]; parts: kernel bench exactness pressure latency
# (default all), and page16 (exactness and pressure with --page-size 16 on every server).
# Results (JSON, logs) go to OUT_DIR; set ASYMCACHE_COMMIT when the tree has no .git.
set -eo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?usage: scripts/gpu_run.sh OUT_DIR [PART...]}")
shift
parts=${*:-kernel bench exactness pressure latency}
mkdir -p "$out"
source .gpu/host_env.sh
# The plugin entry point needs an installed distribution; host_env puts /tmp/site on PYTHONPATH.
python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site .
# The checkout's asymcache_sglang/ lacks patches/ and kernels/ (the install maps them in): keep the
# current directory off sys.path so the installed package is the one imported.
export PYTHONSAFEPATH=1
export ASYMCACHE_RESULTS_DIR=$out
status=0
for part in $parts; do
  echo "=== $part ($(date +%T))"
  case $part in
    kernel) python3 -m pytest -q -m gpu tests/test_msa_kernel.py || status=1 ;;
    bench) python3 -m eval.msa_bench --out "$out/msa_microbench.json" --plot || status=1 ;;
    exactness) python3 -m pytest -q -s tests/test_gpu_exactness.py -m gpu || status=1 ;;
    pressure) python3 -m pytest -q -s tests/test_gpu_pressure.py || status=1 ;;
    latency) python3 -m pytest -q -s -m gpu tests/test_gpu_latency.py || status=1 ;;
    page16)
      model=${ASYMCACHE_MODEL:-/tmp/model}
      [ -e "$model/config.json" ] || python3 .gpu/make_model.py "$model" --preset llama3-8b
      python3 -m eval.gpu_exactness --page-size 16 --out-dir "$out/page16" || status=1
      python3 -m eval.gpu_pressure --page-size 16 --model "$model" \
        --out "$out/page16/pressure.json" || status=1 ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
exit $status
