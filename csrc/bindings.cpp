// Python bindings: plain functions taking tensors + ints. Every input is checked
// here (host code, before any launch) so a bad call gets a clear message instead of
// faulting on the GPU. Each binding returns that message ("" on success) and the
// Python wrappers raise it: a C++ exception thrown out of this JIT-built module
// crashed the process (segfault) on the H100 machine (torch 2.11, Python 3.12), both
// as c10::Error and as std::runtime_error, at random calls (benchmarks/NOTES.md).
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "act_quant.h"
#include "scale_layout.h"
#include "quantfuse_units.h"  // generated: QF_UNITS(X)

namespace quantfuse {
#define QF_DECLARE(unit, scalar, act)                    \
  const char* launch_quant_##unit(const QuantParams& p); \
  const char* launch_act_##unit(const ActParams& p);
QF_UNITS(QF_DECLARE)
#undef QF_DECLARE
}  // namespace quantfuse

namespace {

// Messages are built by appending, without std::ostream: on the H100 machine (torch
// 2.11 wheel, this module built by the system g++) formatting an integer through
// c10::str / std::ostringstream in this module crashed the process (segfault) every
// time, whether the message was thrown or returned (benchmarks/NOTES.md).
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append(std::string& s, T v) { s += std::to_string(v); }
inline void append(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }
inline void append(std::string& s, c10::IntArrayRef a) {
  s += "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  s += "]";
}
template <typename... Args>
std::string message(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

// Argument checks return their message; nothing is thrown.
#define QF_CHECK(cond, ...)                           \
  do {                                                \
    if (!(cond)) return message(__VA_ARGS__);         \
  } while (0)
// Propagate a failed sub-check.
#define QF_TRY(call)                            \
  do {                                          \
    std::string qf_err_ = (call);               \
    if (!qf_err_.empty()) return qf_err_;       \
  } while (0)

using quantfuse::ActParams;
using quantfuse::QuantParams;

constexpr const char* kActNames[] = {"identity", "silu_and_mul", "relu2"};
constexpr const char* kSchemeNames[] = {"", "per-token FP8", "per-group FP8", "MXFP8", "MXFP4"};

std::string check_x(const at::Tensor& x) {
  QF_CHECK(x.is_cuda(), "quantfuse: x must be a CUDA tensor, got device ", x.device());
  QF_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kFloat,
              "quantfuse: x dtype must be bfloat16, float16 or float32, got ", x.scalar_type());
  QF_CHECK(x.is_contiguous(), "quantfuse: x must be contiguous");
  QF_CHECK(x.dim() >= 1, "quantfuse: x must have at least one dimension");
  return {};
}

std::string check_same_device(const at::Tensor& a, const at::Tensor& x, const char* name) {
  QF_CHECK(a.is_cuda() && a.device() == x.device(), "quantfuse: ", name,
              " must be on the input's device ", x.device(), ", got ", a.device());
  return {};
}

std::string check_act(int64_t act) {
  QF_CHECK(act >= 0 && act <= 2, "quantfuse: activation code must be 0 (identity), 1 (silu_and_mul) "
              "or 2 (relu2), got ", act);
  return {};
}

std::string check_width(int64_t act, const at::Tensor& x) {
  QF_CHECK(act != 1 || x.size(-1) % 2 == 0, "quantfuse: silu_and_mul needs an even last dim, got ", x.size(-1));
  return {};
}

// (tokens, hidden) of act(x): gated activations halve the last dim.
std::pair<int64_t, int64_t> act_shape(int64_t act, const at::Tensor& x) {
  const int64_t width = x.size(-1);
  return {width == 0 ? 0 : x.numel() / width, act == 1 ? width / 2 : width};
}

template <typename Params, typename Fn>
std::string run_unit(int64_t act, const at::Tensor& x, const Params& p, Fn&& pick) {
  const char* err = "quantfuse: no kernel unit for this dtype / activation";
  const auto dt = x.scalar_type();
#define QF_CASE(unit, scalar, code)                                                     \
  if (dt == at::k##scalar && act == code) err = pick(quantfuse::launch_quant_##unit,    \
                                                     quantfuse::launch_act_##unit, p);
  QF_UNITS(QF_CASE)
#undef QF_CASE
  QF_CHECK(err == nullptr, err);
  return {};
}

// Programmatic dependent launch (launch_unit.cuh launch()): opt-in with QUANTFUSE_PDL=1,
// sm_90+ only. It saves 0.4-0.7 µs per launch after a kernel that triggers its dependents
// early (this family back to back), but between cuBLAS GEMMs, the fused op's neighbours in
// a model, it saved nothing and cost up to 0.4 µs (H100, benchmarks/bench_pdl.py), so it
// is off by default. Read at every call, so a process can compare both.
bool use_pdl() {
  const char* env = std::getenv("QUANTFUSE_PDL");
  if (env == nullptr || std::strcmp(env, "1") != 0) return false;
  return at::cuda::getCurrentDeviceProperties()->major >= 9;
}

// act(x) -> scheme, written into q and s (see QuantParams for the layout).
std::string act_quant_impl(int64_t act, int64_t scheme, at::Tensor q, at::Tensor s, at::Tensor x,
                           int64_t group_size, bool flag, int64_t s_stride_t, int64_t s_stride_g, int64_t vectors,
                           int64_t blocks_per_sm, bool swizzled) {
  QF_TRY(check_x(x));
  QF_TRY(check_act(act));
  QF_TRY(check_same_device(q, x, "q"));
  QF_TRY(check_same_device(s, x, "s"));
  QF_CHECK(scheme >= 1 && scheme <= 4, "quantfuse: scheme code must be 1..4, got ", scheme);
  QF_CHECK(vectors == 0 || vectors == 1 || vectors == 2 || vectors == 4,
              "quantfuse: vectors per thread must be 0 (auto), 1, 2 or 4, got ", vectors);
  QF_TRY(check_width(act, x));
  const auto [tokens, hidden] = act_shape(act, x);
  const int64_t vec = 16 / x.element_size();
  if (scheme == quantfuse::kPerToken) {
    QF_CHECK(hidden % vec == 0, "quantfuse: the per-token kernel needs the hidden size (", hidden,
                ") to be a multiple of ", vec, " (16-byte vectors)");
  } else {
    if (scheme == quantfuse::kPerGroup) {
      QF_CHECK(group_size == 64 || group_size == 128, "quantfuse: group_size must be 64 or 128, got ",
                  group_size);
    } else {
      QF_CHECK(group_size == 32, "quantfuse: the MX block size is 32, got ", group_size);
    }
    QF_CHECK(hidden % group_size == 0, "quantfuse: hidden size ", hidden, " is not divisible by group_size ",
                group_size);
  }
  const int64_t groups = scheme == quantfuse::kPerToken ? 1 : hidden / group_size;
  const int bits = scheme == quantfuse::kMxfp4 ? 4 : 8;
  const auto q_dtype = bits == 4 ? at::kByte : at::kFloat8_e4m3fn;
  QF_CHECK(q.scalar_type() == q_dtype, "quantfuse: q must be ", q_dtype, " for ", kSchemeNames[scheme],
              ", got ", q.scalar_type());
  QF_CHECK(q.is_contiguous(), "quantfuse: q must be contiguous");
  QF_CHECK(q.numel() == tokens * hidden * bits / 8 && (tokens == 0 || q.size(-1) == hidden * bits / 8),
              "quantfuse: q shape ", q.sizes(), " does not match [T=", tokens, ", ", hidden * bits / 8, "]");
  const bool mx = scheme >= quantfuse::kMxfp8;
  QF_CHECK(mx ? s.scalar_type() == at::kByte : s.scalar_type() == at::kFloat, "quantfuse: scales must be ",
              mx ? "uint8 (E8M0 bytes)" : "float32", " for ", kSchemeNames[scheme], ", got ", s.scalar_type());
  // swizzled: the 128x4 tiled layout of [T_pad, G_pad] bytes (reference.swizzle_128x4), padding
  // included (the kernel zeroes it); s_stride_t / s_stride_g are ignored
  const int64_t t_pad = quantfuse::swizzled_rows(tokens), g_pad = quantfuse::swizzled_cols(groups);
  QF_CHECK(!swizzled || mx, "quantfuse: the swizzled scale layout is for MX schemes only");
  if (swizzled) {
    QF_CHECK(s.is_contiguous() && s.numel() == t_pad * g_pad, "quantfuse: swizzled scales must be a contiguous [",
             t_pad, ", ", g_pad, "] (T and G padded to 128 and 4), got ", s.sizes());
  } else {
    QF_CHECK(s.numel() == tokens * groups, "quantfuse: s has ", s.numel(), " elements, expected T*G = ",
             tokens, "*", groups);
  }
  if (tokens == 0 || hidden == 0) return {};
  const int64_t slots = swizzled ? t_pad * g_pad : tokens * groups;  // scale bytes the kernel indexes
  QF_CHECK(slots < (int64_t(1) << 31), "quantfuse: too many groups (", slots, swizzled ? " with padding)" : ")");
  if (swizzled) {
    s_stride_t = 128 * g_pad;  // the row-block stride; s_stride_g unused
    s_stride_g = 0;
  } else {
    QF_CHECK(s_stride_t >= 0 && s_stride_g >= 0, "quantfuse: scale strides must be >= 0");
    const int64_t last = (tokens - 1) * s_stride_t + (groups - 1) * s_stride_g;
    const int64_t avail = int64_t(s.storage().nbytes() / s.element_size()) - s.storage_offset();
    QF_CHECK(last < avail, "quantfuse: scale strides (", s_stride_t, ", ", s_stride_g,
             ") reach past the scale storage");
  }
  // 16-byte loads of x, vector-sized stores of q
  QF_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, "quantfuse: x must be 16-byte aligned");
  const int64_t store = vec * bits / 8;
  QF_CHECK(reinterpret_cast<uintptr_t>(q.data_ptr()) % store == 0, "quantfuse: q must be ", store,
              "-byte aligned");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  QuantParams p{int(scheme), group_size, flag, q.data_ptr(), s.data_ptr(), x.data_ptr(), tokens, hidden,
                s_stride_t, s_stride_g, swizzled, vectors, blocks_per_sm,
                at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                int64_t(at::cuda::getCurrentDeviceProperties()->l2CacheSize), use_pdl(),
                at::cuda::getCurrentCUDAStream()};
  return run_unit(act, x, p, [](auto quant, auto, const QuantParams& pp) { return quant(pp); });
}

// out = act(x) in x's dtype (the unfused activation ops).
std::string activation_impl(int64_t act, at::Tensor out, at::Tensor x) {
  QF_TRY(check_x(x));
  QF_TRY(check_act(act));
  QF_CHECK(act != 0, "quantfuse: the identity has no activation kernel");
  QF_TRY(check_same_device(out, x, "out"));
  QF_TRY(check_width(act, x));
  const auto [tokens, hidden] = act_shape(act, x);
  QF_CHECK(out.scalar_type() == x.scalar_type(), "quantfuse: out dtype ", out.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  QF_CHECK(out.is_contiguous(), "quantfuse: out must be contiguous");
  QF_CHECK(out.numel() == tokens * hidden && (tokens == 0 || out.size(-1) == hidden), "quantfuse: out shape ",
              out.sizes(), " does not match x shape ", x.sizes(), " for ", kActNames[act]);
  if (tokens == 0 || hidden == 0) return {};
  const int64_t vec = 16 / x.element_size();
  const bool vectorized = hidden % vec == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  const int64_t chunks = (hidden + 256 * (vectorized ? vec : 1) - 1) / (256 * (vectorized ? vec : 1));  // kThreads
  QF_CHECK(tokens * chunks < (int64_t(1) << 31), "quantfuse: ", kActNames[act], " too large (", tokens,
              " rows)");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  ActParams p{out.data_ptr(), x.data_ptr(), tokens, hidden, vectorized, use_pdl(),
              at::cuda::getCurrentCUDAStream()};
  return run_unit(act, x, p, [](auto, auto act_fn, const ActParams& pp) { return act_fn(pp); });
}

// fn()'s message ("" on success); an exception from ATen itself (not expected after the
// checks) becomes its message too, so none leaves the module.
template <typename Fn>
std::string guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "quantfuse: unknown C++ error";
  }
}

std::string act_quant(int64_t act, int64_t scheme, at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size,
                      bool flag, int64_t s_stride_t, int64_t s_stride_g, int64_t vectors, int64_t blocks_per_sm,
                      bool swizzled) {
  return guarded([&] {
    return act_quant_impl(act, scheme, q, s, x, group_size, flag, s_stride_t, s_stride_g, vectors, blocks_per_sm,
                          swizzled);
  });
}

std::string activation(int64_t act, at::Tensor out, at::Tensor x) {
  return guarded([&] { return activation_impl(act, out, x); });
}

// The names and arguments of the first kernels (benchmarks sweep vectors / grid).
std::string silu_and_mul(at::Tensor out, at::Tensor x) { return activation(1, out, x); }

std::string per_token_group_quant_fp8(at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size, bool use_ue8m0,
                                      int64_t s_stride_t, int64_t s_stride_g, int64_t unroll,
                                      int64_t blocks_per_sm) {
  return act_quant(0, quantfuse::kPerGroup, q, s, x, group_size, use_ue8m0, s_stride_t, s_stride_g, unroll,
                   blocks_per_sm, false);
}

std::string silu_and_mul_per_block_quant(at::Tensor q, at::Tensor s, at::Tensor x, int64_t group_size,
                                         bool use_ue8m0, int64_t s_stride_t, int64_t s_stride_g, int64_t unroll,
                                         int64_t blocks_per_sm) {
  return act_quant(1, quantfuse::kPerGroup, q, s, x, group_size, use_ue8m0, s_stride_t, s_stride_g, unroll,
                   blocks_per_sm, false);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quantfuse CUDA kernels: activation (SiLU-and-mul, ReLU^2) -> FP8 / MXFP8 / MXFP4 quantisation";
  m.def("act_quant", &act_quant, "act(x) -> quantisation scheme into q and s; returns \"\" or an error message", py::arg("act"), py::arg("scheme"),
        py::arg("q"), py::arg("s"), py::arg("x"), py::arg("group_size"), py::arg("flag"), py::arg("s_stride_t"),
        py::arg("s_stride_g"), py::arg("vectors") = 0, py::arg("blocks_per_sm") = 0, py::arg("swizzled") = false);
  m.def("activation", &activation, "out = act(x) in x's dtype; returns \"\" or an error message", py::arg("act"), py::arg("out"), py::arg("x"));
  m.def("silu_and_mul", &silu_and_mul, "out[T, d] = silu(x[:, :d]) * x[:, d:]", py::arg("out"), py::arg("x"));
  m.def("per_token_group_quant_fp8", &per_token_group_quant_fp8,
        "FP8 E4M3 per-token-group quantisation of x into q and scales s", py::arg("q"), py::arg("s"),
        py::arg("x"), py::arg("group_size"), py::arg("use_ue8m0"), py::arg("s_stride_t"), py::arg("s_stride_g"),
        py::arg("unroll") = 0, py::arg("blocks_per_sm") = 0);
  m.def("silu_and_mul_per_block_quant", &silu_and_mul_per_block_quant,
        "fused silu_and_mul + FP8 per-token-group quantisation", py::arg("q"), py::arg("s"), py::arg("x"),
        py::arg("group_size"), py::arg("use_ue8m0"), py::arg("s_stride_t"), py::arg("s_stride_g"),
        py::arg("unroll") = 0, py::arg("blocks_per_sm") = 0);
}
