"""cbam_fast: a fused, deterministic, memory-lean CBAM attention block for PyTorch.

``cbam_fast.CBAM`` is a drop-in ``nn.Module``; ``cbam_fast.cbam`` the functional form;
``cbam_fast.reference`` the pure-PyTorch definition both are tested against. Its two halves alone:
``cbam_fast.ChannelAttention`` (squeeze-and-excitation and its relatives: timm's SE, EffectiveSE,
EfficientNet's SqueezeExcite, ECA) and ``cbam_fast.SpatialAttention``, with the functional forms
``channel_attention`` and ``spatial_attention``. On CUDA tensors the
forward and backward run fused Triton kernels; on CPU tensors PyTorch ops (see ``backend()``).
"""

from ._kernels_path import ensure_kernels_importable

ensure_kernels_importable()

from . import reference  # noqa: E402
from .convert import UnsupportedModule, convert  # noqa: E402
from .functional import BACKENDS, backend, cbam  # noqa: E402
from .gate_modules import ChannelAttention, SpatialAttention  # noqa: E402
from .gates import channel_attention, spatial_attention  # noqa: E402
from .module import CBAM  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BACKENDS", "CBAM", "ChannelAttention", "SpatialAttention", "UnsupportedModule", "backend", "cbam",
           "channel_attention", "convert", "reference", "spatial_attention", "__version__"]
