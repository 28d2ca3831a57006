// The ops' CUDA kernels on the dispatcher: a call of torch.ops.quantfuse.<op> on CUDA tensors
// runs here, in C++, with no Python on the way (docs/decisions/019-cuda-dispatch-key.md).
//
// Everything about a call but its token count is decided once, in Python, by the same code
// as the Python kernel (ops.fast_path_decision: the call plan, the oracle's choice, the CUDA
// backend's launch arguments), and cached here under the call's signature: the dtype,
// device, contiguity, alignment and last dim of every tensor argument and the value of every
// other argument. A call whose signature is cached as a CUDA launch allocates its outputs (or,
// through the op's out overload, checks the given ones' shapes and strides) and launches; any
// other call, or one whose launch checks fail, runs the op's Python kernel (its
// CompositeExplicitAutograd kernel, reached through the CPU slot of the dispatch table, which
// raises the proper error, or runs the Triton / torch backend).
//
// The experts ops come here too: their offsets are passed to the kernel, which checks their
// values itself, so no call reads them on the host (docs/decisions/021-experts-kernel-checks-offsets.md).
//
// No exception leaves a function of this module with cleanups on its frame: the fast path
// catches everything and reports "not done", and the redispatch to Python is made from a
// frame holding no objects (docs/decisions/007-bindings-return-error-strings.md).
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "host_api.h"
#include "quantfuse_catalog.h"
#include "experts_layout.h"
#include "scale_layout.h"

namespace quantfuse {
namespace {

// What Python decided for one call signature: launch on CUDA, with these arguments, or not.
struct Launch {
  bool cuda = false;
  int64_t act = 0, scheme = 0, layout = 0, group_size = 0, groups = 0, hidden = 0, q_width = 0;
  int64_t ue8m0 = 0;                     // catalog.Ue8m0 code
  std::vector<double> scale_floors;       // the FP8 recipe (CallPlan.fp8_floors) and its codes
  int64_t step = kStepFp32, apply = kApplyDiv;
  int64_t mx = 0;     // MX recipe fields (catalog.mx_code)
  double mx_device_factor = 0.0;  // the device's value of catalog.Recipe.device_factor (ScaleRecipe)
  bool swizzled = false, column_major = false;
  int up_index = -1, scale_index = -1;  // argument positions (-1: none)
  int64_t experts = 0;                   // the experts ops: num_experts (0: another op)
  int offsets_index = -1;                // their expert_offsets, then blockscale_offsets
  std::vector<double> act_params;        // the activation's parameters (catalog Activation.params)
  // (min tokens, vectors per thread, row stages, runtime recipe), ascending (custom_ops/tuning.py
  // Choice): a call takes the last class its token count reaches, else the kernels' defaults
  std::vector<std::tuple<int64_t, int64_t, int64_t, bool>> token_classes;
  bool final = true;  // false: not cached, decided again on the next call
  std::tuple<int64_t, int64_t, bool> choice(int64_t tokens) const {
    std::tuple<int64_t, int64_t, bool> c{0, 0, false};
    for (const auto& [min_tokens, vectors, row_stages, runtime_recipe] : token_classes) {
      if (tokens >= min_tokens) c = {vectors, row_stages, runtime_recipe};
    }
    return c;
  }
};

struct State {
  std::mutex mutex;
  // shared, not copied: a call holds its decision while clear_decisions() may empty the map
  std::unordered_map<std::string, std::shared_ptr<const Launch>> launches;
  std::vector<std::string> names;
  std::unique_ptr<std::atomic<int64_t>[]> counts;
  py::object* decide = nullptr;  // leaked on purpose: must outlive the interpreter's teardown
  std::vector<std::unique_ptr<torch::Library>> libraries;
};

State& state() {
  static State* s = new State();  // never destroyed, as the dispatcher may call in at exit
  return *s;
}

template <typename T>
void put(std::string& key, T v) {
  key.append(reinterpret_cast<const char*>(&v), sizeof(v));
}

// The call's signature: everything the decision may depend on, tokens excepted.
std::string signature(int64_t op, const c10::ArrayRef<c10::IValue>& args) {
  std::string key;
  key.reserve(96);
  put(key, op);
  for (const auto& a : args) {
    if (a.isTensor()) {
      const at::Tensor& t = a.toTensor();
      key += 'T';
      put(key, static_cast<int8_t>(t.scalar_type()));
      put(key, static_cast<int8_t>(t.device().type()));
      put(key, static_cast<int8_t>(t.device().index()));
      put(key, static_cast<int8_t>(t.is_contiguous()));
      put(key, static_cast<int8_t>(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0));
      put(key, static_cast<int64_t>(t.dim()));
      put(key, t.dim() > 0 ? t.size(-1) : int64_t(-1));
      put(key, t.numel() == 1);
    } else if (a.isNone()) {
      key += 'N';
    } else if (a.isBool()) {
      key += a.toBool() ? 'y' : 'n';
    } else if (a.isInt()) {
      key += 'I';
      put(key, a.toInt());
    } else if (a.isDouble()) {
      key += 'D';
      put(key, a.toDouble());
    } else if (a.isString()) {
      const auto& s = a.toStringRef();
      key += 'S';
      put(key, s.size());
      key += s;
    } else {
      key += '?';  // an argument kind the ops do not have: decided per call by Python
      return {};
    }
  }
  // QUANTFUSE_BACKEND is read at every call, as the oracle does
  const char* env = std::getenv("QUANTFUSE_BACKEND");
  key += '|';
  if (env != nullptr) key += env;
  return key;
}

// Ask Python (ops.fast_path_decision) what runs this call.
Launch decide(int64_t op, const c10::OperatorHandle& handle, const c10::ArrayRef<c10::IValue>& args) {
  Launch l;
  py::gil_scoped_acquire gil;
  try {
    const auto& schema = handle.schema();
    py::list positional;
    py::dict kwargs;
    for (size_t i = 0; i < args.size(); ++i) {
      py::object v = torch::jit::toPyObject(args[i]);
      if (schema.arguments()[i].kwarg_only()) {
        kwargs[py::str(schema.arguments()[i].name())] = v;
      } else {
        positional.append(v);
      }
    }
    py::object r = (*state().decide)(state().names[op], py::tuple(positional), kwargs);
    if (r.is_none()) return l;
    auto f = r.cast<py::dict>();
    l.act = f["act"].cast<int64_t>();
    l.scheme = f["scheme"].cast<int64_t>();
    l.layout = f["layout"].cast<int64_t>();
    l.group_size = f["group_size"].cast<int64_t>();
    l.groups = f["groups"].cast<int64_t>();
    l.hidden = f["hidden"].cast<int64_t>();
    l.q_width = f["q_width"].cast<int64_t>();
    l.ue8m0 = f["ue8m0"].cast<int64_t>();
    l.scale_floors = f["scale_floors"].cast<std::vector<double>>();
    l.step = f["step"].cast<int64_t>();
    l.apply = f["apply"].cast<int64_t>();
    l.mx = f["mx"].cast<int64_t>();
    l.mx_device_factor = f["mx_device_factor"].cast<double>();
    l.swizzled = f["swizzled"].cast<bool>();
    l.column_major = f["column_major"].cast<bool>();
    l.up_index = f["up_index"].cast<int>();
    l.scale_index = f["scale_index"].cast<int>();
    l.experts = f["experts"].cast<int64_t>();
    l.offsets_index = f["offsets_index"].cast<int>();
    l.act_params = f["act_params"].cast<std::vector<double>>();
    l.token_classes = f["token_classes"].cast<std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>>();
    l.final = f["final"].cast<bool>();
    l.cuda = true;
  } catch (...) {
    PyErr_Clear();  // the Python kernel runs this call and raises the error itself
    l.cuda = false;
  }
  return l;
}

std::optional<at::Tensor> optional_arg(const c10::ArrayRef<c10::IValue>& args, int i) {
  if (i < 0 || args[i].isNone()) return std::nullopt;
  return args[i].toTensor();
}

// One output as the op allocates it (plan.CallPlan._output_specs is the Python side;
// tests/gpu/test_dispatch.py compares them).
struct OutSpec {
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
};

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t step = 1;
  for (int64_t i = int64_t(sizes.size()) - 1; i >= 0; --i) {
    strides[i] = step;
    step *= sizes[i];
  }
  return strides;
}

std::vector<OutSpec> output_specs(const Launch& l, const at::Tensor& x, int64_t tokens) {
  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<OutSpec> specs;
  auto add = [&](std::vector<int64_t> sizes, at::ScalarType dtype) {
    auto strides = contiguous_strides(sizes);
    specs.push_back({std::move(sizes), std::move(strides), dtype});
  };
  if (l.scheme == kNoScheme) {
    auto sizes = lead;
    sizes.push_back(l.hidden);
    add(std::move(sizes), x.scalar_type());
    return specs;
  }
  auto q_sizes = lead;
  q_sizes.push_back(l.q_width);
  add(std::move(q_sizes), l.scheme == kMxfp4 ? at::kByte : at::kFloat8_e4m3fn);
  if (l.scheme == kStatic) return specs;
  if (l.scheme == kPerTensor) {  // the one scale
    add({1}, at::kFloat);
    return specs;
  }
  const auto s_dtype = (l.scheme == kMxfp8 || l.scheme == kMxfp4) ? at::kByte : at::kFloat;
  if (l.experts) {
    add({experts_scale_rows(tokens, l.experts), swizzled_cols(l.groups)}, s_dtype);
  } else if (l.swizzled) {
    add({swizzled_rows(tokens), swizzled_cols(l.groups)}, s_dtype);
  } else {
    auto sizes = lead;
    sizes.push_back(l.groups);
    if (l.column_major) {  // a [..., G] view of contiguous [G, ...] storage
      auto strides = contiguous_strides(lead);
      strides.push_back(tokens);
      specs.push_back({std::move(sizes), std::move(strides), s_dtype});
    } else {
      add(std::move(sizes), s_dtype);
    }
  }
  return specs;
}

// Whether a given output is exactly what the op would allocate (a size-1 dim's stride is free,
// as plan.check_outputs has it); a call whose outputs are not runs the Python kernel, which
// raises the error that names the problem.
bool matches(const at::Tensor& t, const OutSpec& spec, const at::Tensor& x) {
  if (t.scalar_type() != spec.dtype || t.device() != x.device() || t.sizes() != c10::IntArrayRef(spec.sizes))
    return false;
  for (size_t i = 0; i < spec.sizes.size(); ++i) {
    if (spec.sizes[i] != 1 && t.stride(int64_t(i)) != spec.strides[i]) return false;
  }
  return true;
}

// Run the call on the CUDA kernels if its signature was decided so; false: not run.
// ``n_outs``: the out overload's given outputs (the last arguments), 0 for the default overload.
bool fast(int64_t op, size_t n_outs, const c10::OperatorHandle& handle, torch::jit::Stack* stack) {
  try {
    const size_t n = handle.schema().arguments().size();
    const auto args = torch::jit::last(*stack, n);
    const std::string key = signature(op, args);
    if (key.empty()) return false;
    State& st = state();
    std::shared_ptr<const Launch> decided;
    {
      std::unique_lock<std::mutex> lock(st.mutex);
      auto it = st.launches.find(key);
      if (it != st.launches.end()) {
        decided = it->second;
      } else {
        lock.unlock();
        decided = std::make_shared<const Launch>(decide(op, handle, args));
        lock.lock();
        if (decided->final) st.launches.emplace(key, decided);
      }
    }
    const Launch& l = *decided;
    if (!l.cuda) return false;
    const at::Tensor& x = args[0].toTensor();
    int64_t tokens = 1;
    for (int64_t i = 0; i + 1 < x.dim(); ++i) tokens *= x.size(i);
    const auto specs = output_specs(l, x, tokens);
    std::vector<at::Tensor> outs;
    if (n_outs) {
      if (n_outs != specs.size()) return false;
      for (size_t i = 0; i < n_outs; ++i) {
        const at::Tensor& t = args[n - n_outs + i].toTensor();
        if (!matches(t, specs[i], x)) return false;
        outs.push_back(t);
      }
    } else {
      for (const auto& spec : specs) outs.push_back(at::empty_strided(spec.sizes, spec.strides, x.options().dtype(spec.dtype)));
    }
    int64_t st_t = l.groups, st_g = 1;
    if (l.column_major) {
      st_t = 1;
      st_g = tokens;
    } else if (l.swizzled) {
      st_t = st_g = 0;
    }
    std::optional<at::Tensor> s = outs.size() > 1 ? std::optional<at::Tensor>(outs[1]) : std::nullopt;
    const auto [vectors, row_stages, runtime_recipe] = l.choice(tokens);
    const std::string err =
        l.experts ? experts_quant_checked(l.act, l.scheme, l.layout, outs[0], outs[1], x,
                                          optional_arg(args, l.up_index), args[l.offsets_index].toTensor(),
                                          args[l.offsets_index + 1].toTensor(), l.mx, l.act_params, vectors,
                                          row_stages, l.mx_device_factor)
                  : act_quant_checked(l.act, l.scheme, l.layout, outs[0], s, x, optional_arg(args, l.up_index),
                                      optional_arg(args, l.scale_index), l.group_size, l.ue8m0, l.mx, st_t,
                                      st_g, l.swizzled, vectors, 0, l.act_params, l.scale_floors, l.step, l.apply,
                                      row_stages, l.mx_device_factor, runtime_recipe);
    if (!err.empty()) return false;
    torch::jit::drop(*stack, n);
    if (!n_outs) {
      for (auto& o : outs) torch::jit::push(*stack, std::move(o));
    }
    st.counts[op].fetch_add(1, std::memory_order_relaxed);
    return true;
  } catch (...) {
    return false;
  }
}

// ``n_outs``: 0 for an op's default overload, its output count for its out overload.
struct OpKernel : c10::OperatorKernel {
  OpKernel(int64_t op, size_t n_outs) : op(op), n_outs(n_outs) {}
  void operator()(const c10::OperatorHandle& handle, c10::DispatchKeySet, torch::jit::Stack* stack) {
    if (!fast(op, n_outs, handle, stack)) handle.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
  }
  int64_t op;
  size_t n_outs;
};

void register_ops(const std::vector<std::string>& names, const std::vector<int64_t>& out_counts,
                  py::object decide_fn) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  if (!st.libraries.empty()) return;  // once per process
  st.names = names;
  st.counts.reset(new std::atomic<int64_t>[names.size()]);
  for (size_t i = 0; i < names.size(); ++i) st.counts[i] = 0;
  st.decide = new py::object(std::move(decide_fn));
  auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "quantfuse", c10::DispatchKey::CUDA,
                                              __FILE__, __LINE__);
  for (size_t i = 0; i < names.size(); ++i) {
    lib->impl(names[i].c_str(), torch::CppFunction::makeFromBoxedFunctor(std::make_unique<OpKernel>(int64_t(i), 0)));
    const std::string out = names[i] + ".out";
    lib->impl(out.c_str(), torch::CppFunction::makeFromBoxedFunctor(
                               std::make_unique<OpKernel>(int64_t(i), size_t(out_counts[i]))));
  }
  st.libraries.push_back(std::move(lib));
}

py::dict counts() {
  State& st = state();
  py::dict d;
  for (size_t i = 0; i < st.names.size(); ++i) d[py::str(st.names[i])] = st.counts[i].load();
  return d;
}

void reset_counts() {
  State& st = state();
  for (size_t i = 0; i < st.names.size(); ++i) st.counts[i] = 0;
}

void clear_decisions() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  st.launches.clear();
}

}  // namespace

void bind_dispatch(pybind11::module_& m) {
  m.def("register_ops", &register_ops,
        "Register this module's kernel as the CUDA kernel of the named quantfuse ops and of their "
        "out overloads (out_counts: each one's output arguments, the last of its schema), once per "
        "process; decide(op, args, kwargs) -> dict of launch arguments or None, called once per "
        "call signature",
        py::arg("names"), py::arg("out_counts"), py::arg("decide"));
  m.def("dispatch_counts", &counts, "Calls run by the CUDA kernels on the dispatcher, by op");
  m.def("reset_dispatch_counts", &reset_counts, "Zero dispatch_counts()");
  m.def("clear_dispatch_decisions", &clear_decisions, "Forget the cached decisions (oracle.clear_cache)");
}

}  // namespace quantfuse
