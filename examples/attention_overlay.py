"""Overlay CBAM's spatial attention on an image and save it as a PNG.

Usage: python examples/attention_overlay.py [OUT.png]
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cbam_fast  # noqa: E402


def main(out="attention.png"):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blob = torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) * 8)  # a bright spot to attend to
    image = torch.stack([blob, 0.5 * blob, 1 - blob]).unsqueeze(0).clamp(0, 1)
    features = torch.nn.Conv2d(3, 32, 3, padding=1)(image)
    block = cbam_fast.CBAM(32, reduction_ratio=4, keep_attention=True).eval()
    with torch.no_grad():
        block(features)
    gate = F.interpolate(block.spatial_attention, size=image.shape[-2:], mode="bilinear")[0, 0]
    plt.imshow(image[0].permute(1, 2, 0))
    plt.imshow(gate, cmap="jet", alpha=0.5)
    plt.axis("off")
    plt.savefig(out, bbox_inches="tight")
    plt.close()
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
