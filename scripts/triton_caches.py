"""Real Triton kernel caches, made and looked up by Triton itself (no GPU needed).

Run with the Python of a venv that has the `triton` wheel (scripts/triton-caches.sh makes it):

  triton_caches.py sets                 print the names of the sets
  triton_caches.py build SET            compile SET into $TRITON_CACHE_DIR, print its expected.json
  triton_caches.py check EXPECTED.json  look every kernel of EXPECTED.json up in $TRITON_CACHE_DIR
                                        with Triton's own cache code; print a JSON report

`build` calls `triton.compile(ASTSource(...), target=GPUTarget(...))` for every (kernel, target)
of the set: Triton writes one dir per compilation under $TRITON_CACHE_DIR, as a JIT launch on a
GPU would. `check` computes each kernel's cache key the way `triton.compile` does (from the
running Triton: its `triton_key()`, the kernel source, the backend and its options), opens
`FileCacheManager(key)` and calls `get_group("<name>.json")` and `get_file` for every file the
build wrote, then calls `triton.compile` itself and records whether Triton reported a cache hit
(its compilation listener; on a miss compile() compiles, so only the first miss is compiled). A cache made by another Triton, or whose `__grp__` child paths do not
resolve where it is mounted, misses; the report says which and why.

The kernel sources below are part of every cache key (Triton hashes the source and its line
numbers), so `check` must import this same file: scripts/triton-caches.sh keys its output by the
hash of this file.
"""

import hashlib
import json
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        acc += tl.dot(tl.load(a), tl.load(b))
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    c = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c, acc.to(tl.float16), mask=mask)


@triton.jit
def bias_act_kernel(x_ptr, bias_ptr, out_ptr, n, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK: tl.constexpr):
    # Specialised at compile time: each (ACTIVATION, HAS_BIAS) is its own kernel and cache entry.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offs, mask=mask)
    if ACTIVATION == "relu":
        x = tl.maximum(x, 0.0)
    elif ACTIVATION == "leaky_relu":
        x = tl.where(x > 0, x, 0.01 * x)
    tl.store(out_ptr + offs, x, mask=mask)


def _sig(ptrs, ints, constexprs, ptr_type):
    sig = {p: ptr_type for p in ptrs}
    sig.update({i: "i32" for i in ints})
    sig.update({c: "constexpr" for c in constexprs})
    return sig


MATMUL_CONFIGS = [
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    (64, 64, 32, 4, 3),
    (128, 128, 32, 8, 3),
    (128, 64, 64, 4, 4),
]

BIAS_ACT_SPECIALISATIONS = [("relu", True), ("leaky_relu", False), ("none", True)]


def specs():
    """Every kernel this file can compile: id -> (fn, signature, constexprs, options)."""
    out = {
        "add_kernel/BLOCK1024": (add_kernel, _sig(["x_ptr", "y_ptr", "out_ptr"], ["n"], ["BLOCK"], "*fp32"), {
            "BLOCK": 1024
        }, {}),
    }
    for bm, bn, bk, warps, stages in MATMUL_CONFIGS:
        ints = ["M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm", "stride_cn"]
        out[f"matmul_kernel/{bm}x{bn}x{bk}-w{warps}-s{stages}"] = (
            matmul_kernel,
            _sig(["a_ptr", "b_ptr", "c_ptr"], ints, ["BLOCK_M", "BLOCK_N", "BLOCK_K"], "*fp16"),
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
            {"num_warps": warps, "num_stages": stages},
        )
    for act, bias in BIAS_ACT_SPECIALISATIONS:
        out[f"bias_act_kernel/{act}-bias{int(bias)}"] = (
            bias_act_kernel,
            _sig(["x_ptr", "bias_ptr", "out_ptr"], ["n"], ["ACTIVATION", "HAS_BIAS", "BLOCK"], "*fp32"),
            {"ACTIVATION": act, "HAS_BIAS": bias, "BLOCK": 512},
            {},
        )
    return out


CUDA = [("cuda", 80, 32), ("cuda", 90, 32)]
HIP = [("hip", "gfx90a", 64), ("hip", "gfx942", 64)]

# The caches scripts/triton-caches.sh makes: set -> [(kernel id prefix, targets)].
SETS = {
    # Every kernel for sm_80, sm_90, gfx90a and gfx942.
    "all": [("", CUDA + HIP)],
    # sm_90 only: a vector add and one matmul.
    "sm90": [("add_kernel/", [("cuda", 90, 32)]), ("matmul_kernel/64x64x32", [("cuda", 90, 32)])],
}


def source(spec_id):
    fn, sig, constexprs, options = specs()[spec_id]
    return ASTSource(fn=fn, signature=sig, constexprs=constexprs), options


def cache_key(spec_id, target):
    """The cache dir name `triton.compile` uses for this kernel and target, computed by the
    running Triton with Triton's own functions (compiler.compile: get_cache_key, sha256, base32)."""
    # The names compiler.compile itself calls, from its own module.
    from triton.compiler.compiler import get_cache_invalidating_env_vars, get_cache_key, make_backend
    from triton.runtime.cache import _base32

    src, options = source(spec_id)
    backend = make_backend(target)
    opts = backend.parse_options(dict(options, **src.parse_options()))
    key = get_cache_key(src, backend, opts, env_vars=get_cache_invalidating_env_vars())
    return _base32(hashlib.sha256(key.encode("utf-8")).hexdigest())


def build(set_name):
    from triton.runtime.cache import FileCacheManager

    root = os.environ["TRITON_CACHE_DIR"]
    kernels = []
    for prefix, targets in SETS[set_name]:
        for spec_id in sorted(s for s in specs() if s.startswith(prefix)):
            for backend, arch, warp in targets:
                target = GPUTarget(backend, arch, warp)
                src, options = source(spec_id)
                compiled = triton.compile(src, target=target, options=options)
                key = cache_key(spec_id, target)
                name = compiled.name
                group = FileCacheManager(key).get_group(f"{name}.json")
                if group is None:
                    sys.exit(f"{spec_id} {target}: triton.compile wrote no group under {key}: key mismatch")
                kernels.append({
                    "id": spec_id,
                    "target": {"backend": backend, "arch": arch, "warp_size": warp},
                    "name": name,
                    "key": key,
                    "files": sorted(group),
                })
    json.dump({"triton_version": triton.__version__, "build_root": root, "kernels": kernels}, sys.stdout, indent=1)
    print()


def check(expected_path):
    from triton import knobs
    from triton.runtime.cache import FileCacheManager

    with open(expected_path) as f:
        expected = json.load(f)
    root = os.environ["TRITON_CACHE_DIR"]
    seen = {}

    def listener(src, metadata, metadata_group, times, cache_hit):
        seen["hit"] = cache_hit

    knobs.compilation.listener = listener
    results = []
    for k in expected["kernels"]:
        t = k["target"]
        target = GPUTarget(t["backend"], t["arch"], t["warp_size"])
        key = cache_key(k["id"], target)
        r = {"id": k["id"], "target": t, "key": key, "same_key": key == k["key"], "problems": []}
        mgr = FileCacheManager(key)
        group = mgr.get_group(f"{k['name']}.json")
        if group is None:
            r["problems"].append(f"get_group({k['name']}.json) is None under {mgr.cache_dir}")
            group = {}
        for name in k["files"]:
            want = os.path.join(root, key, name)
            got = mgr.get_file(name)
            if got != want:
                r["problems"].append(f"get_file({name}) = {got}, want {want}")
            child = group.get(name)
            if child is None:
                r["problems"].append(f"group has no child {name}")
            elif child != want or not os.path.isfile(child):
                r["problems"].append(f"child {name} -> {child}, want the file {want}")
        r["children"] = sorted(group.values())
        # What a run would do: triton.compile reports through its listener whether it hit. A
        # miss compiles (into the cache dir, like a real run), so only the first miss is run.
        r["compile_cache_hit"] = None
        if not r["problems"] or not any(x["problems"] for x in results):
            seen.clear()
            src, options = source(k["id"])
            triton.compile(src, target=target, options=options)
            r["compile_cache_hit"] = seen.get("hit")
        results.append(r)
    hits = [r for r in results if not r["problems"] and r["compile_cache_hit"]]
    json.dump(
        {
            "triton_version": triton.__version__,
            "expected_triton_version": expected["triton_version"],
            "cache_dir": root,
            "kernels": len(results),
            "hits": len(hits),
            "results": results,
        },
        sys.stdout,
        indent=1,
    )
    print()


def main(argv):
    if len(argv) == 2 and argv[1] == "sets":
        print(" ".join(SETS))
    elif len(argv) == 3 and argv[1] == "build" and argv[2] in SETS:
        build(argv[2])
    elif len(argv) == 3 and argv[1] == "check":
        check(argv[2])
    else:
        sys.exit(f"usage: {argv[0]} sets | build {{{','.join(SETS)}}} | check EXPECTED.json")


if __name__ == "__main__":
    main(sys.argv)
