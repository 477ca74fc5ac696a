"""A small CUDA workload for compute-sanitizer: cbam_fast forward and backward on a few shapes.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \\
        python -m benchmarks.sanitize [--modes fwd,fwd_bwd] [--max-shapes N]

(``gpu_check.sh`` runs it so.) Without PyTorch's caching allocator every tensor is its own
``cudaMalloc``, so an access past a tensor's end is outside any allocation and memcheck sees it.
The shapes cover both memory formats, the three io dtypes, every kernel size, ``H*W = 1``,
``C = 1`` and ``C = 3``, odd sizes that leave partial tiles, several position blocks, several
channel blocks, a conv bias and an MLP without biases. Each call is synchronised before the next,
so a sanitizer report follows the line naming the call that caused it; every forward output is
also checked against the fp64 reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/sanitize.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch  # noqa: E402

# (N, C, H, W), dtype, memory format, kernel size, MLP biases, conv bias
SHAPES = (
    ((2, 64, 7, 7), "bfloat16", "contiguous", 7, True, False),
    ((2, 80, 13, 17), "float16", "channels_last", 5, True, False),
    ((1, 3, 1, 1), "float32", "contiguous", 3, True, False),
    ((2, 1, 9, 9), "float32", "channels_last", 3, False, True),
    ((3, 24, 56, 56), "bfloat16", "channels_last", 7, True, True),
    ((2, 256, 14, 14), "float32", "contiguous", 7, True, False),
    ((2, 200, 20, 20), "float16", "contiguous", 5, False, False),
)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(modes=("fwd", "fwd_bwd"), device="cuda", max_shapes: int | None = None) -> None:
    """Run the workload (``device="cpu"`` with ``TRITON_INTERPRET=1``: a dry run of this script)
    on the first ``max_shapes`` shapes (all by default)."""
    import cbam_fast

    from . import bench

    shapes = SHAPES[:max_shapes] if max_shapes else SHAPES
    for shape, dtype, fmt, k, mlp_bias, conv_bias in shapes:
        torch.manual_seed(0)
        tdtype = getattr(torch, dtype)
        module = cbam_fast.CBAM(shape[1], kernel_size=k).to(device=device, dtype=tdtype)
        params = [module.fc1.weight, module.fc1.bias if mlp_bias else None, module.fc2.weight,
                  module.fc2.bias if mlp_bias else None, module.conv.weight,
                  torch.randn(1, device=device, dtype=tdtype) * 0.2 if conv_bias else None]
        params = [None if p is None else p.detach() for p in params]
        x = torch.randn(shape, device=device, dtype=tdtype).contiguous(memory_format=bench.FORMAT[fmt])
        label = f"{'x'.join(map(str, shape))} {dtype} {fmt} k={k} mlp_bias={mlp_bias} conv_bias={conv_bias}"
        if "fwd" in modes:
            print(f"sanitize: forward {label}", flush=True)
            with torch.no_grad():
                y = cbam_fast.cbam(x, *params)
            _sync(device)
            bench.check_against_reference(label, bench.Inputs(x, tuple(params), None), y)
        if "fwd_bwd" in modes:
            print(f"sanitize: forward+backward {label}", flush=True)
            xg = x.detach().requires_grad_()
            pg = [None if p is None else p.detach().requires_grad_() for p in params]
            y = cbam_fast.cbam(xg, *pg)
            grads = torch.autograd.grad(y, [xg, *(p for p in pg if p is not None)], torch.randn_like(y))
            _sync(device)
            bad = [i for i, g in enumerate(grads) if not torch.isfinite(g).all()]
            assert not bad, f"{label}: non-finite gradient(s) at positions {bad}"
    print(f"sanitize: {len(shapes)} shapes done ({', '.join(modes)})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sanitize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="fwd,fwd_bwd", help="comma-separated: fwd, fwd_bwd")
    ap.add_argument("--max-shapes", type=int, default=None,
                    help=f"only the first N of the {len(SHAPES)} shapes (gpu_check.sh's default run: 5)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.sanitize: needs a CUDA device")
        return 2
    os.environ["CBAM_FAST_BACKEND"] = "triton"
    run(tuple(m for m in args.modes.split(",") if m), max_shapes=args.max_shapes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
