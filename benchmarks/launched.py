"""What a cbam_fast call launches, read off its plan: the launch-exact compile check and the static
report (``python -m benchmarks.plan``) both start here.

* :func:`capture` runs one call (a benchmark case: shape, dtype, memory format, preset, train or
  eval, forward or forward+backward) as a **dry run** on CPU tensors, planned for a 132-SM GPU:
  the launchers build their plans exactly as on the GPU, and every kernel launch is recorded
  with its resolved arguments instead of being launched (:func:`cbam_fast.kernels.plan.recording`);
  every ATen op of the call is counted by a dispatch mode, so parameter casts, clones and the
  small PyTorch steps show up as the launches they are on a GPU.
* :func:`specialize` derives what Triton's JIT would compile for a recorded launch, with
  Triton's own binder (``create_function_from_signature`` and ``JITFunction._pack_args``, the
  code ``JITFunction.run`` uses): the signature (``i32``/``i64`` by value), the integers
  specialised to 1 as constexprs, and the divisibility-by-16 attributes of integers and
  pointers.
* :func:`compile_spec` builds one such specialisation for ``sm_80``/``sm_90`` and reads
  registers, spills and (unless ``sass=False``, as the compile check calls it) the SASS facts
  (load/store widths, ``LDGSTS`` pipelining, barriers) from ``cuobjdump``.

Must run WITHOUT ``TRITON_INTERPRET`` (the kernels must be ``JITFunction`` objects).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ----------------------------------------------------------------------------- the calls

# default: cbam_fast.cbam with the parameters of benchmarks/bench.py (CBAM(C, 16, 7) in x's dtype);
# the others: the CBAM module preset of that name (kernel size ``k``), parameters in x's dtype
PRESETS = ("default", "timm", "timm_light", "official", "ultralytics", "mmyolo", "luuuyi", "tutorial")
# the pooled-gate family (benchmarks/cases.py BLOCKS): cbam_fast.channel_attention with timm
# SEModule's parameters (``se``: rd = C/16, ``se-rd4``: C/4) in x's dtype; ``se-bn``: timm's
# SEModule with a BatchNorm on the hidden vector (the callable path); ``spatial``: the spatial gate
# alone (cbam_fast.SpatialAttention(k), the seed documents' module)
GATE_PRESETS = ("se", "se-rd4", "se-bn", "spatial")
FORMAT = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
SM_COUNT = 132  # H100 SXM / H200: what the plans are made for


@dataclasses.dataclass(frozen=True)
class Call:
    """One cbam_fast call to plan: ``mode`` is ``fwd`` (inference, no grad) or ``fwd_bwd``;
    ``train`` puts a preset's BatchNorm in training mode (batch statistics)."""

    shape: tuple
    dtype: str = "bf16"
    fmt: str = "nchw"
    preset: str = "default"
    train: bool = False
    mode: str = "fwd"
    dy: str = "like"  # the incoming gradient: "like" (y's layout), "expanded" (y.sum()'s stride 0), "sliced"
    k: int = 7  # the spatial kernel size of a module preset

    @property
    def id(self) -> str:
        n, c, h, w = self.shape
        s = f"{n}x{c}x{h}x{w}-{self.dtype}-{self.fmt}-{self.preset}-{'train' if self.train else 'eval'}-{self.mode}"
        if self.k != 7:
            s += f"-k{self.k}"
        return s if self.dy == "like" else f"{s}-dy_{self.dy}"


def _module(call: Call, C: int):
    import cbam_fast

    if call.preset in ("official", "luuuyi"):
        return getattr(cbam_fast.CBAM, call.preset)(C)
    if call.preset in ("timm", "timm_light"):
        return getattr(cbam_fast.CBAM, call.preset)(C, spatial_kernel_size=call.k)
    return getattr(cbam_fast.CBAM, call.preset)(C, kernel_size=call.k) if call.preset == "ultralytics" \
        else getattr(cbam_fast.CBAM, call.preset)(C, 16, call.k)


# Views and allocations launch nothing on a GPU; every other ATen op is counted as one launch.
_NO_LAUNCH = {
    "view", "_unsafe_view", "reshape", "as_strided", "expand", "t", "transpose", "permute", "detach", "alias",
    "unsqueeze", "squeeze", "slice", "select", "empty", "empty_strided", "empty_like", "new_empty",
    "new_empty_strided", "lift_fresh", "_reshape_alias", "unbind", "split", "chunk", "narrow", "flatten",
    "unflatten", "view_as", "expand_as", "_to_copy_noop", "is_same_size", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "size", "stride", "dim", "numel", "is_contiguous", "_local_scalar_dense", "item",
    "set_", "resize_", "zeros_like_noop", "clone_noop",
}


def _op_name(func) -> str:
    return func._schema.name.split("::")[-1] if hasattr(func, "_schema") else str(func)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


@dataclasses.dataclass
class AtenOp:
    name: str
    bytes: int  # bytes of the tensors it reads and writes (each once)


class AtenCounter(TorchDispatchMode):
    """Every ATen op a call dispatches that launches work on a GPU, with the bytes it touches:
    not views, allocations or ops returning an input itself (``x.to(x.dtype)``); in-place ops
    count. ``cbam_fast::`` ops are entered (their insides counted), not counted themselves."""

    def __init__(self):
        super().__init__()
        self.ops: list[AtenOp] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "cbam_fast":  # the op's Python body, under this mode
            from cbam_fast import gates, ops

            body = {"forward": ops.forward_op, "backward": ops.backward_op, "bn_update": ops.bn_update_op,
                    "gate_pool": gates.gate_pool_op, "gate_scale": gates.gate_scale_op,
                    "gate_bwd_reduce": gates.gate_bwd_reduce_op, "gate_bwd_dx": gates.gate_bwd_dx_op,
                    "gate_mlp_forward": gates.gate_mlp_forward_op, "gate_mlp_backward": gates.gate_mlp_backward_op,
                    "spatial_gate": gates.spatial_gate_op}[_op_name(func)]._init_fn
            with self:
                return body(*args, **kwargs)
        out = func(*args, **kwargs)
        name = _op_name(func)
        ins = {t.untyped_storage().data_ptr() for t in [*_tensors(args), *_tensors(kwargs)]}
        outs = [t.untyped_storage().data_ptr() for t in _tensors(out)]
        aliasing = bool(outs) and all(p in ins for p in outs) and not name.endswith("_")
        if not aliasing and name.rstrip("_") not in _NO_LAUNCH and name not in _NO_LAUNCH:
            seen, nbytes = set(), 0
            for t in [*_tensors(args), *_tensors(kwargs), *_tensors(out)]:
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
                if key not in seen:
                    seen.add(key)
                    nbytes += t.numel() * t.element_size()
            self.ops.append(AtenOp(name, nbytes))
        return out

    @property
    def launches(self) -> int:
        return len(self.ops)


@dataclasses.dataclass
class Captured:
    """A call as planned: the kernel launches of its forward and backward (records with resolved
    arguments), the ATen ops of each part outside the kernels, and |x| in bytes."""

    call: Call
    forward: list
    backward: list
    aten_forward: list
    aten_backward: list
    x_bytes: int

    @property
    def records(self) -> list:
        return self.forward + self.backward


def _x(call: Call, seed: int):
    """(x, whether gradients are wanted, dtype): a seeded input of the call's shape and format."""
    torch.manual_seed(seed)
    dt = DTYPE[call.dtype]
    x = torch.randn(*call.shape, dtype=dt).contiguous(memory_format=FORMAT[call.fmt])
    return x, call.mode == "fwd_bwd", dt


def _default_fn(impl, C: int, dt, grad: bool):
    """(fn, parameter leaves) of the default call: ``impl(x, *params)`` with CBAM(C, 16, 7)'s
    parameters in x's dtype, as benchmarks/bench.py makes them."""
    import cbam_fast

    m = cbam_fast.CBAM(C, reduction_ratio=16, kernel_size=7).to(dt)
    params = [m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias]
    params = [None if p is None else p.detach().requires_grad_(grad) for p in params]
    return (lambda x_: impl(x_, *params)), [p for p in params if p is not None]


def _gate_fn(preset, C: int, dt, grad: bool, eager: bool, train: bool = False, k: int = 7):
    """(fn, parameter leaves) of a gate preset (:data:`GATE_PRESETS`): cbam_fast's function or
    module (``eager``: the reference / the original module)."""
    import cbam_fast
    from cbam_fast import reference

    if preset in ("se", "se-rd4"):
        widths = dict(rd_ratio=1 / 16) if preset == "se" else dict(rd_ratio=1 / 4, rd_divisor=1)
        m = cbam_fast.ChannelAttention.timm_se(C, **widths).to(dt)
        params = [m.fc1.weight.detach().flatten(1), m.fc1.bias, m.fc2.weight.detach().flatten(1), m.fc2.bias]
        params = [p.detach().clone().requires_grad_(grad) for p in params]
        impl = reference.channel_attention if eager else cbam_fast.channel_attention
        return (lambda x_: impl(x_, *params)), params
    if preset == "se-bn":
        if eager:
            import sys
            from pathlib import Path

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from originals.timm_se import SEModule

            m = SEModule(C, norm_layer=torch.nn.BatchNorm2d)
        else:
            m = cbam_fast.ChannelAttention.timm_se(C, norm_layer=torch.nn.BatchNorm2d)
    elif preset == "spatial":
        if eager:
            import sys
            from pathlib import Path

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from originals.seed_tutorial import SpatialAttention

            m = SpatialAttention()
        else:
            m = cbam_fast.SpatialAttention(k)
    else:
        raise ValueError(f"unknown gate preset {preset!r}")
    m = m.to(dt).train(train).requires_grad_(grad)
    return m, list(m.parameters())


def _inputs(call: Call, seed: int = 0):
    """(fn, leaves, dy_fn): the cbam_fast function of the call with its inputs, on CPU."""
    import cbam_fast

    x, grad, dt = _x(call, seed)
    C = call.shape[1]
    if call.preset in GATE_PRESETS:
        fn, leaves = _gate_fn(call.preset, C, dt, grad, eager=False, train=call.train, k=call.k)
    elif call.preset == "default":  # as benchmarks/bench.py: the module's parameters in x's dtype
        fn, leaves = _default_fn(cbam_fast.cbam, C, dt, grad)
    elif call.preset in PRESETS:  # a module preset as converted, parameters in x's dtype
        m = _module(call, C).to(dt).train(call.train).requires_grad_(grad)
        fn = m
        leaves = list(m.parameters())
    else:
        raise ValueError(f"unknown preset {call.preset!r}")
    x.requires_grad_(grad)
    return fn, [x, *leaves], x


def capture(call: Call, count_aten: bool = True) -> Captured:
    """Plan and dry-run one call (see the module docstring), in the steady state (after a first
    call); ``count_aten=False`` skips the dispatch mode (the compile check needs only the kernel
    launches)."""
    from cbam_fast.kernels.plan import recording

    fn, leaves, x = _inputs(call)
    old = os.environ.get("CBAM_FAST_BACKEND")
    os.environ["CBAM_FAST_BACKEND"] = "triton"
    try:
        with recording(dry=True, sm_count=SM_COUNT), torch.no_grad():
            fn(x)  # a first call: one-time allocations (the tickets' counters) are not a call's cost
        with recording(dry=True, sm_count=SM_COUNT) as rec:
            counter = AtenCounter() if count_aten else contextlib.nullcontext()
            with counter:
                if call.mode == "fwd":
                    with torch.no_grad():
                        y = fn(x)
                else:
                    y = fn(x)
            n_fwd = len(rec)
            aten_fwd = list(counter.ops) if count_aten else []
            aten_bwd = []
            if call.mode == "fwd_bwd":
                dy = torch.randn(y.shape, dtype=y.dtype).contiguous(memory_format=FORMAT[call.fmt])
                if call.dy == "expanded":
                    dy = dy.sum().expand(y.shape)
                elif call.dy == "sliced":
                    big = torch.randn(y.shape[0], 2 * y.shape[1], *y.shape[2:], dtype=y.dtype)
                    dy = big.to(memory_format=torch.channels_last)[:, ::2]
                counter = AtenCounter() if count_aten else contextlib.nullcontext()
                with counter:
                    torch.autograd.grad(y, leaves, dy)
                aten_bwd = list(counter.ops) if count_aten else []
            records = list(rec)
    finally:
        if old is None:
            os.environ.pop("CBAM_FAST_BACKEND")
        else:
            os.environ["CBAM_FAST_BACKEND"] = old
    return Captured(call, records[:n_fwd], records[n_fwd:], aten_fwd, aten_bwd, x.numel() * x.element_size())


def eager_ops(call: Call) -> tuple[list, list]:
    """The eager reference's ATen ops for the same call (forward, backward), counted the same way."""
    from cbam_fast import reference

    x, grad, dt = _x(call, 0)
    C = call.shape[1]
    if call.preset in GATE_PRESETS:
        fn, leaves = _gate_fn(call.preset, C, dt, grad, eager=True, train=call.train, k=call.k)
    elif call.preset == "default":
        fn, leaves = _default_fn(reference.cbam, C, dt, grad)
    else:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from originals.timm_cbam import CbamModule

        m = CbamModule(C).to(dt).train(call.train).requires_grad_(grad)
        fn = m
        leaves = list(m.parameters())
    x.requires_grad_(grad)
    counter = AtenCounter()
    with counter:
        with torch.set_grad_enabled(grad):
            y = fn(x)
    fwd = list(counter.ops)
    bwd = []
    if grad:
        dy = torch.randn_like(y)
        counter = AtenCounter()
        with counter:
            torch.autograd.grad(y, [x, *leaves], dy)
        bwd = list(counter.ops)
    return fwd, bwd


# ----------------------------------------------------------------------------- specialisation


@dataclasses.dataclass(frozen=True)
class Spec:
    """One specialisation as Triton's JIT derives it for recorded arguments (hashable: the key of
    the compile cache): the kernel (module and name), the signature, constexprs and attributes by
    parameter path, and the compile options. Picklable, so worker processes can compile it."""

    module: str
    kernel_name: str
    signature: tuple  # ((name, type), ...)
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, attr list), ...)
    options: tuple  # ((name, value), ...) of the backend's parsed options

    def kernel(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.kernel_name)

    def source(self):
        from triton.compiler import ASTSource

        def unfreeze(v):
            return [unfreeze(e) for e in v] if isinstance(v, tuple) else v

        return ASTSource(self.kernel(), dict(self.signature), dict(self.constexprs),
                         {k: unfreeze(v) for k, v in self.attrs})

    @property
    def launch_options(self) -> dict:
        return {k: v for k, v in self.options if k in ("num_warps", "num_stages", "maxnreg")}

    def describe(self) -> str:
        names = dict(self.signature)
        params = list(names)
        consts = ", ".join(f"{params[k[0]]}={v}" for k, v in self.constexprs if isinstance(k, tuple) and len(k) == 1)
        div16 = [params[k[0]] for k, v in self.attrs if v and isinstance(k, tuple)]
        return (f"{self.kernel_name}[{consts}; warps={dict(self.options)['num_warps']}, "
                f"stages={dict(self.options)['num_stages']}; div16: {','.join(div16)}]")


def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    return make_backend(GPUTarget("cuda", arch, 32))


_BINDERS: dict = {}


def _freeze(v):
    return tuple(_freeze(e) for e in v) if isinstance(v, (list, tuple)) else v


def specialize(record, arch: int = 90) -> Spec:
    """The :class:`Spec` ``JITFunction.run`` would compile for a recorded launch."""
    from triton.runtime.jit import create_function_from_signature

    from cbam_fast.kernels.plan import kernel_arguments

    kernel = record.launch.kernel
    key = (id(kernel), arch)
    if key not in _BINDERS:
        backend = _backend(arch)
        _BINDERS[key] = (backend, create_function_from_signature(kernel.signature, kernel.params, backend))
    backend, binder = _BINDERS[key]
    args, kwargs = kernel_arguments(record)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    opts = tuple(sorted((k, _freeze(v)) for k, v in options.__dict__.items()
                        if isinstance(v, (int, float, str, bool, tuple, list, type(None)))))
    return Spec(
        kernel.fn.__module__, kernel.fn.__name__,
        tuple(signature.items()),
        tuple(sorted(constexprs.items())),
        tuple(sorted((k, _freeze(v)) for k, v in attrs.items())),
        opts,
    )


# ----------------------------------------------------------------------------- compiled code


@dataclasses.dataclass
class Compiled:
    """Facts read off one compiled kernel's cubin with cuobjdump."""

    regs: int
    stack: int
    local: int
    shared: int
    # from the SASS (None when compiled with sass=False):
    ldg: Optional[dict]  # global load width in bytes -> count of instructions in the SASS
    stg: Optional[dict]  # global store width in bytes -> count
    ldgsts: Optional[int]  # cp.async (pipelined global -> shared copies)
    bar_sync: Optional[int]
    num_warps: int
    num_stages: int
    # from the PTX (always read): global loads (``ld.global``, ``cp.async``) and stores whose L2
    # policy is ``createpolicy ... L2::evict_first`` (:func:`l2_hints`)
    evict_first_loads: int = 0
    evict_first_stores: int = 0

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


_WIDTH = {"": 4, "8": 1, "U8": 1, "S8": 1, "16": 2, "U16": 2, "S16": 2, "64": 8, "128": 16}


def _widths(sass: str, op: str) -> dict:
    out = collections.Counter()
    for m in re.finditer(rf"\b{op}\.E((?:\.[A-Z0-9]+)*)", sass):
        mods = [t for t in m.group(1).split(".") if t]
        width = 4
        for t in mods:
            if t in _WIDTH and t != "":
                width = _WIDTH[t]
        out[width] += 1
    return dict(out)


def l2_hints(ptx: str) -> tuple[int, int]:
    """(loads, stores) of global memory in ``ptx`` whose ``L2::cache_hint`` operand is a policy
    made by ``createpolicy.fractional.L2::evict_first`` (Triton's ``eviction_policy="evict_first"``;
    a pipelined load is a ``cp.async``, which some Triton versions and targets emit without it)."""
    policy = {m.group(2): m.group(1) for m in re.finditer(r"createpolicy\.fractional\.L2::(\w+)\.b64\s+(%\w+)", ptx)}
    loads = stores = 0
    for line in ptx.splitlines():
        if "L2::cache_hint" not in line:
            continue
        operands = re.findall(r"%\w+", line)
        if not operands or policy.get(operands[-1]) != "evict_first":
            continue
        if re.search(r"\b(ld\.global|cp\.async)\.", line):
            loads += 1
        elif re.search(r"\bst\.global\.", line):
            stores += 1
    return loads, stores


def compile_spec(spec: Spec, arch: int, sass: bool = True) -> Compiled:
    """Compile a specialisation for ``sm_<arch>`` and read the cubin's resource usage and, with
    ``sass``, its SASS (load/store widths, LDGSTS, BAR.SYNC; without it those fields are None).
    The resource usage costs milliseconds; disassembling the SASS about 0.8 CPU-seconds a build
    (cuobjdump ``--dump-sass``: most of the compile check's time when it was always read)."""
    import triton
    from triton.backends.compiler import GPUTarget

    options = dict(spec.options)
    compiled = triton.compile(spec.source(), target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        facts = dict(ldg=None, stg=None, ldgsts=None, bar_sync=None)
        if sass:
            code = subprocess.run([_cuobjdump(), "--dump-sass", f.name], capture_output=True, text=True, check=True).stdout
            facts = dict(ldg=_widths(code, "LDG"), stg=_widths(code, "STG"), ldgsts=len(re.findall(r"\bLDGSTS\b", code)),
                         bar_sync=len(re.findall(r"\bBAR\.SYNC\b", code)))
    field = lambda name: int(re.search(rf"{name}:(\d+)", usage).group(1))  # noqa: E731
    ptx = compiled.asm["ptx"]
    return Compiled(regs=field("REG"), stack=field("STACK"), local=field("LOCAL"), shared=field("SHARED"), **facts,
                    num_warps=options["num_warps"], num_stages=options["num_stages"],
                    **dict(zip(("evict_first_loads", "evict_first_stores"), l2_hints(ptx))))


def occupancy(c: Compiled, arch: int = 90) -> int:
    """Programs resident per SM by registers, warps, blocks and shared memory (sm_80/sm_90)."""
    regs_per_warp = ((max(c.regs, 1) + 7) // 8) * 8 * 32
    by_regs = (65536 // regs_per_warp) // c.num_warps
    by_warps = 64 // c.num_warps
    smem = 228 * 1024 if arch >= 90 else 164 * 1024
    by_smem = smem // c.shared if c.shared else 32
    return max(0, min(by_regs, by_warps, 32, by_smem))


def compile_in_subprocess_ok() -> Optional[str]:
    """None when this process can compile (no TRITON_INTERPRET), else why not."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "unset TRITON_INTERPRET (the interpreter does not compile)"
    return None


# ----------------------------------------------------------------------------- the cases

R50_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))


REGNETY_STAGES = ((48, 56, 56), (120, 28, 28), (336, 14, 14), (888, 7, 7))


def benchmark_calls(dtypes=("bf16", "fp16", "fp32"), formats=("nchw", "cl")) -> list[Call]:
    """The benchmark cases the compile check and the report cover: the ResNet-50 CBAM stages at
    batch 32 (forward+backward, which plans the forward too) and batch 1 (inference), both
    memory formats, each dtype; the default call (:mod:`benchmarks.bench`) and the timm preset
    in training mode (spatial BatchNorm with batch statistics) and eval mode."""
    out = []
    for chw in R50_STAGES:
        for dt in dtypes:
            for fmt in formats:
                out += [Call((32, *chw), dt, fmt, "default", False, "fwd_bwd"),
                        Call((32, *chw), dt, fmt, "timm", True, "fwd_bwd"),
                        Call((32, *chw), dt, fmt, "timm", False, "fwd_bwd"),
                        Call((1, *chw), dt, fmt, "default", False, "fwd"),
                        Call((1, *chw), dt, fmt, "timm", False, "fwd")]
    return out


def coverage_calls() -> list[Call]:
    """Every other path the launchers have, at small odd shapes: fp64 (gradcheck), each preset
    (channel pools avg / light, single-layer MLP, conv bias, BN train and eval), kernel sizes 3
    and 5, and incoming gradients in other layouts (stride-0 expanded, channels_last sliced
    along C, for an NCHW and a channels_last x)."""
    small = (2, 40, 9, 11)
    out = [Call(small, "fp64", fmt, "default", False, "fwd_bwd") for fmt in ("nchw", "cl")]
    for preset in PRESETS[1:]:
        for train in ((False, True) if preset in ("timm", "timm_light", "official") else (False,)):
            out.append(Call(small, "bf16", "cl", preset, train, "fwd_bwd"))
            out.append(Call(small, "fp32", "nchw", preset, train, "fwd_bwd", k=3 if preset == "ultralytics" else 7))
    out += [Call(small, dt, "nchw", "mmyolo", False, "fwd_bwd", k=k) for dt in ("bf16", "fp32") for k in (3, 5)]
    for fmt in ("nchw", "cl"):
        for dy in ("expanded", "sliced"):
            out += [Call(small, dt, fmt, "default", False, "fwd_bwd", dy=dy) for dt in ("bf16", "fp32", "fp64")]
    return out


def ci_calls() -> list[Call]:
    """The compile check's set in CI (each distinct specialisation costs about a CPU-second per
    Triton version and architecture, and CI runs two Tritons within its time budget): the bf16
    benchmark calls, the fp16 and fp32 default calls at the last stage in both formats, and one
    call of each other path (fp64, every preset, k = 3/5, BatchNorm train,
    stride-0 and sliced incoming gradients). ``tests/compile_check.py --full`` compiles every
    benchmark and coverage call (all dtypes and presets)."""
    small = (2, 40, 9, 11)
    out = benchmark_calls(dtypes=("bf16",))
    out += [Call((32, *R50_STAGES[-1]), dt, fmt, "default", False, "fwd_bwd") for dt in ("fp16", "fp32")
            for fmt in ("nchw", "cl")]
    out += [Call(small, "fp64", fmt, "default", False, "fwd_bwd") for fmt in ("nchw", "cl")]
    out += [Call(small, "bf16", "cl", "timm_light", True, "fwd_bwd"), Call(small, "fp32", "nchw", "official", True, "fwd_bwd"),
            Call(small, "bf16", "nchw", "ultralytics", False, "fwd_bwd", k=3), Call(small, "fp32", "cl", "luuuyi", False, "fwd_bwd"),
            Call(small, "bf16", "cl", "tutorial", False, "fwd_bwd", k=5), Call(small, "fp32", "nchw", "mmyolo", False, "fwd_bwd", k=3)]
    out += [Call(small, "bf16", fmt, "default", False, "fwd_bwd", dy=dy) for fmt in ("nchw", "cl") for dy in ("expanded", "sliced")]
    out += gate_calls(dtypes=("bf16",))
    out += [Call(small, dt, fmt, "spatial", False, "fwd_bwd", k=3) for dt in ("fp32", "fp64") for fmt in ("nchw", "cl")]
    out += [Call(small, "fp64", fmt, "se", False, "fwd_bwd") for fmt in ("nchw", "cl")]
    out += [Call(small, "bf16", fmt, "se", False, "fwd_bwd", dy="sliced") for fmt in ("nchw", "cl")]
    return out


def gate_calls(dtypes=("bf16", "fp16", "fp32"), formats=("nchw", "cl")) -> list[Call]:
    """The gate family's benchmark calls: the SE gate at the SE-ResNet-50 stages (batch 32
    forward+backward and batch 1 forward) and the RegNetY-1.6GF stages (batch 32), the spatial
    gate at the ResNet-50 stages (batch 32, forward+backward and forward: its inference path),
    each dtype and format."""
    out = []
    for dt in dtypes:
        for fmt in formats:
            for chw in R50_STAGES:
                out += [Call((32, *chw), dt, fmt, "se", False, "fwd_bwd"), Call((1, *chw), dt, fmt, "se", False, "fwd"),
                        Call((32, *chw), dt, fmt, "spatial", False, "fwd_bwd"),
                        Call((32, *chw), dt, fmt, "spatial", False, "fwd")]
            out += [Call((32, *chw), dt, fmt, "se-rd4", False, "fwd_bwd") for chw in REGNETY_STAGES]
    return out
