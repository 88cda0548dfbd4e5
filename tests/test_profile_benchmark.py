"""benchmarks/profile_forwards.py sorts kernels by kind and runs end to end (CPU dry run)."""

from __future__ import annotations

import pytest

from tests.conftest import SYNTHETIC_8M, benchmark


@pytest.mark.parametrize("kernel, kind", [
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize64x64x8_stage3_warpsize1x4x1_ffma", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_d884gemm_64x32_16x4_tn_align1>", "matmul"),
    ("void (anonymous namespace)::softmax_warp_forward<double, double, double, 10>", "softmax"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>", "layer norm"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::float16_copy_kernel_cuda",
     "copy"),
    ("void at::native::vectorized_elementwise_kernel<2, at::native::erf_kernel_cuda",
     "elementwise"),
    ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<double, MeanOps>>", "reduce"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>", "copy"),
    ("void at::native::index_elementwise_kernel_helper", "elementwise"),
    ("Memset (Device)", "other"),
])
def test_kernels_are_sorted_by_kind(kernel, kind):
    assert benchmark("profile_forwards").kind_of(kernel) == kind


def test_a_dry_run_on_the_cpu_reports_every_forward(esmfuzz_cache, capsys, one_cpu_thread):
    benchmark("profile_forwards").main([
        "--model", SYNTHETIC_8M, "--device", "cpu", "--shapes", "2x12",
        "--dtypes", "float32", "float64", "--packed", "--repeats", "1"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "kernels" in line and "linear floor" in line]
    assert [line.split(":")[0] for line in lines] == [
        "float32 padded 2x12", "float32 packed 2x12 (24 tokens)", "float64 padded 2x12"]
