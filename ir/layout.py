"""How a value lies on the sequence-parallel mesh axis: the one layout type of the compiler (the
sharding rules compute with it; `#autosp.layout<...>` carries it in the IR)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class LayoutKind(StrEnum):
    REPLICATED = "replicated"
    SHARD = "shard"
    HEADS = "heads"
    PARTIAL = "partial"


@dataclass(frozen=True)
class Layout:
    """How a value lies on the sequence-parallel mesh axis (the one layout type of the compiler:
    the sharding rules compute with it, `LayoutAttr` carries it in the IR):
    - replicated: every rank holds all of it;
    - shard `dim`: `dim` carries the sequence and rank r holds its r-th part (parts differ by at
      most one token when the length does not divide); with `outer` > 1, `dim` is outer x
      sequence x inner (batch and sequence merged) and each of the outer slices is split;
    - heads `dim`: `dim` (attention heads) split evenly, rank r holds block r; with `replicas`
      > 1, sp/replicas blocks, each held by that many consecutive ranks (K/V heads when there
      are fewer than sp);
    - partial: each rank holds a summand of the value."""

    kind: LayoutKind
    dim: int | None = None  # only shard and heads layouts have one
    replicas: int = 1
    outer: int = 1

    @staticmethod
    def replicated() -> Layout:
        return Layout(LayoutKind.REPLICATED)

    @staticmethod
    def partial() -> Layout:
        return Layout(LayoutKind.PARTIAL)

    @staticmethod
    def shard(dim: int, outer: int = 1) -> Layout:
        return Layout(LayoutKind.SHARD, dim, outer=outer)

    @staticmethod
    def heads(dim: int, replicas: int = 1) -> Layout:
        return Layout(LayoutKind.HEADS, dim, replicas)

    @property
    def sharded(self) -> bool:
        """Split along the sequence."""
        return self.kind is LayoutKind.SHARD

    @property
    def blocked(self) -> bool:
        """Split into blocks along `dim` (sequence or heads)."""
        return self.kind in (LayoutKind.SHARD, LayoutKind.HEADS)

    def is_shard(self, dim: int) -> bool:
        return self.sharded and self.dim == dim

    def at(self, dim: int) -> Layout:
        """The same split, carried by another dim."""
        return replace(self, dim=dim)

    def blocks(self, sp: int) -> int:
        return sp // self.replicas

    def problem(self) -> str | None:
        if self.blocked != (self.dim is not None and self.dim >= 0):
            return "shard and heads layouts need a dim >= 0; other layouts have none"
        if self.replicas < 1 or (self.replicas > 1 and self.kind is not LayoutKind.HEADS):
            return "replicas must be >= 1, and only heads layouts have more than 1"
        if self.outer < 1 or (self.outer > 1 and self.kind is not LayoutKind.SHARD):
            return "outer must be >= 1, and only shard layouts have more than 1"
        return None

    def syntax(self) -> str:
        """As in the IR: `shard 1 outer 2`, `heads 2 replicas 2`, `replicated`."""
        words = [self.kind.value] + ([str(self.dim)] if self.blocked else [])
        words += [f"replicas {self.replicas}"] if self.replicas != 1 else []
        words += [f"outer {self.outer}"] if self.outer != 1 else []
        return " ".join(words)

    def __str__(self) -> str:
        """Compact, for the report's tables: R, P, S(1), S(0/2), H(2x2)."""
        letter = self.kind.value[0].upper()
        if not self.blocked:
            return letter
        extra = f"x{self.replicas}" if self.replicas != 1 else f"/{self.outer}" if self.outer != 1 else ""
        return f"{letter}({self.dim}{extra})"
