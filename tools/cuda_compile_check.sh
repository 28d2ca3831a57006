#!/usr/bin/env bash
# Compile and link the CUDA extension's sources on a machine without a GPU (nvcc only), before a
# device call: every generated unit compiled as the build does (-c, the build's flags, in
# parallel) and the objects linked into one shared library (a device function defined in a header
# without internal linkage fails here, not on the device), then bindings.cpp and dispatch.cpp
# checked by g++ against torch's headers. A toolkit of the compiler alone lacks the CUDA library
# headers torch's CUDA headers include: stand-ins declare the handle types they name.
#   bash tools/cuda_compile_check.sh [sm]   (default sm 90; PYTHON: the interpreter with torch)
set -euo pipefail
SM=${1:-90}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/gen" "$WORK/stubs/c10/cuda/impl"
(cd "$ROOT" && "$PY" - "$WORK/gen" <<'PY'
import sys
from pathlib import Path
from quantfuse.custom_ops import cuda_backend
for name, text in cuda_backend._generated_sources().items():
    (Path(sys.argv[1]) / name).write_text(text)
PY
)
stub() { printf '#pragma once\n%s\n' "$2" > "$WORK/stubs/$1.h"; }
stub cusparse 'typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;'
stub cublas_v2 'typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;'
stub cublasLt 'typedef struct cublasLtContext* cublasLtHandle_t;'
stub cusolverDn 'typedef struct cusolverDnContext* cusolverDnHandle_t;'
stub cusolver_common 'typedef int cusolverStatus_t;'
printf '#pragma once\n' > "$WORK/stubs/c10/cuda/impl/cuda_cmake_macros.h"
# the build's nvcc flags: the extension's own (cuda_backend.nvcc_flags) and cpp_extension's common ones
read -ra BUILD_FLAGS <<< "$(cd "$ROOT" && "$PY" -c "
from torch.utils import cpp_extension
from quantfuse.custom_ops import cuda_backend
print(' '.join(cuda_backend.nvcc_flags(divmod(int('$SM'), 10)) + cpp_extension.COMMON_NVCC_FLAGS))")"
FLAGS=("${BUILD_FLAGS[@]}" -I"$ROOT/csrc" -I"$WORK/gen" -Xcompiler -fPIC)
pids=()
for f in "$WORK"/gen/unit_*.cu; do
  nvcc "${FLAGS[@]}" -c "$f" -o "${f%.cu}.o" 2> "${f%.cu}.log" & pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
cat "$WORK"/gen/unit_*.log
[ $status -eq 0 ] || { echo "cuda_compile_check: a unit failed to compile"; exit 1; }
nvcc -shared "$WORK"/gen/unit_*.o -o "$WORK/units.so"
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join(c.include_paths()))")
PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
CUDA_INC=$("$PY" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '/usr/local/cuda')")/include
for f in bindings dispatch; do
  g++ -std=c++17 -fsyntax-only -DTORCH_EXTENSION_NAME=quantfuse_check -DTORCH_API_INCLUDE_EXTENSION_H \
    -I"$ROOT/csrc" -I"$WORK/gen" $(printf -- '-isystem %s ' $TORCH_INC) -isystem "$CUDA_INC" \
    -isystem "$WORK/stubs" -isystem "$PY_INC" "$ROOT/csrc/$f.cpp"
done
echo "cuda_compile_check: every unit compiled for sm_${SM} and linked; bindings.cpp and dispatch.cpp checked"
