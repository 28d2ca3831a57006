// Every fp32 gate value g with |g| < 87 (kSiluFastLimit) through the kernels' silu_fast
// against silu_exact, the formula torch's CUDA silu evaluates (accurate expf, IEEE add
// and division): bit patterns must match ("mismatches 0"). Outside that range, and for
// NaN, the kernels call silu_exact itself; the count of silu_fast's differences there is
// printed for information (it is why the guard exists).
// Build and run on a GPU (about 1 s on an H100):
//   nvcc -O3 -std=c++17 -arch=native -I csrc benchmarks/silu_exhaustive.cu -o /tmp/sx && /tmp/sx
// tests/gpu/test_kernels.py (test_silu_fp32_every_value) checks all 2^32 values through
// the built kernels against torch's F.silu.
#include "act_quant.cuh"

#include <cstdio>
#include <cstring>

using namespace quantfuse;

__global__ void check(unsigned long long* count, uint32_t* samples, uint32_t base) {
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < (1u << 28); k += gridDim.x * blockDim.x) {
    const uint32_t bits = base + k;
    const float g = __uint_as_float(bits);
    const bool inside = fabsf(g) < kSiluFastLimit;
    if (__float_as_uint(silu_fast(g)) != __float_as_uint(silu_exact(g))) {
      const unsigned long long n = atomicAdd(&count[inside ? 0 : 1], 1ull);
      if (inside && n < 8) samples[n] = bits;
    }
  }
}

int main() {
  unsigned long long* count;
  uint32_t* samples;
  cudaMallocManaged(&count, 2 * sizeof(*count));
  cudaMallocManaged(&samples, 8 * sizeof(*samples));
  count[0] = count[1] = 0;
  for (uint32_t chunk = 0; chunk < 16; ++chunk) check<<<4096, 256>>>(count, samples, chunk << 28);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    printf("error %s\n", cudaGetErrorString(err));
    return 1;
  }
  printf("mismatches %llu (|g| < %g)\n", count[0], kSiluFastLimit);
  for (unsigned long long i = 0; i < count[0] && i < 8; ++i) {
    float g;
    std::memcpy(&g, &samples[i], sizeof(g));
    printf("  g %08x (%.9g)\n", samples[i], g);
  }
  printf("silu_fast differs from silu_exact for %llu values outside (|g| >= %g or NaN: silu_exact used)\n",
         count[1], kSiluFastLimit);
  return count[0] == 0 ? 0 : 1;
}
