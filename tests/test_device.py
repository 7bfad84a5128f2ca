import pytest
import torch

from genlab.device import select_device


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
