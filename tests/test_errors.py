"""Every bad input gets a TypeError/ValueError naming the problem, before any kernel runs."""

import pytest
import torch

import cbam_fast
from cbam_fast.kernels import launch
from utils import PARAM_NAMES, make_params


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if any launcher is reached: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("a kernel was launched for a bad input")

    import cbam_fast.ops as ops

    monkeypatch.setattr(ops, "cbam_forward", boom)
    monkeypatch.setattr(launch, "cbam_forward", boom)


def _args(device, C=8, k=3, **override):
    p = make_params(C, 4, k, device)
    p.update(override)
    return [p[n] for n in PARAM_NAMES]


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
class TestFunctionalErrors:
    @pytest.fixture(autouse=True)
    def _backend(self, monkeypatch, backend):
        monkeypatch.setenv("CBAM_FAST_BACKEND", backend)

    def test_not_a_tensor(self, device, no_launch):
        with pytest.raises(TypeError, match="input must be a torch.Tensor"):
            cbam_fast.cbam([[1.0]], *_args(device))

    @pytest.mark.parametrize("shape", [(8, 5, 5), (1, 8, 5, 5, 1), (8,)])
    def test_wrong_ndim(self, device, no_launch, shape):
        with pytest.raises(ValueError, match="must be 4-D"):
            cbam_fast.cbam(torch.randn(shape, device=device), *_args(device))

    def test_channel_mismatch(self, device, no_launch):
        with pytest.raises(ValueError, match="input has 6 channels but the parameters are for 8"):
            cbam_fast.cbam(torch.randn(1, 6, 5, 5, device=device), *_args(device))

    @pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
    def test_non_floating_input(self, device, no_launch, dtype):
        x = torch.ones(1, 8, 5, 5, device=device).to(dtype)
        with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
            cbam_fast.cbam(x, *_args(device))

    def test_non_floating_parameter(self, device, no_launch):
        w = torch.ones(2, 8, dtype=torch.int64, device=device)
        with pytest.raises(TypeError, match="fc1_weight must be float"):
            cbam_fast.cbam(torch.randn(1, 8, 5, 5, device=device), *_args(device, fc1_weight=w))

    def test_parameters_on_another_device(self, device, no_launch):
        other = "meta"
        args = _args(device)
        args[4] = args[4].to(other)
        with pytest.raises(ValueError, match="conv_weight is on meta but the input is on"):
            cbam_fast.cbam(torch.randn(1, 8, 5, 5, device=device), *args)

    @pytest.mark.parametrize("k", [4, 2])
    def test_even_kernel_size(self, device, no_launch, k):
        args = _args(device)
        args[4] = torch.randn(1, 2, k, k, device=device)
        with pytest.raises(ValueError, match=f"kernel_size must be odd and positive.*got {k}"):
            cbam_fast.cbam(torch.randn(1, 8, 5, 5, device=device), *args)

    def test_wrong_parameter_shape(self, device, no_launch):
        with pytest.raises(ValueError, match="fc2_weight has shape"):
            cbam_fast.cbam(torch.randn(1, 8, 5, 5, device=device), *_args(device, fc2_weight=torch.randn(8, 3)))

    @pytest.mark.parametrize("shape", [(1, 8, 0, 5), (1, 8, 5, 0)])
    def test_empty_spatial(self, device, no_launch, shape):
        with pytest.raises(ValueError, match="C, H, W >= 1"):
            cbam_fast.cbam(torch.randn(shape, device=device), *_args(device))


class TestModuleErrors:
    @pytest.mark.parametrize("channels", [0, -3])
    def test_channels_below_one(self, channels):
        with pytest.raises(ValueError, match="channels must be >= 1"):
            cbam_fast.CBAM(channels)

    @pytest.mark.parametrize("k", [0, -1, 2, 4, 6])
    def test_even_or_non_positive_kernel_size(self, k):
        with pytest.raises(ValueError, match="kernel_size must be odd and positive"):
            cbam_fast.CBAM(16, kernel_size=k)

    def test_unsupported_odd_kernel_size(self):
        with pytest.raises(ValueError, match=r"one of \(3, 5, 7\)"):
            cbam_fast.CBAM(16, kernel_size=9)

    @pytest.mark.parametrize("bad", [2.5, "8", True])
    def test_non_int_arguments(self, bad):
        with pytest.raises(TypeError):
            cbam_fast.CBAM(bad)
        with pytest.raises(TypeError):
            cbam_fast.CBAM(16, kernel_size=bad)

    def test_reduction_below_one(self):
        with pytest.raises(ValueError, match="reduction_ratio must be a number >= 1"):
            cbam_fast.CBAM(16, reduction_ratio=0)

    def test_channel_mismatch_names_the_module(self, device, no_launch):
        m = cbam_fast.CBAM(16).to(device)
        with pytest.raises(ValueError, match="this module was built for 16"):
            m(torch.randn(1, 12, 4, 4, device=device))


def test_bad_backend_name(monkeypatch, device):
    monkeypatch.setenv("CBAM_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="CBAM_FAST_BACKEND must be one of auto, triton, torch"):
        cbam_fast.cbam(torch.randn(1, 8, 5, 5, device=device), *_args(device))
