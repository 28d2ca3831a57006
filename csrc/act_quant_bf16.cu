// act_group_quant_kernel instantiations for BF16 inputs (see act_quant_group.cuh).
#define QF_TRAITS BF16
#define QF_LAUNCH_NAME launch_group_bf16
#include "act_quant_group.cuh"
