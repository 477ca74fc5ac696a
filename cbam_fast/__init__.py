"""cbam_fast: a fused, deterministic, memory-lean CBAM attention block for PyTorch.

``cbam_fast.CBAM`` is a drop-in ``nn.Module``; ``cbam_fast.cbam`` the functional form;
``cbam_fast.reference`` the pure-PyTorch definition both are tested against. On CUDA tensors the
forward and backward run fused Triton kernels; on CPU tensors PyTorch ops (see ``backend()``).
"""

from ._kernels_path import ensure_kernels_importable

ensure_kernels_importable()

from . import reference  # noqa: E402
from .convert import UnsupportedModule, convert  # noqa: E402
from .functional import BACKENDS, backend, cbam  # noqa: E402
from .module import CBAM  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BACKENDS", "CBAM", "UnsupportedModule", "backend", "cbam", "convert", "reference", "__version__"]
