// The host-side entry points shared by the translation units of the extension (ATen types):
// the checked launch of bindings.cpp and the dispatcher registration of dispatch.cpp.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "quantfuse_catalog.h"  // the default recipe's codes

namespace quantfuse {

// Check every argument, then launch act(x) -> scheme into q (and s); the defaults of the FP8
// recipe arguments are the default recipe's (bindings.cpp scale_recipe). Returns "" or the
// message of the first failed check; never throws (docs/decisions/007-bindings-return-error-strings.md).
std::string act_quant_checked(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q,
                              const std::optional<at::Tensor>& s, const at::Tensor& x,
                              const std::optional<at::Tensor>& up, const std::optional<at::Tensor>& scale,
                              int64_t group_size, int64_t ue8m0, int64_t mx, int64_t s_stride_t, int64_t s_stride_g,
                              bool swizzled, int64_t vectors = 0, int64_t blocks_per_sm = 0,
                              const std::vector<double>& act_params = {},
                              const std::vector<double>& scale_floors = {kDefaultEps, 0.0, 0.0},
                              int64_t step = kStepFp32, int64_t apply = kApplyDiv, int64_t row_stages = 0,
                              double mx_device_factor = 0.0, bool runtime_recipe = false);

// The same for the experts ops (bindings.cpp experts_quant_impl): s is the experts scale buffer,
// the offsets' values are checked by the kernel; vectors, row_stages: the launch choice
// (custom_ops/tuning.py), mx_device_factor as act_quant_checked's.
std::string experts_quant_checked(int64_t act, int64_t scheme, int64_t layout, const at::Tensor& q,
                                  const at::Tensor& s, const at::Tensor& x, const std::optional<at::Tensor>& up,
                                  const at::Tensor& expert_offsets, const at::Tensor& blockscale_offsets, int64_t mx,
                                  const std::vector<double>& act_params = {}, int64_t vectors = 0,
                                  int64_t row_stages = 0, double mx_device_factor = 0.0);

// Add the dispatcher functions of dispatch.cpp to the module.
void bind_dispatch(pybind11::module_& m);

}  // namespace quantfuse
