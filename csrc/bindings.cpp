// Python bindings: plain functions taking tensors + ints. Every input is checked
// here (host code, before any launch) so a bad call gets a clear message instead of
// faulting on the GPU. Each binding returns that message ("" on success) and the
// Python wrappers raise it: a C++ exception thrown out of this JIT-built module
// crashed the process (segfault) on the H100 machine (torch 2.11, Python 3.12), both
// as c10::Error and as std::runtime_error, at random calls (docs/decisions/007-bindings-return-error-strings.md).
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <pybind11/stl.h>  // act_params: a Python sequence of floats

#include "act_quant.h"            // includes the generated quantfuse_catalog.h
#include "scale_layout.h"
#include "quantfuse_units.h"  // generated: QF_UNITS(X)
#include "host_api.h"

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
// time, whether the message was thrown or returned (docs/decisions/007-bindings-return-error-strings.md).
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

using quantfuse::ActArgs;
using quantfuse::ActParams;
using quantfuse::Inputs;
using quantfuse::QuantParams;

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

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The operands of act(x) (act_quant.h Inputs) and the shape [tokens, hidden] of its output.
struct Operands {
  Inputs in;
  int64_t tokens, hidden;
};

std::string operands(Operands& o, int64_t act, int64_t layout, const at::Tensor& x,
                     const std::optional<at::Tensor>& up) {
  QF_TRY(check_x(x));
  QF_CHECK(act >= 0 && act < quantfuse::kNumActs, "quantfuse: activation code must be in [0, ",
           quantfuse::kNumActs, "), got ", act);
  QF_CHECK(layout >= 0 && layout <= quantfuse::kLayoutInterleaved, "quantfuse: layout code must be in [0, ",
           int(quantfuse::kLayoutInterleaved) + 1, "), got ", layout);
  const bool gated = quantfuse::kActGated[act];
  const int64_t width = x.size(-1);
  o.tokens = width == 0 ? 0 : x.numel() / width;
  o.in = Inputs{x.data_ptr(), nullptr, width, quantfuse::LayoutCode(layout)};
  QF_CHECK(gated || layout == quantfuse::kLayoutHalves, "quantfuse: ", quantfuse::kActNames[act],
           " is not gated: it takes no input layout");
  QF_CHECK(up.has_value() == (gated && layout == quantfuse::kLayoutSeparate),
           "quantfuse: an up tensor goes with the separate layout (and only with it)");
  if (!gated) {
    o.hidden = width;
  } else if (layout == quantfuse::kLayoutSeparate) {
    const at::Tensor& u = *up;
    QF_TRY(check_same_device(u, x, "up"));
    QF_CHECK(u.scalar_type() == x.scalar_type() && u.sizes() == x.sizes() && u.is_contiguous(),
             "quantfuse: up must be a contiguous tensor of x's dtype and shape ", x.sizes(), ", got ",
             u.scalar_type(), " ", u.sizes());
    o.hidden = width;
    o.in.up = u.data_ptr();
  } else {
    QF_CHECK(width % 2 == 0, "quantfuse: ", quantfuse::kActNames[act], " needs an even last dim, got ", width);
    o.hidden = width / 2;
    if (layout == quantfuse::kLayoutHalves) {
      o.in.up = static_cast<const char*>(x.data_ptr()) + o.hidden * x.element_size();
    }
  }
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

template <typename Params, typename Fn>
std::string run_unit(int64_t act, const at::Tensor& x, const Params& p, Fn&& pick) {
  const char* err = "quantfuse: no kernel unit for this dtype / activation";
  const auto dt = x.scalar_type();
#define QF_CASE(unit, scalar, code)                                                     \
  if (dt == at::k##scalar && act == quantfuse::code) err = pick(quantfuse::launch_quant_##unit, \
                                                                quantfuse::launch_act_##unit, p);
  QF_UNITS(QF_CASE)
#undef QF_CASE
  QF_CHECK(err == nullptr, err);
  return {};
}

// The activation's parameters (catalog.Activation.params, in order) as the kernels take them:
// fp32, as eager applies a Python float scalar; their number must be the activation's.
std::string act_args(ActArgs& aa, int64_t act, const std::vector<double>& act_params) {
  QF_CHECK(int64_t(act_params.size()) == quantfuse::kActNumParams[act], "quantfuse: ", quantfuse::kActNames[act],
           " takes ", quantfuse::kActNumParams[act], " parameters (catalog Activation.params), got ",
           act_params.size());
  aa = ActArgs{};
  for (size_t i = 0; i < act_params.size(); ++i) aa.p[i] = float(act_params[i]);
  return {};
}

// out = act(x) in x's dtype (the activation ops: scheme kNoScheme).
std::string activation_impl(int64_t act, const Operands& o, at::Tensor out, const at::Tensor& x,
                            const ActArgs& aa) {
  QF_CHECK(act != quantfuse::kActIdentity, "quantfuse: the identity has no activation kernel");
  QF_TRY(check_same_device(out, x, "out"));
  QF_CHECK(out.scalar_type() == x.scalar_type(), "quantfuse: out dtype ", out.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  QF_CHECK(out.is_contiguous(), "quantfuse: out must be contiguous");
  QF_CHECK(out.numel() == o.tokens * o.hidden && (o.tokens == 0 || out.size(-1) == o.hidden),
           "quantfuse: out shape ", out.sizes(), " does not match [T=", o.tokens, ", ", o.hidden, "] for ",
           quantfuse::kActNames[act]);
  if (o.tokens == 0 || o.hidden == 0) return {};
  const int64_t vec = 16 / x.element_size();
  const bool vectorized = o.hidden % vec == 0 && aligned16(x.data_ptr()) && aligned16(out.data_ptr()) &&
                          (o.in.up == nullptr || aligned16(o.in.up));
  const int64_t chunks = (o.hidden + 256 * (vectorized ? vec : 1) - 1) / (256 * (vectorized ? vec : 1));  // kThreads
  QF_CHECK(o.tokens * chunks < (int64_t(1) << 31), "quantfuse: ", quantfuse::kActNames[act], " too large (",
           o.tokens, " rows)");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  ActParams p{out.data_ptr(), o.in, o.tokens, o.hidden, vectorized, use_pdl(), at::cuda::getCurrentCUDAStream(), aa};
  return run_unit(act, x, p, [](auto, auto act_fn, const ActParams& pp) { return act_fn(pp); });
}

// The FP8 recipe (act_quant.h ScaleRecipe) from its codes and floors (CallPlan.fp8_floors:
// amax, scale before the power-of-two rounding, after it), fp32 as the kernels compare them.
std::string scale_recipe(quantfuse::ScaleRecipe& r, int64_t ue8m0, const std::vector<double>& floors, int64_t step,
                         int64_t apply) {
  QF_CHECK(ue8m0 >= 0 && ue8m0 <= quantfuse::kUe8m0Exp2, "quantfuse: UE8M0 code must be in [0, ",
           int(quantfuse::kUe8m0Exp2) + 1, "), got ", ue8m0);
  QF_CHECK(step == quantfuse::kStepFp32 || step == quantfuse::kStepInput, "quantfuse: step dtype code must be ",
           int(quantfuse::kStepFp32), " or ", int(quantfuse::kStepInput), ", got ", step);
  QF_CHECK(apply >= 0 && apply <= quantfuse::kApplyMulRatio, "quantfuse: apply code must be in [0, ",
           int(quantfuse::kApplyMulRatio) + 1, "), got ", apply);
  QF_CHECK(floors.size() == 3, "quantfuse: scale_floors takes 3 values (amax, scale, after UE8M0), got ",
           floors.size());
  r = quantfuse::ScaleRecipe{float(floors[0]), float(floors[1]), float(floors[2]), quantfuse::StepCode(step),
                             quantfuse::Ue8m0Code(ue8m0), quantfuse::ApplyCode(apply)};
  return {};
}

// act(x) -> scheme, written into q (and s: see QuantParams for the layout); scheme
// kNoScheme: q is act(x)'s output in x's dtype. up: the separate layout's second
// operand; scale: kStatic's one-element fp32 scale. ue8m0, scale_floors, step, apply: the FP8
// recipe (scale_recipe; MX: unused).
std::string act_quant_impl(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q,
                           const std::optional<at::Tensor>& s_opt, const at::Tensor& x, const std::optional<at::Tensor>& up,
                           const std::optional<at::Tensor>& scale, int64_t group_size, int64_t ue8m0, int64_t mx_code,
                           int64_t s_stride_t, int64_t s_stride_g, bool swizzled, int64_t vectors,
                           int64_t blocks_per_sm, const std::vector<double>& act_params,
                           const std::vector<double>& scale_floors, int64_t step, int64_t apply,
                           int64_t row_stages = 0, const quantfuse::ExpertsArgs* experts = nullptr,
                           double mx_device_factor = 0.0, bool runtime_recipe = false) {
  Operands o{};
  QF_TRY(operands(o, act, layout, x, up));
  ActArgs aa{};
  QF_TRY(act_args(aa, act, act_params));
  QF_CHECK(scheme >= 0 && scheme < quantfuse::kNumSchemes, "quantfuse: scheme code must be in [0, ",
           quantfuse::kNumSchemes, "), got ", scheme);
  if (scheme == quantfuse::kNoScheme) return activation_impl(act, o, q, x, aa);
  const int64_t tokens = o.tokens, hidden = o.hidden;
  QF_TRY(check_same_device(q, x, "q"));
  QF_CHECK(vectors == 0 || vectors == 1 || vectors == 2 || vectors == 4,
              "quantfuse: vectors per thread must be 0 (auto), 1, 2 or 4, got ", vectors);
  QF_CHECK(row_stages >= 0 && row_stages <= 2, "quantfuse: row_stages must be 0 (registers), 1 or 2, got ",
           row_stages);
  const int64_t vec = 16 / x.element_size();
  const bool is_static = scheme == quantfuse::kStatic;
  const bool per_tensor = scheme == quantfuse::kPerTensor;
  const bool mx = scheme == quantfuse::kMxfp8 || scheme == quantfuse::kMxfp4;
  if (scheme == quantfuse::kPerToken || is_static || per_tensor) {
    QF_CHECK(hidden % vec == 0, "quantfuse: the ", quantfuse::kSchemeNames[scheme], " kernel needs the hidden size (",
             hidden, ") to be a multiple of ", vec, " (16-byte vectors)");
  } else {
    if (scheme == quantfuse::kPerGroup) {
      QF_CHECK(group_size == quantfuse::kFp8GroupSizes[0] || group_size == quantfuse::kFp8GroupSizes[1],
               "quantfuse: group_size must be ", quantfuse::kFp8GroupSizes[0], " or ", quantfuse::kFp8GroupSizes[1],
               ", got ", group_size);
    } else {
      QF_CHECK(group_size == quantfuse::kMxBlock, "quantfuse: the MX block size is ", quantfuse::kMxBlock, ", got ",
               group_size);
    }
    QF_CHECK(hidden % group_size == 0, "quantfuse: hidden size ", hidden, " is not divisible by group_size ",
                group_size);
  }
  const int bits = scheme == quantfuse::kMxfp4 ? 4 : 8;
  const auto q_dtype = bits == 4 ? at::kByte : at::kFloat8_e4m3fn;
  QF_CHECK(q.scalar_type() == q_dtype, "quantfuse: q must be ", q_dtype, " for ", quantfuse::kSchemeNames[scheme],
              ", got ", q.scalar_type());
  QF_CHECK(q.is_contiguous(), "quantfuse: q must be contiguous");
  QF_CHECK(q.numel() == tokens * hidden * bits / 8 && (tokens == 0 || q.size(-1) == hidden * bits / 8),
              "quantfuse: q shape ", q.sizes(), " does not match [T=", tokens, ", ", hidden * bits / 8, "]");
  // 16-byte loads of x (and up), vector-sized stores of q
  QF_CHECK(aligned16(x.data_ptr()) && (o.in.up == nullptr || aligned16(o.in.up)),
           "quantfuse: x (and up) must be 16-byte aligned");
  const int64_t store = vec * bits / 8;
  QF_CHECK(reinterpret_cast<uintptr_t>(q.data_ptr()) % store == 0, "quantfuse: q must be ", store,
              "-byte aligned");
  QuantParams p{};
  p.scheme = quantfuse::Scheme(scheme);
  p.q = q.data_ptr();
  p.in = o.in;
  p.tokens = tokens;
  p.hidden = hidden;
  p.vectors = vectors;
  p.blocks_per_sm = blocks_per_sm;
  p.row_stages = row_stages;
  p.runtime_recipe = runtime_recipe;
  p.act_args = aa;
  QF_TRY(scale_recipe(p.recipe, ue8m0, scale_floors, step, apply));
  if (is_static) {
    QF_CHECK(!s_opt.has_value(), "quantfuse: the static scheme has no scale output");
    QF_CHECK(scale.has_value(), "quantfuse: the static scheme needs its scale tensor");
    QF_TRY(check_same_device(*scale, x, "scale"));
    QF_CHECK(scale->scalar_type() == at::kFloat && scale->numel() == 1,
             "quantfuse: scale must be one float32 element, got ", scale->scalar_type(), " ", scale->sizes());
    p.scale = scale->data_ptr<float>();
    QF_CHECK(tokens * ((hidden + 256 * vec - 1) / (256 * vec)) < (int64_t(1) << 31),  // kThreads
             "quantfuse: too many rows (", tokens, ")");
  } else {
    QF_CHECK(!scale.has_value(), "quantfuse: only the static scheme takes a scale tensor");
    QF_CHECK(s_opt.has_value(), "quantfuse: ", quantfuse::kSchemeNames[scheme], " needs a scale output");
    const at::Tensor& s = *s_opt;
    QF_TRY(check_same_device(s, x, "s"));
    const int64_t groups = scheme == quantfuse::kPerToken || per_tensor ? 1 : hidden / group_size;
    QF_CHECK(mx ? s.scalar_type() == at::kByte : s.scalar_type() == at::kFloat, "quantfuse: scales must be ",
             mx ? "uint8 (E8M0 bytes)" : "float32", " for ", quantfuse::kSchemeNames[scheme], ", got ",
             s.scalar_type());
    // swizzled: the 128x4 tiled layout of [T_pad, G_pad] bytes (reference.swizzle_128x4), padding
    // included (the kernel zeroes it); s_stride_t / s_stride_g are ignored. The experts ops: the
    // [experts_scale_rows(T, E), G_pad] buffer of every expert's tiles (experts_layout.h).
    const int64_t t_pad = experts ? quantfuse::experts_scale_rows(tokens, experts->offsets.experts)
                                  : quantfuse::swizzled_rows(tokens);
    const int64_t g_pad = quantfuse::swizzled_cols(groups);
    QF_CHECK(!swizzled || mx, "quantfuse: the swizzled scale layout is for MX schemes only");
    QF_CHECK(!experts || (swizzled && mx), "quantfuse: the experts kernels are MX with swizzled scales");
    if (swizzled) {
      QF_CHECK(s.is_contiguous() && s.numel() == t_pad * g_pad, "quantfuse: swizzled scales must be a contiguous [",
               t_pad, ", ", g_pad, "] (", experts ? "the experts' worst split of T" : "T", " and G padded to ",
               quantfuse::kSwizzleRows, " and ", quantfuse::kSwizzleCols, "), got ", s.sizes());
      QF_CHECK(!experts || aligned16(s.data_ptr()), "quantfuse: the experts scales must be 16-byte aligned");
    } else if (per_tensor) {
      QF_CHECK(s.numel() == 1, "quantfuse: the per-tensor scale s must be one element, got ", s.sizes());
      QF_CHECK(apply != quantfuse::kApplyMulRatio,
               "quantfuse: apply=mul_ratio has no per-tensor CUDA kernel");
    } else {
      QF_CHECK(s.numel() == tokens * groups, "quantfuse: s has ", s.numel(), " elements, expected T*G = ",
               tokens, "*", groups);
    }
    if ((tokens == 0 || hidden == 0) && !per_tensor) return {};  // per tensor: the scale is still written
    const int64_t slots = swizzled ? t_pad * g_pad : tokens * groups;  // scale bytes the kernel indexes
    QF_CHECK(slots < (int64_t(1) << 31), "quantfuse: too many groups (", slots, swizzled ? " with padding)" : ")");
    if (per_tensor) {
      s_stride_t = s_stride_g = 0;  // the one scale
    } else if (swizzled) {
      s_stride_t = quantfuse::kSwizzleRows * g_pad;  // the row-block stride; s_stride_g unused
      s_stride_g = 0;
    } else {
      QF_CHECK(s_stride_t >= 0 && s_stride_g >= 0, "quantfuse: scale strides must be >= 0");
      const int64_t last = (tokens - 1) * s_stride_t + (groups - 1) * s_stride_g;
      const int64_t avail = int64_t(s.storage().nbytes() / s.element_size()) - s.storage_offset();
      QF_CHECK(last < avail, "quantfuse: scale strides (", s_stride_t, ", ", s_stride_g,
               ") reach past the scale storage");
    }
    p.group_size = group_size;
    QF_CHECK(mx_code >= 0 && mx_code < quantfuse::kMxCodes, "quantfuse: MX recipe code must be in [0, ",
             quantfuse::kMxCodes, "), got ", mx_code);
    p.recipe.mx = quantfuse::mx_args(mx_code);
    // catalog.Recipe.device_factor: at most one special block's multiplier is the device's value
    const bool device0 = mx && (p.recipe.mx.byte0 == quantfuse::kMxByte0Exp2 || p.recipe.mx.byte0 == quantfuse::kMxByte0Pow);
    const bool device_inf = mx && p.recipe.mx.inf == quantfuse::kMxInfExp2;
    QF_CHECK(!(device0 && device_inf), "quantfuse: mx_byte0 exp2 / pow and mx_inf exp2 are not one MX recipe");
    QF_CHECK(!device0 || (mx_device_factor > 1e38 && mx_device_factor < 3.4e38),
             "quantfuse: an MX recipe with mx_byte0 exp2 / pow needs mx_device_factor, 1 / the device's 2^-127, got ",
             mx_device_factor);
    QF_CHECK(!device_inf || (mx_device_factor > 5e-39 && mx_device_factor < 7e-39),
             "quantfuse: an MX recipe with mx_inf exp2 needs mx_device_factor, the device's 2^-127, got ",
             mx_device_factor);
    p.recipe.mx_device_factor = float(mx_device_factor);
    p.s = s.data_ptr();
    p.s_stride_t = s_stride_t;
    p.s_stride_g = s_stride_g;
    p.s_swizzled = swizzled;
    if (experts) {
      p.experts = *experts;
      p.experts.scale_rows = t_pad;
    }
  }
  if ((tokens == 0 || hidden == 0) && !per_tensor) return {};
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const auto* props = at::cuda::getCurrentDeviceProperties();
  p.sms = props->multiProcessorCount;
  p.l2_bytes = int64_t(props->l2CacheSize);
  p.pdl = use_pdl();
  p.stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // the per-tensor amax pass's workspace, freed (stream-ordered) after the launches
  if (per_tensor) {
    p.partials_count = std::min<int64_t>(tokens, int64_t(quantfuse::kTensorAmaxBlocksPerSm) * p.sms);
    partials = at::empty({p.partials_count}, x.options().dtype(at::kFloat));
    p.partials = partials.data_ptr<float>();
  }
  return run_unit(act, x, p, [](auto quant, auto, const QuantParams& pp) { return quant(pp); });
}

// The experts ops' flag (ExpertsArgs::error): one int of mapped, portable pinned host memory
// that any device's kernel can set and the host reads without a synchronisation. Allocated
// when the module loads, before any CUDA graph capture, where an allocation would be an error.
struct ErrorFlag {
  volatile int* host = nullptr;
  int* device = nullptr;  // the kernels' address of it (the host's, under unified addressing)
};
const ErrorFlag& experts_error_flag() {
  static const ErrorFlag flag = [] {
    ErrorFlag f;
    void* p = nullptr;
    void* d = nullptr;
    if (cudaHostAlloc(&p, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess ||
        cudaHostGetDevicePointer(&d, p, 0) != cudaSuccess) {
      cudaGetLastError();  // no flag: the kernels still check, the error is not reported
      return f;
    }
    f.host = static_cast<volatile int*>(p);
    *f.host = 0;
    f.device = static_cast<int*>(d);
    return f;
  }();
  return flag;
}

std::string check_offsets(const at::Tensor& o, const at::Tensor& x, const char* name) {
  QF_TRY(check_same_device(o, x, name));
  QF_CHECK(o.scalar_type() == at::kInt || o.scalar_type() == at::kLong, "quantfuse: ", name,
           " must be int32 or int64, got ", o.scalar_type());
  QF_CHECK(o.dim() == 1 && o.numel() >= 2 && o.numel() < (int64_t(1) << 31) && o.is_contiguous(), "quantfuse: ",
           name, " must be a contiguous [num_experts + 1] tensor with 1 <= num_experts < 2^31 - 1, got ", o.sizes());
  return {};
}

// The experts ops: act(x) -> MX (scheme kMxfp8 / kMxfp4) of tokens sorted by expert into q and
// the experts scale buffer s (experts_kernel.cuh). The offsets' values are checked by the
// kernel (ExpertScales::prologue), not here: reading them would synchronise.
std::string experts_quant_impl(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q, const at::Tensor& s,
                               const at::Tensor& x,
                               const std::optional<at::Tensor>& up, const at::Tensor& expert_offsets,
                               const at::Tensor& blockscale_offsets, int64_t mx_code,
                               const std::vector<double>& act_params, int64_t vectors, int64_t row_stages,
                               double mx_device_factor) {
  QF_CHECK(scheme == quantfuse::kMxfp8 || scheme == quantfuse::kMxfp4, "quantfuse: the experts kernels are ",
           quantfuse::kSchemeNames[quantfuse::kMxfp8], " and ", quantfuse::kSchemeNames[quantfuse::kMxfp4],
           ", got scheme code ", scheme);
  QF_CHECK(x.dim() == 2, "quantfuse: the experts ops take a 2-d x [tokens sorted by expert, hidden], got ",
           x.sizes());
  QF_TRY(check_offsets(expert_offsets, x, "expert_offsets"));
  QF_TRY(check_offsets(blockscale_offsets, x, "blockscale_offsets"));
  QF_CHECK(blockscale_offsets.sizes() == expert_offsets.sizes() &&
               blockscale_offsets.scalar_type() == expert_offsets.scalar_type(),
           "quantfuse: blockscale_offsets must have expert_offsets' shape and dtype");
  quantfuse::ExpertsArgs ea{};
  ea.offsets = quantfuse::ExpertOffsets{expert_offsets.data_ptr(), blockscale_offsets.data_ptr(),
                                        expert_offsets.numel() - 1, expert_offsets.scalar_type() == at::kLong};
  ea.error = experts_error_flag().device;
  return act_quant_impl(act, scheme, layout, q, s, x, up, std::nullopt, quantfuse::kMxBlock, 0, mx_code, 0, 0, true,
                        vectors, 0, act_params, {0.0, 0.0, 0.0}, quantfuse::kStepFp32, quantfuse::kApplyDiv,
                        row_stages, &ea, mx_device_factor);
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

}  // namespace

namespace quantfuse {

std::string act_quant_checked(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q,
                              const std::optional<at::Tensor>& s, const at::Tensor& x,
                              const std::optional<at::Tensor>& up, const std::optional<at::Tensor>& scale,
                              int64_t group_size, int64_t ue8m0, int64_t mx, int64_t s_stride_t, int64_t s_stride_g,
                              bool swizzled, int64_t vectors, int64_t blocks_per_sm,
                              const std::vector<double>& act_params, const std::vector<double>& scale_floors,
                              int64_t step, int64_t apply, int64_t row_stages, double mx_device_factor,
                              bool runtime_recipe) {
  return guarded([&] {
    return act_quant_impl(act, scheme, layout, q, s, x, up, scale, group_size, ue8m0, mx, s_stride_t,
                          s_stride_g, swizzled, vectors, blocks_per_sm, act_params, scale_floors, step, apply,
                          row_stages, nullptr, mx_device_factor, runtime_recipe);
  });
}

std::string experts_quant_checked(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q,
                                  const at::Tensor& s, const at::Tensor& x, const std::optional<at::Tensor>& up,
                                  const at::Tensor& expert_offsets, const at::Tensor& blockscale_offsets, int64_t mx,
                                  const std::vector<double>& act_params, int64_t vectors, int64_t row_stages,
                                  double mx_device_factor) {
  return guarded([&] {
    return experts_quant_impl(act, scheme, layout, q, s, x, up, expert_offsets, blockscale_offsets, mx,
                              act_params, vectors, row_stages, mx_device_factor);
  });
}

}  // namespace quantfuse

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quantfuse CUDA kernels: activation (SiLU-and-mul, ReLU^2, GPT-OSS's clamped SwiGLU) -> FP8 / MXFP8 / "
            "MXFP4 quantisation";
  m.def("act_quant", &quantfuse::act_quant_checked,
        "act(x) -> scheme into q (and s); scheme kNoScheme: q = act(x) in x's dtype. Codes: "
        "quantfuse_catalog.h (catalog.codes()); act_params: the activation's parameters (catalog "
        "Activation.params, e.g. swigluoai_and_mul's alpha, limit); ue8m0, scale_floors, step, apply: "
        "the FP8 recipe (CallPlan.fp8_floors; the defaults: the default recipe's); row_stages: rows (per-token, 0-2) or "
        "groups (per-group, MX: 0 or 2) staged ahead in shared memory (QuantParams); mx_device_factor: 1 / the device's 2^-127 for MX recipes with mx_byte0 exp2 / "
        "pow, the device's 2^-127 for mx_inf exp2 (ScaleRecipe); runtime_recipe: the default per-token recipe through the runtime-recipe "
        "kernel (QuantParams). Returns \"\" or an error message",
        py::arg("act"), py::arg("scheme"), py::arg("layout"), py::arg("q"), py::arg("s"), py::arg("x"),
        py::arg("up"), py::arg("scale"), py::arg("group_size"), py::arg("ue8m0"), py::arg("mx"),
        py::arg("s_stride_t"), py::arg("s_stride_g"), py::arg("swizzled"), py::arg("vectors") = 0,
        py::arg("blocks_per_sm") = 0, py::arg("act_params") = std::vector<double>{},
        py::arg("scale_floors") = std::vector<double>{quantfuse::kDefaultEps, 0.0, 0.0},
        py::arg("step") = int64_t(quantfuse::kStepFp32), py::arg("apply") = int64_t(quantfuse::kApplyDiv),
        py::arg("row_stages") = int64_t(0), py::arg("mx_device_factor") = 0.0, py::arg("runtime_recipe") = false);

  m.def("experts_quant", &quantfuse::experts_quant_checked,
        "The experts ops: act(x) -> MXFP8 / MXFP4 (scheme code) of tokens sorted by expert into q and the "
        "[experts_scale_rows(T, E), G_pad] scale buffer s, each expert's scales tiled from row "
        "blockscale_offsets[e], every other byte zero. Inconsistent offsets: s all 0xFF and the flag of "
        "experts_offset_error() raised. vectors, row_stages, mx_device_factor: as act_quant's. Returns \"\" or an "
        "error message",
        py::arg("act"), py::arg("scheme"), py::arg("layout"), py::arg("q"), py::arg("s"), py::arg("x"), py::arg("up"),
        py::arg("expert_offsets"), py::arg("blockscale_offsets"), py::arg("mx"),
        py::arg("act_params") = std::vector<double>{}, py::arg("vectors") = int64_t(0),
        py::arg("row_stages") = int64_t(0), py::arg("mx_device_factor") = 0.0);
  m.def("experts_offset_error", [](bool clear) {
    volatile int* flag = experts_error_flag().host;
    const bool raised = flag != nullptr && *flag != 0;
    if (clear && flag != nullptr) *flag = 0;
    return raised;
  }, "Whether an experts kernel found inconsistent offsets since the flag was cleared (kernels that have "
     "finished: synchronise first); clear: lower the flag", py::arg("clear") = true);
  experts_error_flag();  // before any capture (experts_error_flag)
  quantfuse::bind_dispatch(m);
}
