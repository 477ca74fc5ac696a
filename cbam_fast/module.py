"""``cbam_fast.CBAM``: the drop-in nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from .functional import cbam, check_kernel_size


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018), fused.

    ``y = x * cg * sg`` with the channel gate ``cg = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``,
    ``MLP = fc2(relu(fc1(.)))`` (``Linear(C, hidden)``, ``Linear(hidden, C)``, with biases,
    ``hidden = max(1, C // reduction_ratio)``), and the spatial gate
    ``sg = sigmoid(conv(cat[max_c(x*cg), mean_c(x*cg)]))``, a k x k 2->1 conv without bias,
    padding k // 2. Parameters are initialised as PyTorch's Linear and Conv2d defaults, like the
    authors' code.

    Input ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or channels_last; the output has
    the input's shape, dtype and memory format.
    """

    def __init__(self, channels: int, reduction_ratio: int = 16, kernel_size: int = 7):
        super().__init__()
        for name, value in (("channels", channels), ("reduction_ratio", reduction_ratio)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"CBAM: {name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"CBAM: {name} must be >= 1, got {value}")
        check_kernel_size(kernel_size)
        self.channels = channels
        self.reduction_ratio = reduction_ratio
        self.kernel_size = kernel_size
        hidden = max(1, channels // reduction_ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != self.channels:
            raise ValueError(f"CBAM: input has {x.shape[1]} channels but this module was built for {self.channels}")
        return cbam(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.conv.weight, self.conv.bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction_ratio={self.reduction_ratio}, kernel_size={self.kernel_size}"
