"""Partial FC's head as Triton kernels: the sampled rows are read in place, and the loss never holds ``[B, K]`` logits.

The torch path copies the sampled center rows (``centers[index]``, a ``[K, D]`` gather),
normalises that copy, and materialises the ``[B, K]`` logits, their softmax and its
gradient. Here the kernels read the rows straight from the center table through the index
and walk the embedding dimension in chunks, so a program holds one ``[rows, columns]``
accumulator and two small operand tiles, never a whole ``[tile, D]`` block (a 512-wide
embedding held whole made every tile spill its registers):

* ``_forward_kernel``: per tile of rows x columns, the cosines (a GEMM in bf16 or float32
  with float32 accumulation, the rows' norms summed on the way), the target column's margin
  logit (computed beforehand in torch from the ``B`` target rows), the inter-class filter,
  and an online max and sum of exponentials; also each row's best other column for the
  training dynamics, and the rows' inverse norms for the backward. The column blocks are
  split over programs, whose partial max/sum torch merges (and all-reduces across ranks for
  a model-parallel head, exactly as the torch path does).
* ``_cosine_gradient_kernel`` recomputes the logits from the saved log-normaliser and
  writes ``d loss / d cosine`` (``softmax - onehot`` through the margin), in the GEMM's
  dtype, to a ``[B, columns]`` buffer that lives only during the backward, which takes the
  columns in blocks of at most ``BACKWARD_COLUMNS``; it also sums each column's
  ``gradient x cosine``, the part of the row's gradient along the row itself.
* ``_embedding_gradient_kernel`` (``gradient @ unit rows``, the rows gathered through the
  index, split over the columns) and ``_row_gradient_kernel`` (``gradient^T @ embeddings``,
  then through the rows' normalisation) are two plain GEMMs over that buffer.
* ``_sgd_rows_kernel``: SGD with momentum and weight decay on the touched rows, written
  back in place (a row repeated across micro-batches by its first copy alone), with the
  bf16 store's stochastic rounding drawn from Triton's counter-based generator.

The kernels run on CUDA; with ``TRITON_INTERPRET=1`` Triton runs them on the CPU, which is
how the tests check them against the float64 torch path.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from core.errors import ConfigError
from core.margins import CombinedMargin

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without Triton; the torch head needs none
    triton = None

HEAD_KERNELS = ("auto", "torch", "triton")
NORM_EPS = 1e-12  # F.normalize's
UPDATE_ROWS = 16  # center rows per program of the optimizer kernel
UPDATE_CHUNK = 128  # and the width of the row chunks it walks; with 8 warps, 108-137 registers and no spills (sm_90)
UPDATE_WARPS = 8
SPLIT_PROGRAMS = 1024  # the forward and the embeddings' gradient spread their columns over about this many programs
SPLIT_COLUMNS = 256  # a column split's width is a multiple of this, so that every column tile tried divides it
# The backward takes the columns in blocks of at most this many, so its d loss / d cosine buffer stays under
# 256 MiB at batch 512 in bf16 (2 GiB whole at 20M classes, rate 0.1): below it, one block.
BACKWARD_COLUMNS = 1 << 18
# Tiles each kernel's autotuning tries on a GPU, once per embedding size, batch and GEMM precision, as
# (rows, columns, embedding chunk, warps, pipeline stages). The cosine tiles (forward and its recompute) reduce
# over the embedding chunk; the embeddings' gradient reduces over the columns and the rows' gradient over the rows.
# Compiled for sm_90 ahead of time (Triton 3.9), each fits an H100/H200's 227 KiB of shared memory
# (tests/core/test_triton_head_compile.py), and with bf16 GEMMs none spills registers; the smaller ones are for
# float32 GEMMs, whose larger tiles spill.
COSINE_TILES = ((64, 64, 64, 8, 3), (128, 64, 64, 8, 2), (64, 128, 64, 8, 2), (64, 64, 64, 8, 4), (64, 64, 16, 4, 2),
                (64, 64, 32, 8, 2))
EMBEDDING_GRADIENT_TILES = ((64, 64, 64, 8, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 32, 8, 2))
ROW_GRADIENT_TILES = ((64, 64, 64, 8, 3), (128, 64, 64, 8, 3), (64, 64, 64, 8, 4), (64, 64, 32, 8, 2))
INTERPRETED_TILE = 16


def resolve_head_kernel(name: str, device: torch.device, row_shape: tuple[int, ...]) -> str:
    """``--head-kernel`` as the store will run it: ``auto`` is triton for one center per class on a CUDA device
    where Triton imports, torch otherwise; ``triton`` where it cannot run is an error."""
    if name not in HEAD_KERNELS:
        raise ConfigError(f"--head-kernel must be one of {', '.join(HEAD_KERNELS)}, got {name!r}")
    fits = len(row_shape) == 1
    if name == "auto":  # not when interpreted: that is for tests, and slow
        return "triton" if fits and device.type == "cuda" and triton is not None and not _interpreted() else "torch"
    if name == "triton" and not fits:
        raise ConfigError(f"--head-kernel triton takes one center per class; these rows hold {row_shape[0]} "
                          "prototypes each (use --head-kernel torch)")
    if name == "triton" and not (triton is not None and (device.type == "cuda" or _interpreted())):
        raise ConfigError("--head-kernel triton needs Triton and a CUDA GPU (TRITON_INTERPRET=1 runs its kernels on "
                          "the CPU, slowly); --head-kernel torch runs anywhere")
    return name


def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _tiles(shapes: tuple[tuple[int, int, int, int, int], ...]) -> list:
    if _interpreted():
        return [triton.Config({"BLOCK_B": INTERPRETED_TILE, "BLOCK_K": INTERPRETED_TILE,
                               "BLOCK_D": INTERPRETED_TILE})]
    return [triton.Config({"BLOCK_B": rows, "BLOCK_K": columns, "BLOCK_D": chunk}, num_warps=warps,
                          num_stages=stages) for rows, columns, chunk, warps, stages in shapes]


if triton is not None:
    @triton.jit
    def _table_rows(index_ptr, columns, column_ok, HAS_INDEX: tl.constexpr):
        """The table rows behind these columns, as int64 offsets (a 10M x 512 table passes 2^31 elements)."""
        if HAS_INDEX:
            return tl.load(index_ptr + columns, mask=column_ok, other=0).to(tl.int64)
        return columns.to(tl.int64)

    @triton.jit
    def _dot_tile(emb_ptr, table_ptr, index_ptr, rows, columns, num_rows, num_columns, dim, HAS_INDEX: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GEMM_DTYPE: tl.constexpr,
                  PRECISION: tl.constexpr):
        """Embeddings . gathered rows over the embedding in chunks, and the rows' squared norms."""
        row_ok = rows < num_rows
        column_ok = columns < num_columns
        table_rows = _table_rows(index_ptr, columns, column_ok, HAS_INDEX)
        dots = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
        squares = tl.zeros((BLOCK_K,), tl.float32)
        for start in range(0, dim, BLOCK_D):
            d = start + tl.arange(0, BLOCK_D)
            d_ok = d < dim
            emb = tl.load(emb_ptr + rows[:, None] * dim + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            weights = tl.load(table_ptr + table_rows[:, None] * dim + d[None, :],
                              mask=column_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            squares += tl.sum(weights * weights, axis=1)
            dots = tl.dot(emb.to(GEMM_DTYPE), tl.trans(weights.to(GEMM_DTYPE)), dots, input_precision=PRECISION)
        return dots, squares

    @triton.jit
    def _logits(dots, inverse_norm, rows, columns, num_rows, num_columns, targets_ptr, target_logit_ptr, scale,
                threshold, FILTER: tl.constexpr):
        """One tile's cosines and logits, and which entry is a target or filtered."""
        row_ok = rows < num_rows
        cosine = tl.minimum(tl.maximum(dots * inverse_norm[None, :], -1.0), 1.0)
        targets = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
        is_target = columns[None, :] == targets[:, None]
        target_logit = tl.load(target_logit_ptr + rows, mask=row_ok, other=0.0)
        logits = tl.where(is_target, target_logit[:, None], scale * cosine)
        if FILTER:  # insightface's inter-class filter: a near-duplicate negative becomes a constant 0
            filtered = (cosine > threshold) & (~is_target)
            logits = tl.where(filtered, 0.0, logits)
        else:
            filtered = is_target & (~is_target)
        logits = tl.where((columns < num_columns)[None, :], logits, float("-inf"))
        return cosine, logits, is_target, filtered

    @triton.autotune(configs=_tiles(COSINE_TILES), key=["dim", "num_rows", "PRECISION"])
    @triton.jit
    def _forward_kernel(emb_ptr, table_ptr, index_ptr, targets_ptr, target_logit_ptr, max_ptr, sum_ptr, best_ptr,
                        best_column_ptr, inverse_norm_ptr, num_rows, num_columns, dim, scale, threshold, splits,
                        HAS_INDEX: tl.constexpr, FILTER: tl.constexpr, RECORD: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GEMM_DTYPE: tl.constexpr,
                        PRECISION: tl.constexpr):
        block = tl.program_id(0)
        split = tl.program_id(1)
        rows = block * BLOCK_B + tl.arange(0, BLOCK_B)
        row_max = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        row_sum = tl.zeros((BLOCK_B,), tl.float32)
        best = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        best_column = tl.full((BLOCK_B,), -1, tl.int64)
        for start in range(split * BLOCK_K, num_columns, splits * BLOCK_K):
            columns = start + tl.arange(0, BLOCK_K)
            dots, squares = _dot_tile(emb_ptr, table_ptr, index_ptr, rows, columns, num_rows, num_columns, dim,
                                      HAS_INDEX, BLOCK_B, BLOCK_K, BLOCK_D, GEMM_DTYPE, PRECISION)
            inverse_norm = 1.0 / tl.maximum(tl.sqrt(squares), 1e-12)
            if block == 0:  # every row block computes them alike; one keeps them for the backward
                tl.store(inverse_norm_ptr + columns, inverse_norm, mask=columns < num_columns)
            cosine, logits, is_target, filtered = _logits(dots, inverse_norm, rows, columns, num_rows, num_columns,
                                                          targets_ptr, target_logit_ptr, scale, threshold, FILTER)
            new_max = tl.maximum(row_max, tl.max(logits, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_sum = row_sum * tl.exp(row_max - safe_max) + tl.sum(tl.exp(logits - safe_max[:, None]), axis=1)
            row_max = new_max
            if RECORD:  # the training dynamics' best other column: registers a head without them keeps free
                others = tl.where(is_target, float("-inf"), logits)
                tile_best = tl.max(others, axis=1)
                tile_column = start + tl.argmax(others, axis=1).to(tl.int64)
                better = tile_best > best
                best_column = tl.where(better, tile_column, best_column)
                best = tl.where(better, tile_best, best)
        out = rows * splits + split
        row_ok = rows < num_rows
        tl.store(max_ptr + out, row_max, mask=row_ok)
        tl.store(sum_ptr + out, row_sum, mask=row_ok)
        if RECORD:
            tl.store(best_ptr + out, best, mask=row_ok)
            tl.store(best_column_ptr + out, best_column, mask=row_ok)

    @triton.autotune(configs=_tiles(COSINE_TILES), key=["dim", "num_rows", "PRECISION"],
                     reset_to_zero=["along_ptr"])
    @triton.jit
    def _cosine_gradient_kernel(emb_ptr, table_ptr, index_ptr, targets_ptr, target_logit_ptr, inverse_norm_ptr,
                                log_normaliser_ptr, slope_ptr, upstream_ptr, grad_cosine_ptr, along_ptr, num_rows,
                                num_columns, dim, scale, threshold, HAS_INDEX: tl.constexpr, FILTER: tl.constexpr,
                                BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                                GEMM_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
        """One tile of ``d loss / d cosine / |w|`` into the buffer, and each column's sum of ``d loss / d cosine x
        cosine`` into ``along``. ``d loss / d cosine`` is ``scale x softmax`` off the target, ``(softmax - 1)``
        through the margin's slope on it, 0 for filtered entries and padding; times the loss's upstream gradient /
        rows (read on the device: a scalar argument would wait for it on the host)."""
        # one axis (a second is limited to 65,535 blocks); the row blocks of a column block run side by side, so
        # its rows are read once from memory
        row_blocks = tl.cdiv(num_rows, BLOCK_B)
        rows = (tl.program_id(0) % row_blocks) * BLOCK_B + tl.arange(0, BLOCK_B)
        columns = (tl.program_id(0) // row_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
        row_ok = rows < num_rows
        column_ok = columns < num_columns
        dots, _ = _dot_tile(emb_ptr, table_ptr, index_ptr, rows, columns, num_rows, num_columns, dim, HAS_INDEX,
                            BLOCK_B, BLOCK_K, BLOCK_D, GEMM_DTYPE, PRECISION)
        inverse_norm = tl.load(inverse_norm_ptr + columns, mask=column_ok, other=0.0)
        cosine, logits, is_target, filtered = _logits(dots, inverse_norm, rows, columns, num_rows, num_columns,
                                                      targets_ptr, target_logit_ptr, scale, threshold, FILTER)
        grad_scale = tl.load(upstream_ptr).to(tl.float32) * scale / num_rows
        log_normaliser = tl.load(log_normaliser_ptr + rows, mask=row_ok, other=0.0)
        slope = tl.load(slope_ptr + rows, mask=row_ok, other=0.0)
        probability = tl.exp(logits - log_normaliser[:, None])
        grad = tl.where(is_target, (probability - 1.0) * slope[:, None], probability) * grad_scale
        grad = tl.where(filtered | (~row_ok[:, None]), 0.0, grad)
        tl.store(grad_cosine_ptr + rows[:, None].to(tl.int64) * num_columns + columns[None, :],
                 (grad * inverse_norm[None, :]).to(grad_cosine_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & column_ok[None, :])
        tl.atomic_add(along_ptr + columns, tl.sum(grad * cosine, axis=0), mask=column_ok)

    @triton.autotune(configs=_tiles(EMBEDDING_GRADIENT_TILES), key=["dim", "num_rows", "PRECISION"])
    @triton.jit
    def _embedding_gradient_kernel(grad_cosine_ptr, table_ptr, index_ptr, partial_ptr, num_rows, num_columns, dim,
                                   split_columns, HAS_INDEX: tl.constexpr, BLOCK_B: tl.constexpr,
                                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GEMM_DTYPE: tl.constexpr,
                                   PRECISION: tl.constexpr):
        """One split's share of ``(d loss / d cosine / |w|) @ rows``: ``[rows, embedding chunk]``, summed in
        torch."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        split = tl.program_id(2)
        row_ok = rows < num_rows
        d_ok = d < dim
        accumulated = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
        for start in range(split * split_columns, tl.minimum((split + 1) * split_columns, num_columns), BLOCK_K):
            columns = start + tl.arange(0, BLOCK_K)
            column_ok = columns < num_columns
            grad = tl.load(grad_cosine_ptr + rows[:, None].to(tl.int64) * num_columns + columns[None, :],
                           mask=row_ok[:, None] & column_ok[None, :], other=0.0)
            table_rows = _table_rows(index_ptr, columns, column_ok, HAS_INDEX)
            weights = tl.load(table_ptr + table_rows[:, None] * dim + d[None, :],
                              mask=column_ok[:, None] & d_ok[None, :], other=0.0)
            accumulated = tl.dot(grad.to(GEMM_DTYPE), weights.to(GEMM_DTYPE), accumulated, input_precision=PRECISION)
        where = (split * num_rows + rows[:, None]).to(tl.int64) * dim + d[None, :]
        tl.store(partial_ptr + where, accumulated, mask=row_ok[:, None] & d_ok[None, :])

    @triton.autotune(configs=_tiles(ROW_GRADIENT_TILES), key=["dim", "num_rows", "PRECISION"])
    @triton.jit
    def _row_gradient_kernel(grad_cosine_ptr, emb_ptr, table_ptr, index_ptr, inverse_norm_ptr, along_ptr,
                             grad_rows_ptr, num_rows, num_columns, dim, HAS_INDEX: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                             GEMM_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
        """``[columns, embedding chunk]`` of the rows' gradient through their normalisation,
        ``(g - w_hat (w_hat . g)) / |w|`` with ``g = d loss / d cosine^T @ embeddings``: the buffer holds
        ``d loss / d cosine / |w|``, and ``w_hat . g`` is the column's sum of gradient x cosine."""
        chunks = tl.cdiv(dim, BLOCK_D)  # the chunks of a column block run side by side: its buffer is read once
        d = (tl.program_id(0) % chunks) * BLOCK_D + tl.arange(0, BLOCK_D)
        columns = (tl.program_id(0) // chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        column_ok = columns < num_columns
        d_ok = d < dim
        accumulated = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
        for start in range(0, num_rows, BLOCK_B):
            rows = start + tl.arange(0, BLOCK_B)
            row_ok = rows < num_rows
            grad = tl.load(grad_cosine_ptr + rows[:, None].to(tl.int64) * num_columns + columns[None, :],
                           mask=row_ok[:, None] & column_ok[None, :], other=0.0)
            emb = tl.load(emb_ptr + rows[:, None] * dim + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            accumulated = tl.dot(tl.trans(grad.to(GEMM_DTYPE)), emb.to(GEMM_DTYPE), accumulated,
                                 input_precision=PRECISION)
        table_rows = _table_rows(index_ptr, columns, column_ok, HAS_INDEX)
        inverse_norm = tl.load(inverse_norm_ptr + columns, mask=column_ok, other=0.0)
        along = tl.load(along_ptr + columns, mask=column_ok, other=0.0)
        ok = column_ok[:, None] & d_ok[None, :]
        weights = tl.load(table_ptr + table_rows[:, None] * dim + d[None, :], mask=ok, other=0.0).to(tl.float32)
        grad_rows = accumulated - weights * (inverse_norm * inverse_norm * along)[:, None]
        tl.store(grad_rows_ptr + columns[:, None].to(tl.int64) * dim + d[None, :], grad_rows, mask=ok)

    @triton.jit
    def _round_to_bf16(values, noise):
        """float32 values whose low 16 bits are cleared after adding random ones: exact in bfloat16."""
        bits = values.to(tl.int32, bitcast=True) + (noise & 0xFFFF).to(tl.int32)
        return (bits & -65536).to(tl.float32, bitcast=True)

    @triton.jit
    def _sgd_rows_kernel(table_ptr, momentum_ptr, rows_ptr, leaders_ptr, grad_ptr, seed_ptr, count, dim, lr,
                         momentum, weight_decay, HAS_ROWS: tl.constexpr, HAS_LEADERS: tl.constexpr,
                         STOCHASTIC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
        positions = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        writes = positions < count
        if HAS_LEADERS:  # a repeated row is read and written by its first copy alone: programs run in any order
            writes = writes & (tl.load(leaders_ptr + positions, mask=writes, other=0) == positions)
        if HAS_ROWS:
            rows = tl.load(rows_ptr + positions, mask=positions < count, other=0).to(tl.int64)
        else:
            rows = positions.to(tl.int64)
        seed = tl.load(seed_ptr)
        for start in range(0, dim, BLOCK_D):  # in chunks: whole 512-wide rows spilled the bf16 store's registers
            d = start + tl.arange(0, BLOCK_D)
            ok = writes[:, None] & (d[None, :] < dim)
            where = rows[:, None] * dim + d[None, :]
            weight = tl.load(table_ptr + where, mask=ok, other=0.0).to(tl.float32)
            buffer = tl.load(momentum_ptr + where, mask=ok, other=0.0).to(tl.float32)
            grad = tl.load(grad_ptr + positions[:, None] * dim + d[None, :], mask=ok, other=0.0).to(tl.float32)
            buffer = buffer * momentum + (grad + weight * weight_decay)
            weight = weight - lr * buffer
            if STOCHASTIC:  # to bf16: add random low bits, keep the high half (rounds up with the remainder's odds)
                weight_noise, buffer_noise, _, _ = tl.randint4x(seed, where)
                weight = _round_to_bf16(weight, weight_noise)
                buffer = _round_to_bf16(buffer, buffer_noise)
            tl.store(table_ptr + where, weight.to(table_ptr.dtype.element_ty), mask=ok)
            tl.store(momentum_ptr + where, buffer.to(momentum_ptr.dtype.element_ty), mask=ok)


def _launch_options(gemm_dtype: torch.dtype) -> dict:
    return {"GEMM_DTYPE": tl.bfloat16 if gemm_dtype == torch.bfloat16 else tl.float32,
            "PRECISION": "tf32" if gemm_dtype == torch.bfloat16 else "ieee"}


def _first_tile(shapes: tuple[tuple[int, int, int, int, int], ...]) -> tuple[int, int, int]:
    """(rows, columns, chunk) of the first tile autotuning tries: a launch's column split is fixed before autotuning
    picks its tile, from this one."""
    return (INTERPRETED_TILE,) * 3 if _interpreted() else shapes[0][:3]


def _splits(parallel_blocks: int, columns: int, width: int) -> int:
    """Column splits that bring the programs of a launch to about SPLIT_PROGRAMS, each at least ``width`` wide."""
    return max(1, min(triton.cdiv(columns, width), SPLIT_PROGRAMS // parallel_blocks))


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit_embeddings: torch.Tensor, row_gradient: torch.Tensor, table: torch.Tensor,
                rows: Optional[torch.Tensor], targets: torch.Tensor, target_logit: torch.Tensor, slope: torch.Tensor,
                margin: CombinedMargin, gemm_dtype: torch.dtype, sharded: bool, record: Optional[dict]
                ) -> torch.Tensor:
        batch, dim = unit_embeddings.shape
        num_columns = row_gradient.shape[0]
        device = unit_embeddings.device
        rows_tile, columns_tile, _ = _first_tile(COSINE_TILES)
        splits = _splits(triton.cdiv(batch, rows_tile), num_columns, columns_tile)
        partial = {name: torch.empty(batch, splits, device=device, dtype=torch.float32)
                   for name in ("max", "sum", "best")}
        partial_column = torch.empty(batch, splits, device=device, dtype=torch.int64)
        inverse_norm = torch.empty(num_columns, device=device, dtype=torch.float32)
        shape = dict(num_rows=batch, num_columns=num_columns, dim=dim, HAS_INDEX=rows is not None,
                     **_launch_options(gemm_dtype))
        logits = dict(scale=margin.scale, threshold=margin.interclass_threshold or 0.0,
                      FILTER=margin.interclass_threshold is not None)
        index = rows if rows is not None else targets  # any int64 tensor: never read without HAS_INDEX

        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(batch, meta["BLOCK_B"]), splits

        operands = unit_embeddings.to(gemm_dtype)  # cast once, so the kernels' loads feed the GEMMs directly
        _forward_kernel[grid](operands, table, index, targets, target_logit, partial["max"], partial["sum"],
                              partial["best"], partial_column, inverse_norm, splits=splits, RECORD=record is not None,
                              **shape, **logits)
        row_max = partial["max"].max(dim=1).values
        if sharded:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        total = (partial["sum"] * torch.exp(partial["max"] - row_max[:, None]).nan_to_num_(0.0)).sum(dim=1)
        given = torch.where(targets >= 0, target_logit, torch.zeros_like(target_logit))
        if sharded:
            dist.all_reduce(total)
            dist.all_reduce(given)
        log_normaliser = row_max + total.log()
        if record is not None:
            best, split = partial["best"].max(dim=1)
            record["best_other"] = best / margin.scale
            record["columns"] = torch.where(best > float("-inf"), partial_column.gather(1, split[:, None])[:, 0], -1)
        ctx.save_for_backward(operands, table, index, targets, target_logit, slope, log_normaliser,
                              inverse_norm)
        ctx.shape, ctx.logits, ctx.gemm_dtype = shape, logits, gemm_dtype
        return (log_normaliser - given).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        operands, table, index, targets, target_logit, slope, log_normaliser, inverse_norm = ctx.saved_tensors
        shape = ctx.shape
        batch, dim, num_columns = shape["num_rows"], shape["dim"], shape["num_columns"]
        upstream = grad.reshape(1).float().contiguous()
        grad_embeddings = torch.zeros(batch, dim, device=operands.device, dtype=torch.float32)
        grad_rows = torch.empty(num_columns, dim, device=operands.device, dtype=torch.float32)
        for start in range(0, num_columns, BACKWARD_COLUMNS):
            stop = min(num_columns, start + BACKWARD_COLUMNS)
            rows = (index[start:stop], table) if shape["HAS_INDEX"] else (index, table[start:stop])
            grad_embeddings += _backward_columns(
                ctx, operands, *rows, targets - start, target_logit, slope, log_normaliser,
                inverse_norm[start:stop], upstream, grad_rows[start:stop])
        return grad_embeddings, grad_rows, *[None] * 9


def _backward_columns(ctx, operands: torch.Tensor, index: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                      target_logit: torch.Tensor, slope: torch.Tensor, log_normaliser: torch.Tensor,
                      inverse_norm: torch.Tensor, upstream: torch.Tensor, grad_rows: torch.Tensor) -> torch.Tensor:
    """One block of columns of the backward (``targets`` counted from its first column): writes the block's rows'
    gradient into ``grad_rows`` and returns its share of the embeddings' gradient."""
    batch, dim, num_columns = ctx.shape["num_rows"], ctx.shape["dim"], grad_rows.shape[0]
    shape = {**ctx.shape, "num_columns": num_columns}
    device = operands.device
    # d loss / d cosine over the row's norm, in the GEMMs' dtype: the backward's one [B, columns] buffer
    grad_cosine = torch.empty(batch, num_columns, device=device, dtype=ctx.gemm_dtype)
    along = torch.zeros(num_columns, device=device, dtype=torch.float32)
    _cosine_gradient_kernel[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"])
                                          * triton.cdiv(num_columns, meta["BLOCK_K"]),)](
        operands, table, index, targets, target_logit, inverse_norm, log_normaliser, slope, upstream, grad_cosine,
        along, **shape, **ctx.logits)
    rows_tile, _, chunk = _first_tile(EMBEDDING_GRADIENT_TILES)
    splits = _splits(triton.cdiv(batch, rows_tile) * triton.cdiv(dim, chunk), num_columns, SPLIT_COLUMNS)
    split_columns = SPLIT_COLUMNS * triton.cdiv(triton.cdiv(num_columns, splits), SPLIT_COLUMNS)
    partial = torch.empty(triton.cdiv(num_columns, split_columns), batch, dim, device=device, dtype=torch.float32)
    _embedding_gradient_kernel[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]), triton.cdiv(dim, meta["BLOCK_D"]),
                                             partial.shape[0])](
        grad_cosine, table, index, partial, split_columns=split_columns, **shape)
    _row_gradient_kernel[lambda meta: (triton.cdiv(dim, meta["BLOCK_D"]) * triton.cdiv(num_columns, meta["BLOCK_K"]),)](
        grad_cosine, operands, table, index, inverse_norm, along, grad_rows, **shape)
    return partial.sum(dim=0)


def fused_margin_cross_entropy(embeddings: torch.Tensor, row_gradient: torch.Tensor, table: torch.Tensor,
                               rows: Optional[torch.Tensor], targets: torch.Tensor, margin: CombinedMargin,
                               gemm_dtype: torch.dtype = torch.float32, sharded: bool = False,
                               record: Optional[dict] = None) -> torch.Tensor:
    """Mean margin-softmax CE of ``embeddings`` against rows ``rows`` of ``table`` (all rows: None).

    ``row_gradient`` is a ``[K, D]`` leaf standing for those rows (core/center_store: a
    placeholder without storage); after the backward its ``.grad`` holds their gradient.
    ``targets`` are columns (-1: the class is on another rank, with ``sharded``). A
    ``record`` dict receives ``best_other`` (each row's best other cosine, the logit / s)
    and ``columns`` (its column, -1: none).
    """
    if triton is None:
        raise ConfigError("the Triton head needs the triton package (it comes with CUDA builds of torch)")
    unit = F.normalize(embeddings.float(), dim=1, eps=NORM_EPS)
    with torch.no_grad():
        has_target = targets >= 0
        target_rows = targets.clamp(min=0) if rows is None else rows[targets.clamp(min=0)]
        cos_target = (unit * F.normalize(table[target_rows].float(), dim=1, eps=NORM_EPS)).sum(dim=1).clamp(-1.0, 1.0)
        target_logit = torch.where(has_target, margin.scale * margin.target_function(cos_target), float("-inf"))
        slope = margin.target_slope(cos_target)
    if record is not None:
        record["target_cosine"] = torch.where(has_target, cos_target, float("-inf"))
    return _FusedHead.apply(unit.contiguous(), row_gradient, table, rows, targets.contiguous(),
                            target_logit.contiguous(), slope.contiguous(), margin, gemm_dtype, sharded, record)


@torch.no_grad()
def sgd_rows(table: torch.Tensor, momentum_buffer: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor,
             lr: float, momentum: float, weight_decay: float, generator: Optional[torch.Generator],
             leaders: Optional[torch.Tensor] = None) -> None:
    """``RowSGD.update`` in one kernel: reads and writes only ``rows`` (all: None) of the table and its momentum.

    A row repeated in ``rows`` (micro-batches sharing it) carries its summed gradient at every
    copy, and ``leaders`` names one copy per row (``RowSGD.update``): that copy alone updates it.
    """
    count, dim = grad.shape[0], table.shape[-1]
    seed = torch.randint(0, 2 ** 30, (1,), device=table.device, generator=generator, dtype=torch.int64)
    _sgd_rows_kernel[(triton.cdiv(count, UPDATE_ROWS),)](
        table, momentum_buffer, seed if rows is None else rows, seed if leaders is None else leaders,
        grad.contiguous(), seed, count, dim, lr, momentum, weight_decay, HAS_ROWS=rows is not None,
        HAS_LEADERS=leaders is not None, STOCHASTIC=table.dtype == torch.bfloat16,
        BLOCK_D=min(UPDATE_CHUNK, max(16, triton.next_power_of_2(dim))), BLOCK=UPDATE_ROWS, num_warps=UPDATE_WARPS)
