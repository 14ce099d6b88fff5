"""The Triton head compiled ahead of time for a Hopper GPU (sm_90) on this CPU: every tile its autotuning may pick
must fit the chip's shared memory, or a GPU session finds out only when it launches.

Triton's wheel carries the NVIDIA backend and its ``ptxas``, so compiling for a GPU needs no GPU. The first design
of these kernels held ``[tile, 512]`` blocks whole: 5 of its 13 tiles needed more than 227 KiB and every tile
spilled registers, which only such a compilation showed before any GPU was at hand. The compilation runs in its
own process: the other tests import the kernels under Triton's interpreter (tests/conftest.py), which cannot
compile them.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

HOPPER_SHARED_BYTES = 227 * 1024  # the most one block may use on an H100 or H200
INT64_POINTERS = {"index_ptr", "targets_ptr", "best_column_ptr"}
INTEGERS = {"num_rows", "num_columns", "dim", "splits", "split_columns"}
KERNEL_TILES = {"_forward_kernel": "COSINE_TILES", "_cosine_gradient_kernel": "COSINE_TILES",
                "_embedding_gradient_kernel": "EMBEDDING_GRADIENT_TILES", "_row_gradient_kernel": "ROW_GRADIENT_TILES"}
# (GEMM operands, center store); a bf16 store needs less shared memory than a float32 one at every tile
PRECISIONS = [("bf16", "fp32"), ("fp32", "fp32")]


def _compile(function, tile, gemm: str, store: str):
    """One kernel at one tile as the head launches it: 512-wide embeddings, rows read through an index."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows, columns, chunk, warps, stages = tile
    constants = {"HAS_INDEX": True, "FILTER": False, "RECORD": True, "PRECISION": "tf32" if gemm == "bf16" else "ieee",
                 "GEMM_DTYPE": triton.language.bfloat16 if gemm == "bf16" else triton.language.float32,
                 "BLOCK_B": rows, "BLOCK_K": columns, "BLOCK_D": chunk}
    constants = {name: value for name, value in constants.items() if name in function.arg_names}
    signature = {}
    for name in function.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name == "table_ptr":
            signature[name] = f"*{store}"
        elif name in ("emb_ptr", "grad_cosine_ptr"):  # the embeddings and the gradient buffer are GEMM operands
            signature[name] = f"*{gemm}"
        elif name.endswith("_ptr"):
            signature[name] = "*i64" if name in INT64_POINTERS else "*fp32"
        else:
            signature[name] = "i32" if name in INTEGERS else "fp32"
    source = ASTSource(function, signature, constexprs={(function.arg_names.index(name),): value
                                                        for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def shared_bytes() -> dict:
    """{kernel: {"gemm/store": [shared bytes of each tile]}}, compiled in this process (not interpreted)."""
    from core import triton_head

    return {name: {f"{gemm}/{store}": [_compile(getattr(triton_head, name).fn, tile, gemm, store).metadata.shared
                                       for tile in getattr(triton_head, tiles)]
                   for gemm, store in PRECISIONS}
            for name, tiles in KERNEL_TILES.items()}


@pytest.fixture(scope="module")
def compiled() -> dict:
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this Triton has no NVIDIA backend")
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    completed = subprocess.run([sys.executable, "-m", "tests.core.test_triton_head_compile"], capture_output=True,
                               text=True, env=environment, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                   os.path.abspath(__file__)))))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("precision", [f"{gemm}/{store}" for gemm, store in PRECISIONS])
@pytest.mark.parametrize("name", KERNEL_TILES)
def test_every_tile_compiles_for_hopper_within_its_shared_memory(compiled, name, precision):
    needs = compiled[name][precision]
    assert len(needs) >= 4 and 0 < max(needs) <= HOPPER_SHARED_BYTES, needs


if __name__ == "__main__":
    print(json.dumps(shared_bytes()))
