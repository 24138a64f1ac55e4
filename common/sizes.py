"""How a length is cut into parts: the rules the IR (local shapes), the passes and the
runtime's collectives must share exactly. The sequence is cut as torch.tensor_split cuts it
(parts differ by at most one); sharded parameters as DTensor's Shard(0) cuts them (torch.chunk)."""


def split_sizes(total: int, parts: int) -> list[int]:
    """torch.tensor_split's part sizes: the first total % parts parts get one more."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def chunk_sizes(total: int, parts: int) -> list[int]:
    """torch.chunk's part sizes, which DTensor's Shard placement uses: ceil(total / parts) each
    until the length runs out (the last parts may be shorter, or empty)."""
    size = -(-total // parts)
    return [max(0, min(size, total - i * size)) for i in range(parts)]


# The fused LM head + loss adds the head-weight gradient of a chunk of rows this many vocabulary
# rows at a time when it accumulates in a wider dtype: one [slice, hidden] product in the model
# dtype at a time, not a whole [vocab, hidden] one (1 GiB for Llama-3's vocabulary in bf16).
GRAD_WEIGHT_SLICE = 16384
