#!/usr/bin/env bash
# GPU check (DESIGN.md section 4): the CUDA tests, then the GPU benchmarks, in under 5 minutes on
# one H200. Needs a CUDA build of torch, triton and the dev extra (pytest, pytest-benchmark);
# pykeops is optional (its providers skip without it).
#
#     bash bench/gpu_check.sh [RESULTS_DIR]      # default: gpu-check-results
#
# Steps (each under its own time limit; a failing step does not stop the later ones, the exit
# status is 1 if any failed):
#   1. every test marked `cuda` (the Triton ops against the float64 reference, TF32 tolerance,
#      autograd/opcheck on CUDA tensors); most of its time is Triton compiling each kernel variant
#   2. bench_gram + bench_kernel_mv at the full sizes on CUDA tensors: fastkernels (Triton)
#      against torch mm-exp / cdist-exp / bare GEMM / blocked torch / pykeops
#   3. ntk_gram / ntk_mv (Triton) at the full bench_ntk size against the torch.mm calls they
#      replace (bench_ntk.py builds its workloads on the CPU, so this step times them here)
#   4. bench_train at E = 256 width-256 members: the Triton resnet ops against a loop of eager
#      networks and vmap
# Results: RESULTS_DIR/cuda-tests.txt, bench.txt + bench.json (pytest-benchmark), ntk.txt,
# train.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check-results}"
mkdir -p "$out"
# Compiled kernels: under TRITON_INTERPRET=1 the "CUDA" ops would run in the interpreter.
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"

python - <<'PY' || exit 1
import torch

import fastkernels.ops as ops

assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device"
assert ops.HAS_TRITON, "gpu_check: triton did not import; the CUDA ops would run the reference"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY

status=0
step() {  # step NAME LIMIT_S LOG COMMAND...: time-limited, output also in LOG; failures counted
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || status=1
}

step "CUDA tests" 180 "$out/cuda-tests.txt" python -m pytest -q -m cuda tests

step "benchmarks gram + kernel_mv (full, cuda)" 80 "$out/bench.txt" \
    env FASTKERNELS_BENCH_SIZE=full FASTKERNELS_BENCH_DEVICE=cuda \
    python -m pytest -q bench/bench_gram.py bench/bench_kernel_mv.py \
    --benchmark-only --benchmark-warmup=on --benchmark-warmup-iterations=1 \
    --benchmark-min-rounds=3 --benchmark-max-time=0.5 \
    --benchmark-columns=min,median,rounds --benchmark-json="$out/bench.json"

step "ntk_gram / ntk_mv (full, cuda)" 30 "$out/ntk.txt" python - <<'PY'
import torch

from fastkernels.ops import ntk_gram, ntk_mv


def timed(fn, reps=3):
    fn()  # compile / warm up
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times)


# bench_ntk.py's full ntk_gram_large workload: N = 20000, width 512, d = 100, k = 1.
n, m, d = 20000, 512, 100
g = torch.Generator().manual_seed(2)
a = [torch.randn(n, d + 1, generator=g).cuda(), torch.randn(n, m + 1, generator=g).cuda()]
b = [torch.randn(n, m, generator=g).cuda(), torch.randn(n, m, generator=g).cuda()]
v = torch.randn(n, 16, generator=g).cuda()
flop = 2 * n * n * sum(t.shape[1] for t in a + b)


def unfused():
    return sum((x @ x.T) * (y @ y.T) for x, y in zip(a, b))


def factor_grams():  # the GEMMs alone: the floor of any unfused version
    for x, y in zip(a, b):
        torch.mm(x, x.T)
        torch.mm(y, y.T)


tf32 = torch.backends.cuda.matmul.allow_tf32
ref = unfused()
err = ((ntk_gram(a, b, a, b) - ref).abs().max() / ref.abs().max()).item()
print(f"ntk_gram {n}x{n} float32: max |error| / max |K| = {err:.1e} (torch.mm TF32: {tf32})")
del ref
rows = [
    ("fastkernels ntk_gram (Triton)", lambda: ntk_gram(a, b, a, b), flop),
    ("torch unfused (mm, mm, *, +)", unfused, flop),
    ("torch.mm factor grams only", factor_grams, flop),
    ("fastkernels ntk_mv T=16 (Triton)", lambda: ntk_mv(a, b, a, b, v), flop + 2 * n * n * 16),
    ("torch unfused K, then K @ v", lambda: unfused() @ v, flop + 2 * n * n * 16),
]
for name, fn, f in rows:
    t = timed(fn)
    print(f"{name:<36} {t * 1e3:9.2f} ms  {f / t / 1e12:6.2f} TFLOP/s")
PY

step "train 3resnet, E = 256 members (full, cuda)" 120 "$out/train.txt" \
    env FASTKERNELS_BENCH_SIZE=full FASTKERNELS_BENCH_DEVICE=cuda \
    python -m pytest -q bench/bench_train.py -k "m256-E256" \
    --benchmark-only --benchmark-warmup=on --benchmark-warmup-iterations=1 \
    --benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-columns=min,median,rounds

echo "== gpu_check: $([ "$status" -eq 0 ] && echo ok || echo FAILED); results in $out/"
exit "$status"
