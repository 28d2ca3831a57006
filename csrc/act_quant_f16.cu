// act_group_quant_kernel instantiations for F16 inputs (see act_quant_group.cuh).
#define QF_TRAITS F16
#define QF_LAUNCH_NAME launch_group_f16
#include "act_quant_group.cuh"
