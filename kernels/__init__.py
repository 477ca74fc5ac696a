"""Triton kernels of cbam_fast and their launchers.

Installed as ``cbam_fast.kernels`` (pyproject maps the repository's top-level ``kernels/``
folder there); never imported as a top-level ``kernels`` package.
"""

from .launch import (
    BLOCKS, KERNEL_SIZES, POOL_AVG, POOL_AVG_MAX, POOL_LIGHT, ChannelMLP, Saved, acc_dtype, cbam_backward, cbam_forward,
)

__all__ = [
    "BLOCKS", "KERNEL_SIZES", "POOL_AVG", "POOL_AVG_MAX", "POOL_LIGHT", "ChannelMLP", "Saved", "acc_dtype",
    "cbam_backward", "cbam_forward",
]
