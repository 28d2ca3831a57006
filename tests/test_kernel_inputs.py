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
    for mod in (cuda_backend, triton_backend):
        assert mod.unsupported_reason("relu2_mxfp8_quant", x, None) == "unknown op 'relu2_mxfp8_quant'"
        assert mod.unsupported_reason("silu_and_mul", x, None) == "input on cpu, not CUDA"


def test_silu_fp8_group_family_reasons():
    ops = cuda_backend.OPS
    x = torch.randn(4, 384)
    check = kernel_inputs.silu_fp8_group_reason
    assert check("silu_and_mul", ops, x, None, cpu_ok=True) is None
    assert check("silu_and_mul_per_block_quant", ops, x, 64, cpu_ok=True) is None
    assert check("silu_and_mul_per_block_quant", ops, x, 128, cpu_ok=True) == \
        "hidden size 192 not divisible by group_size 128"
    assert check("per_token_group_quant_fp8", ops, x, 128, cpu_ok=True) is None
    assert check("silu_and_mul", ops, torch.randn(4, 7), None, cpu_ok=True) == "last dim 7 is odd"
    assert check("relu2", ops, x, None, cpu_ok=True) == "unknown op 'relu2'"
