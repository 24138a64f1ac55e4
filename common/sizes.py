"""How a length is cut into parts: the one rule the IR (local shapes), the passes and the
runtime's collectives must share exactly."""


def split_sizes(total: int, parts: int) -> list[int]:
    """torch.tensor_split's part sizes: the first total % parts parts get one more."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
