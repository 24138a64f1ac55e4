"""What the attention kernels (runtime/) and their pricing (ir/kernel_choice.py) must agree on."""

# The reference attention's query rows per score tile.
QUERY_BLOCK = 1024


def every_row_sees_a_key(sq: int, sk: int, window: int) -> bool:
    """Under causal/window masks query row i sees keys (i - W, i] of [0, Sk); with documents
    (Sq = Sk) every row sees itself. torch's CPU flash kernel leaves a row that sees no key NaN
    where the kernels give 0."""
    return sk > 0 and not (window and sq - 1 >= sk + window - 1)
