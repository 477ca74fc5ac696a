"""Structural facts of the launched code, read off the calls' plans (no timing, no GPU).

Each benchmark call (benchmarks/launched.py) is dry-run as it would be planned for a 132-SM GPU:
every Triton launch and every ATen op of the call is recorded. These tests pin what the design
promises: launch counts, no per-call parameter casts or fills, the full-size passes, grid sizes,
and the tickets' counters left at zero. What the compiler makes of the launches (registers,
spills, vector widths, pipelining) is read by tests/compile_check.py and reported by
``python -m benchmarks.plan``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/

from benchmarks import launched  # noqa: E402
from cbam_fast.kernels import launch  # noqa: E402

SMS = launched.SM_COUNT
B32 = [launched.Call((32, *chw), "bf16", fmt, "default", False, "fwd_bwd")
       for chw in launched.R50_STAGES for fmt in ("nchw", "cl")]
B1 = [launched.Call((1, *chw), "bf16", fmt, "default", False, "fwd")
      for chw in launched.R50_STAGES for fmt in ("nchw", "cl")]


def _ids(calls):
    return [c.id for c in calls]


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_forward_is_three_launches_and_no_aten_op(captured, call):
    """The default preset's forward, at any batch size: three kernels, each one full-size pass
    over x (the last also writes y), and no ATen op at all (no parameter cast, no fill)."""
    cap = captured(call)
    assert [r.launch.role for r in cap.forward] == ["channel_pool", "spatial_pool", "spatial_gate"]
    assert [o.name for o in cap.aten_forward] == []
    assert [(r.launch.reads, r.launch.writes) for r in cap.forward] == [(("x",), ()), (("x",), ()), (("x",), ("y",))]


@pytest.mark.parametrize("call", B32, ids=_ids(B32))
def test_backward_is_four_launches_and_no_aten_op(captured, call):
    """The backward: four kernels (the MLP backward folded into the second by tickets, every
    parameter gradient in the third); x read twice, dy twice, dx written once; no ATen op: no
    cast of a parameter or a gradient, no sum of partials, no zero-filled gradient for the
    forward's auxiliary outputs."""
    cap = captured(call)
    assert [r.launch.role for r in cap.backward] == ["bwd_reduce", "bwd_spatial", "param_grads", "bwd_dx"]
    assert [o.name for o in cap.aten_backward] == []
    reads = [n for r in cap.backward for n in r.launch.reads]
    writes = [n for r in cap.backward for n in r.launch.writes]
    assert sorted(reads) == ["dy", "dy", "x", "x"] and writes == ["dx"]


PRESET_CALLS = [launched.Call((32, 512, 28, 28), "bf16", fmt, preset, train, "fwd_bwd")
                for preset, train in (("timm", False), ("timm", True), ("timm_light", True), ("official", True),
                                      ("official", False), ("ultralytics", False), ("mmyolo", False), ("luuuyi", False))
                for fmt in ("nchw", "cl")]
BN_TRAIN_FORWARD = ["channel_pool", "spatial_pool", "spatial_stats", "spatial_gate", "bn_update"]


@pytest.mark.parametrize("call", PRESET_CALLS, ids=_ids(PRESET_CALLS))
def test_every_preset_runs_in_the_kernels_alone(captured, call):
    """Every preset as converted (parameters in x's dtype): the conv weight is read in its own
    layout ([mean, max], the light one-channel form) and the spatial BatchNorm is applied by the
    kernels, so no ATen op runs in the forward or the backward. Eval mode (running statistics)
    launches what the default preset does; training mode (batch statistics) two launches more,
    the statistics of the conv output and the in-place running-statistics update."""
    cap = captured(call)
    bn_train = call.train and call.preset in ("timm", "timm_light", "official")
    want = BN_TRAIN_FORWARD if bn_train else ["channel_pool", "spatial_pool", "spatial_gate"]
    assert [r.launch.role for r in cap.forward] == want
    assert [r.launch.role for r in cap.backward] == ["bwd_reduce", "bwd_spatial", "param_grads", "bwd_dx"]
    assert [o.name for o in cap.aten_forward] == [] and [o.name for o in cap.aten_backward] == []
    reads = [n for r in cap.forward + cap.backward for n in r.launch.reads]
    assert sorted(reads) == ["dy", "dy", "x", "x", "x", "x", "x"], "passes over full-size tensors as the default's"


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_no_parameter_casts(triton_backend, param_dtype):
    """A bf16 input with parameters in any float dtype (fp32 as under autocast, or the input's):
    the kernels read each parameter as it is and write each gradient in its parameter's dtype,
    so neither the forward nor the backward has an ATen op."""
    import cbam_fast
    from cbam_fast.kernels.plan import recording

    torch.manual_seed(0)
    launch.POISON = False  # (restored by the suite's autouse fixture) no test-only fills
    m = cbam_fast.CBAM(64, 16, 7).to(param_dtype)
    x = torch.randn(4, 64, 9, 11, dtype=torch.bfloat16).requires_grad_()
    with recording(dry=True, sm_count=SMS), torch.no_grad():
        m(x)  # warm: one-time workspace allocation
    with recording(dry=True, sm_count=SMS) as rec:
        counter = launched.AtenCounter()
        with counter:
            y = m(x)
        fwd = [o.name for o in counter.ops]
        dy = torch.randn_like(y)
        counter = launched.AtenCounter()
        with counter:
            grads = torch.autograd.grad(y, [x, *m.parameters()], dy)
        bwd = [o.name for o in counter.ops]
    assert fwd == [] and bwd == [], (fwd, bwd)
    assert len(rec) == 3 + 4
    assert [g.dtype for g in grads] == [torch.bfloat16] + [param_dtype] * len(list(m.parameters()))


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_passes_walk_the_batch_in_a_serpentine(captured, call):
    """Each full-size pass walks the batch sample by sample (a 1-D grid, the sample its slowest
    index), and consecutive passes over the same tensor run in opposite directions, so each
    starts where its predecessor ended, on what is still in L2: in the forward x is read
    ascending, descending, ascending; in the backward x and dy ascending (pass 1), then x
    descending (pass 2) and dy descending (pass 4)."""
    cap = captured(call)
    order = {r.launch.role: r.launch.constexprs["REVERSE"] for r in cap.forward + cap.backward
             if r.launch.reads}
    want = dict(channel_pool=0, spatial_pool=1, spatial_gate=0, bwd_reduce=0, bwd_spatial=1, bwd_dx=1)
    assert order == {k: v for k, v in want.items() if k in order} and len(order) == (6 if cap.backward else 3)
    for rec in cap.forward + cap.backward:
        if rec.launch.reads:
            assert len(rec.launch.grid) == 1, f"{rec.launch.role}: grid {rec.launch.grid} is not sample-major"
    for part in (cap.forward, cap.backward):  # (between them the rest of the network runs: a cold start)
        _alternates(part)


def _alternates(records):
    last = {}
    for rec in records:
        for name in rec.launch.reads:
            if name in last:
                assert rec.launch.constexprs["REVERSE"] != last[name], f"{rec.launch.role} re-reads {name} in the same direction"
            last[name] = rec.launch.constexprs["REVERSE"]


def _tiles(call, launch_, block_c, block_p):
    N, C, H, W = call.shape
    return N * math.ceil(C / block_c) * math.ceil(H * W / block_p)


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_l2_hints_where_planned(captured, call):
    """The passes' evict_first accesses (the static report's reuse model takes them from the plan;
    tests/compile_check.py holds the PTX to them): each pass's last read of a tensor, and y stored
    so where x and y together exceed 75% of the 50 MB L2 planned for, the 56 x 56 and 28 x 28
    stages at batch 32 (y then the L2's first victim, not x, which the gate pass is reading)."""
    cap = captured(call)
    x_bytes = math.prod(call.shape) * 2  # bf16
    streamed = 2 * x_bytes > 0.75 * 50e6
    assert streamed == (call.shape[0] == 32 and call.shape[2] in (56, 28))
    want = dict(channel_pool=(), spatial_pool=(), spatial_gate=("x", "y") if streamed else ("x",),
                bwd_reduce=(), bwd_spatial=("x",), bwd_dx=("dy",))
    got = {r.launch.role: r.launch.evict_first for r in cap.forward + cap.backward if r.launch.reads}
    assert got == {k: v for k, v in want.items() if k in got}
    assert next(r for r in cap.forward if r.launch.role == "spatial_gate").launch.constexprs["STREAM_Y"] is streamed


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_second_layer_where_w2_is_small(captured, call):
    """The MLP's second layer runs once per sample in channel_pool where W2 (C x HID) has at most
    16 K elements, the 56 x 56 and 28 x 28 stages at the default reduction 16 (channels_last:
    HID at most 16, 56 x 56 only: registers), and the batch has at least 8 samples (its walk of
    W2, a few L2 round trips at the pass's end, is charged as such); spatial_pool then reads no
    W2 slab. At 14 x 14 and 7 x 7 (64 K, 256 K elements), and at batch 1, each spatial_pool
    program reads its chunk's slab, as the report's traffic says."""
    cap = captured(call)
    N, C = call.shape[:2]
    hid = C // 16
    small = C * hid <= 16384 and N >= 8 and hid <= (32 if call.fmt == "nchw" else 16)
    assert small == (N == 32 and (call.shape[2] == 56 or (call.shape[2] == 28 and call.fmt == "nchw")))
    roles = {r.launch.role: r.launch for r in cap.forward}
    assert roles["channel_pool"].constexprs["SECOND_LAYER"] is small
    assert roles["spatial_pool"].constexprs["TWO_LAYER"] is (not small)
    assert (roles["spatial_pool"].traffic.shared_per_program == 0) is small
    assert (roles["channel_pool"].traffic.tail_round_trips > 0) is small


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_pipeline_depth_of_each_loop(captured, call):
    """The passes whose programs wait on latency keep four tiles in flight ahead of the one in
    use (5 stages: channel_pool's loop, spatial_pool, bwd_spatial, the parameter gradients' loop
    over the batch), the bandwidth-bound ones two (the gate pass, dx), the backward reduce one
    (two loads an iteration, registers; 16-bit inputs)."""
    cap = captured(call)
    want = dict(channel_pool=5, spatial_pool=5, bwd_spatial=5, param_grads=5, spatial_gate=3, bwd_dx=3,
                bwd_reduce=2)
    got = {r.launch.role: r.launch.constexprs["NUM_STAGES"] for r in cap.forward + cap.backward}
    assert got == {k: v for k, v in want.items() if k in got}
    assert {"channel_pool", "spatial_pool", "spatial_gate"} <= set(got)


@pytest.mark.parametrize("call", B32 + B1, ids=_ids(B32 + B1))
def test_forward_grids_fill_the_gpu_where_the_tiles_allow(captured, call):
    """Every full-size forward pass has at least 4 programs per SM (528 on 132 SMs), or, where
    the shape has fewer tiles than that, at least half as many programs as tiles (each program
    then keeps two tiles of its channel loop, one in flight while the other is used)."""
    cap = captured(call)
    for rec in cap.forward:
        c = rec.launch.constexprs
        tiles = _tiles(call, rec.launch, c["BLOCK_C"], c["BLOCK_P"])
        want = min(4 * SMS, tiles // 2)
        assert rec.launch.programs >= want, (
            f"{rec.launch.role}: grid {rec.launch.grid} = {rec.launch.programs} programs, want >= {want} "
            f"({tiles} tiles of {c['BLOCK_C']} x {c['BLOCK_P']})")


def test_ticket_counters_end_at_zero(triton_backend, device):
    """The tickets' workspace counters are reset by the kernels that take them (no fill launch
    per call): after calls with several pooling splits and channel splits, every counter is 0."""
    torch.manual_seed(0)
    for preset in ("mmyolo", "timm"):  # timm in training mode: the BatchNorm's statistics tickets too
        m = launched._module(launched.Call((2, 80, 9, 11), preset=preset), 80).to(device).train()
        for shape in ((2, 80, 9, 11), (1, 80, 3, 40)):
            x = torch.randn(shape, device=device, requires_grad=True)
            with launch_plan_recorded() as rec:
                m(x).sum().backward()
            splits = {r.launch.role: r.named_args.get("n_splits", r.named_args.get("n_csplits")) for r in rec}
            assert splits["channel_pool"] > 1 or splits["spatial_pool"] > 1, splits
            assert ("spatial_stats" in splits) == (preset == "timm")
            bufs = [b for b in launch._COUNTERS.values() if b.device == x.device]
            assert bufs and all(int(b.abs().sum()) == 0 for b in bufs)


def launch_plan_recorded():
    from cbam_fast.kernels.plan import recording

    return recording(dry=False)
