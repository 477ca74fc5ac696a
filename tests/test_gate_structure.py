"""Structural facts of the gate family's launched code, read off the calls' plans as planned for
a 132-SM GPU (benchmarks/launched.py; no timing, no GPU): the launches of each call, the ATen ops
between them, the full-size passes, grid sizes and the batch order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/

from benchmarks import launched  # noqa: E402

SMS = launched.SM_COUNT
SE_B32 = [launched.Call((32, *chw), "bf16", fmt, "se", False, "fwd_bwd") for chw in launched.R50_STAGES
          for fmt in ("nchw", "cl")]
SE_B1 = [launched.Call((1, *chw), "bf16", fmt, "se", False, "fwd") for chw in launched.R50_STAGES
         for fmt in ("nchw", "cl")]
SPATIAL_B32 = [launched.Call((32, *chw), "bf16", fmt, "spatial", False, "fwd_bwd") for chw in launched.R50_STAGES
               for fmt in ("nchw", "cl")]

SPATIAL_FWD = [launched.Call((n, *chw), "bf16", fmt, "spatial", False, "fwd") for n in (32, 1)
               for chw in launched.R50_STAGES for fmt in ("nchw", "cl")]


def _ids(calls):
    return [c.id for c in calls]


@pytest.mark.parametrize("call", SE_B32 + SE_B1, ids=_ids(SE_B32 + SE_B1))
def test_se_forward_is_two_launches_and_no_aten_op(captured, call):
    """The SE gate's forward at any batch size: two kernels, each one full-size pass over x (the
    second also writes y), the MLP folded into them: no ATen op (no parameter cast, no tiny op)."""
    cap = captured(call)
    assert [r.launch.role for r in cap.forward] == ["channel_pool", "gate_scale"]
    assert [(r.launch.reads, r.launch.writes) for r in cap.forward] == [(("x",), ()), (("x",), ("y",))]
    assert [o.name for o in cap.aten_forward] == []


@pytest.mark.parametrize("call", SE_B32, ids=_ids(SE_B32))
def test_se_backward_is_three_launches_and_no_aten_op(captured, call):
    """The SE gate's backward: three kernels (the reduce pass with the MLP's backward folded in,
    the parameter gradients, dx), x read once, dy twice, dx written once, and no ATen op (no
    parameter or gradient cast, no recomputed MLP)."""
    cap = captured(call)
    assert [r.launch.role for r in cap.backward] == ["gate_bwd_reduce", "param_grads", "gate_bwd_dx"]
    assert sorted(n for r in cap.backward for n in r.launch.reads) == ["dy", "dy", "x"]
    assert [n for r in cap.backward for n in r.launch.writes] == ["dx"]
    assert [o.name for o in cap.aten_backward] == []


@pytest.mark.parametrize("call", SPATIAL_B32, ids=_ids(SPATIAL_B32))
def test_spatial_gate_passes(captured, call):
    """The spatial gate: pool and scale forward, reduce and dx backward, the k x k conv between
    them on the [N, 2, H, W] maps only."""
    cap = captured(call)
    assert [r.launch.role for r in cap.forward] == ["gate_pool", "gate_scale"]
    assert [r.launch.role for r in cap.backward] == ["gate_bwd_reduce", "gate_bwd_dx"]
    assert all(o.bytes < cap.x_bytes / 2 for o in cap.aten_forward + cap.aten_backward)


@pytest.mark.parametrize("call", SPATIAL_FWD, ids=_ids(SPATIAL_FWD))
def test_spatial_gate_inference_is_two_launches_and_no_aten_op(captured, call):
    """The spatial gate with nothing to differentiate: the pool pass and CBAM's gate pass (the
    k x k conv of the maps and the sigmoid in the kernel, no channel gate), x read twice and y
    written once, and no ATen op (the maps are not cast, concatenated or convolved by PyTorch)."""
    cap = captured(call)
    assert [r.launch.role for r in cap.forward] == ["gate_pool", "spatial_gate"]
    assert [(r.launch.reads, r.launch.writes) for r in cap.forward] == [(("x",), ()), (("x",), ("y",))]
    assert not cap.forward[1].launch.constexprs["HAS_CG"]
    assert [o.name for o in cap.aten_forward] == []


@pytest.mark.parametrize("call", SE_B32 + SPATIAL_B32 + SPATIAL_FWD[:8], ids=_ids(SE_B32 + SPATIAL_B32 + SPATIAL_FWD[:8]))
def test_gate_passes_fill_the_gpu_and_walk_a_serpentine(captured, call):
    """Every full-size pass has at least 4 programs per SM (its tile work allows it at every
    stage), but the SE gate's scale and dx passes, which split H*W only while a sample's W2 (dx:
    W1) slabs stay under a quarter of its x (every split re-reads them): at least one program per (sample,
    channel block) there, and 4 per SM where the slabs allow; consecutive passes over a tensor walk
    the batch in opposite directions."""
    cap = captured(call)
    for r in cap.records:
        if r.launch.reads:
            want = 4 * SMS
            c = r.launch.constexprs
            if (r.launch.role == "gate_scale" and c["FUSED"]) or (r.launch.role == "gate_bwd_dx" and c["MLP"]):
                N, C = call.shape[:2]
                want = min(want, N * -(-C // c["BLOCK_K"]))
            assert r.launch.programs >= want, (r.launch.role, r.launch.programs)
            assert len(r.launch.grid) == 1
    directions = [r.launch.constexprs["REVERSE"] for r in cap.records if r.launch.reads]
    assert directions == [0, 1, 0, 1][:len(directions)] and len(directions) == (4 if call.mode == "fwd_bwd" else 2)
