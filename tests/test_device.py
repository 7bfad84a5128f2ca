import pytest
import torch

from genlab.device import select_device, set_determinism


def test_cpu_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    assert select_device("auto").type in ({expected} if expected else {"cpu", "mps"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", ""])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps"):
        select_device(name)


def test_deterministic_cuda_runs_take_the_math_attention_kernel(monkeypatch):
    """Flash, memory-efficient and cuDNN attention sum their backward in no fixed order, so a
    deterministic CUDA run allows only the math kernel; a run that is not gets all of them back."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.backends.cuda
    kernels = (cuda.flash_sdp_enabled, cuda.mem_efficient_sdp_enabled, cuda.cudnn_sdp_enabled)
    try:
        set_determinism(True, torch.device("cuda"))
        assert not any(enabled() for enabled in kernels) and cuda.math_sdp_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        set_determinism(False, torch.device("cuda"))
        assert all(enabled() for enabled in kernels) and torch.backends.cudnn.benchmark
        set_determinism(True, torch.device("cpu"))  # the CPU has one kernel: nothing to choose
        assert all(enabled() for enabled in kernels)
    finally:
        set_determinism(False, torch.device("cpu"))
