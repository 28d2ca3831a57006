// Python bindings: plain functions taking tensors + ints. Every input is checked
// here so a bad call raises a clear RuntimeError instead of faulting on the GPU.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>

#include "act_quant.h"

namespace {

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), "quantfuse: ", name, " must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kFloat,
              "quantfuse: ", name, " dtype must be bfloat16, float16 or float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "quantfuse: ", name, " must be contiguous");
  TORCH_CHECK(x.dim() >= 1, "quantfuse: ", name, " must have at least one dimension");
}

void check_same_device(const at::Tensor& a, const at::Tensor& x, const char* name) {
  TORCH_CHECK(a.is_cuda() && a.device() == x.device(), "quantfuse: ", name,
              " must be on the input's device ", x.device(), ", got ", a.device());
}

void silu_and_mul(at::Tensor out, at::Tensor x) {
  check_x(x, "x");
  check_same_device(out, x, "out");
  TORCH_CHECK(x.size(-1) % 2 == 0, "quantfuse: silu_and_mul needs an even last dim, got ", x.size(-1));
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "quantfuse: out dtype ", out.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "quantfuse: out must be contiguous");
  const int64_t d = x.size(-1) / 2;
  TORCH_CHECK(out.size(-1) == d && out.numel() * 2 == x.numel(), "quantfuse: out shape ",
              out.sizes(), " does not match x shape ", x.sizes(), " (last dim halved)");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  quantfuse::launch_silu_and_mul(out, x);
}

void group_quant(bool gated, at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size,
                 bool use_ue8m0, int64_t s_stride_t, int64_t s_stride_g, int64_t unroll,
                 int64_t blocks_per_sm) {
  check_x(x, "x");
  check_same_device(q, x, "q");
  check_same_device(s, x, "s");
  TORCH_CHECK(group_size == 64 || group_size == 128,
              "quantfuse: group_size must be 64 or 128, got ", group_size);
  TORCH_CHECK(unroll == 0 || unroll == 1 || unroll == 2 || unroll == 4,
              "quantfuse: unroll must be 0 (auto), 1, 2 or 4, got ", unroll);
  const int64_t width = x.size(-1);
  TORCH_CHECK(!gated || width % 2 == 0, "quantfuse: gated input needs an even last dim, got ", width);
  const int64_t hidden = gated ? width / 2 : width;
  TORCH_CHECK(hidden % group_size == 0, "quantfuse: hidden size ", hidden,
              " is not divisible by group_size ", group_size);
  const int64_t tokens = width == 0 ? 0 : x.numel() / width;
  const int64_t groups = hidden / group_size;
  TORCH_CHECK(q.scalar_type() == at::kFloat8_e4m3fn, "quantfuse: q must be float8_e4m3fn, got ",
              q.scalar_type());
  TORCH_CHECK(q.is_contiguous(), "quantfuse: q must be contiguous");
  TORCH_CHECK(q.size(-1) == hidden && q.numel() == tokens * hidden, "quantfuse: q shape ",
              q.sizes(), " does not match [T=", tokens, ", H=", hidden, "]");
  TORCH_CHECK(s.scalar_type() == at::kFloat, "quantfuse: s must be float32, got ", s.scalar_type());
  TORCH_CHECK(s.numel() == tokens * groups, "quantfuse: s has ", s.numel(),
              " elements, expected T*G = ", tokens, "*", groups);
  if (tokens > 0 && groups > 0) {
    TORCH_CHECK(s_stride_t >= 0 && s_stride_g >= 0, "quantfuse: scale strides must be >= 0");
    const int64_t last = (tokens - 1) * s_stride_t + (groups - 1) * s_stride_g;
    const int64_t avail = static_cast<int64_t>(s.storage().nbytes() / sizeof(float)) - s.storage_offset();
    TORCH_CHECK(last < avail, "quantfuse: scale strides (", s_stride_t, ", ", s_stride_g,
                ") reach past the scale storage");
    // 16-byte loads of x and VEC-byte stores of q need aligned bases.
    TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
                "quantfuse: x must be 16-byte aligned");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(q.data_ptr()) % (16 / x.element_size()) == 0,
                "quantfuse: q must be ", 16 / x.element_size(), "-byte aligned");
  }
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  quantfuse::launch_act_group_quant(gated, q, s, x, group_size, use_ue8m0, s_stride_t, s_stride_g,
                                    unroll, blocks_per_sm);
}

void per_token_group_quant_fp8(at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size,
                               bool use_ue8m0, int64_t s_stride_t, int64_t s_stride_g,
                               int64_t unroll, int64_t blocks_per_sm) {
  group_quant(false, q, s, x, group_size, use_ue8m0, s_stride_t, s_stride_g, unroll, blocks_per_sm);
}

void silu_and_mul_per_block_quant(at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size,
                                  bool use_ue8m0, int64_t s_stride_t, int64_t s_stride_g,
                                  int64_t unroll, int64_t blocks_per_sm) {
  group_quant(true, q, s, x, group_size, use_ue8m0, s_stride_t, s_stride_g, unroll, blocks_per_sm);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quantfuse CUDA kernels: SiLU-and-mul and FP8 per-token-group quantisation";
  m.def("silu_and_mul", &silu_and_mul, "out[T, d] = silu(x[:, :d]) * x[:, d:]", py::arg("out"),
        py::arg("x"));
  m.def("per_token_group_quant_fp8", &per_token_group_quant_fp8,
        "FP8 E4M3 per-token-group quantisation of x into q and scales s", py::arg("q"),
        py::arg("s"), py::arg("x"), py::arg("group_size"), py::arg("use_ue8m0"),
        py::arg("s_stride_t"), py::arg("s_stride_g"), py::arg("unroll") = 0, py::arg("blocks_per_sm") = 0);
  m.def("silu_and_mul_per_block_quant", &silu_and_mul_per_block_quant,
        "fused silu_and_mul + FP8 per-token-group quantisation", py::arg("q"), py::arg("s"),
        py::arg("x"), py::arg("group_size"), py::arg("use_ue8m0"), py::arg("s_stride_t"),
        py::arg("s_stride_g"), py::arg("unroll") = 0, py::arg("blocks_per_sm") = 0);
}
