// act_group_quant_kernel instantiations for F32 inputs (see act_quant_group.cuh).
#define QF_TRAITS F32
#define QF_LAUNCH_NAME launch_group_f32
#include "act_quant_group.cuh"
