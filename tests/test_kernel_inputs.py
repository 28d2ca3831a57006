"""The shared pre-checks kernel modules make before claiming a call (CPU)."""

import torch

from quantfuse.custom_ops import cuda_backend, kernel_inputs, triton_backend


def test_input_reasons():
    x = torch.randn(4, 256)
    assert kernel_inputs.input_reason(x) == "input on cpu, not CUDA"
    assert kernel_inputs.input_reason(x, cpu_ok=True) is None
    assert "float64" in kernel_inputs.input_reason(x.double(), cpu_ok=True)
    assert kernel_inputs.input_reason(x.t(), cpu_ok=True) == "input not contiguous"
    assert kernel_inputs.input_reason(torch.tensor(1.0), cpu_ok=True) == "0-d input"
    assert kernel_inputs.input_reason("x") == "input is not a tensor"


def test_activation_and_group_reasons():
    assert kernel_inputs.activation_hidden("silu_and_mul", 512) == (256, None)
    assert kernel_inputs.activation_hidden("silu_and_mul", 511)[1] == "last dim 511 is odd"
    assert kernel_inputs.activation_hidden("relu2", 511) == (511, None)
    assert kernel_inputs.fp8_group_reason(256, 128) is None
    assert kernel_inputs.fp8_group_reason(256, 32) == "group_size 32 not in (64, 128)"
    assert kernel_inputs.fp8_group_reason(192, 128) == "hidden size 192 not divisible by group_size 128"


def test_backends_refuse_what_they_do_not_run():
    x = torch.randn(4, 256)
    assert triton_backend.unsupported_reason("relu2_mxfp8_quant", x, None) == "unknown op 'relu2_mxfp8_quant'"
    assert cuda_backend.unsupported_reason("gelu_mxfp8_quant", x, None) == "unknown op 'gelu_mxfp8_quant'"
    for mod in (cuda_backend, triton_backend):
        assert mod.unsupported_reason("silu_and_mul", x, None) == "input on cpu, not CUDA"


def test_silu_fp8_group_family_reasons():
    ops = triton_backend.OPS
    x = torch.randn(4, 384)
    check = kernel_inputs.silu_fp8_group_reason
    assert check("silu_and_mul", ops, x, None, cpu_ok=True) is None
    assert check("silu_and_mul_per_block_quant", ops, x, 64, cpu_ok=True) is None
    assert check("silu_and_mul_per_block_quant", ops, x, 128, cpu_ok=True) == \
        "hidden size 192 not divisible by group_size 128"
    assert check("per_token_group_quant_fp8", ops, x, 128, cpu_ok=True) is None
    assert check("silu_and_mul", ops, torch.randn(4, 7), None, cpu_ok=True) == "last dim 7 is odd"
    assert check("relu2", ops, x, None, cpu_ok=True) == "unknown op 'relu2'"


def test_op_table_covers_every_pair_once():
    """Both kernel families run every activation alone, every unfused scheme op and
    every fused pair, under the op names of ops.py."""
    from quantfuse.custom_ops import ops

    expected = set(ops.OPS)
    assert set(kernel_inputs.OP_TABLE) == expected
    assert set(cuda_backend.OPS) == expected
    assert len(kernel_inputs.OP_TABLE) == 2 + 4 + 2 * 4


def test_scheme_reasons():
    check = kernel_inputs.scheme_reason
    x = torch.randn(4, 96)
    assert check("relu2_mxfp4_quant", x, None, cpu_ok=True) is None
    assert check("silu_and_mul_mxfp8_quant", x, None, cpu_ok=True) == \
        "hidden size 48 not divisible by the MX block 32"
    assert check("relu2_per_block_quant", x, 64, cpu_ok=True) == "hidden size 96 not divisible by group_size 64"
    assert check("per_token_quant_fp8", x.double(), None, cpu_ok=True) == "dtype torch.float64 not in bf16/fp16/fp32"
    assert check("mxfp8_quant", x, 16, cpu_ok=True) == "MX block 16 != 32"


def test_cuda_units_cover_every_dtype_and_activation():
    """The generated translation units: one per (dtype, activation), listed once in the
    header that bindings.cpp dispatches on."""
    files = cuda_backend._generated_sources()
    units = [n for n in files if n.endswith(".cu")]
    assert len(units) == len(kernel_inputs.SUPPORTED_DTYPES) * len(kernel_inputs.ACT_CODES) == 9
    header = files["quantfuse_units.h"]
    for name, traits, scalar, struct, code in cuda_backend.UNITS:
        assert f"X({name}, {scalar}, {code})" in header
        assert f"#define QF_TRAITS {traits}\n#define QF_ACT {struct}\n" in files[f"unit_{name}.cu"]
