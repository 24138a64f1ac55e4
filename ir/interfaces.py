"""Op interfaces: what an AutoSP op says about itself, so that each of the compiler's own ops
(`autosp.*`, `dist.*`) is described in one place, its class, as MLIR ops are through their
interfaces (ShardingInterface, MemoryEffectOpInterface, ...). The passes ask the interface
first; ATen ops cannot carry code, so what the compiler knows about them lives in one table per
concern, keyed by `OpOverload` (ARCHITECTURE.md lists every table).

- `ShardingInterface`: how the op runs on the sequence-parallel axis for its operands' layouts.
- `CostInterface`: its FLOPs (and whether the matmul units run them), the scratch memory of
  the kernel that runs it, and the bytes it sends to other ranks.
- `RuntimeCallInterface`: the one runtime call it becomes in the generated program.
- `IndexReaderInterface`: an operand it reads as indices, checked before the step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from xdsl.ir import Attribute, Operation, SSAValue

from autosp.ir.layout import Layout


@dataclass
class Strategy:
    inputs: list[Layout]  # what each operand must be (conversions are inserted)
    outputs: list[Layout]  # the layout each result is declared with
    computed: list[Layout] | None = None  # what the local op produces, if not `outputs`
    # No rule shards this op for its operands' layouts: it runs replicated on gathered inputs
    # (exact, but whole-sequence values; the report flags the gathers this causes).
    fallback: bool = False


@dataclass
class RuleContext:
    sp: int
    token_values: set[SSAValue] = field(default_factory=set)
    seq_dim: int = 1
    seq_len: int = 1  # the global sequence length: a sharded dim's size is a multiple of it


class ShardingInterface(ABC):
    @abstractmethod
    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy | None:
        """How the op runs when its operands lie as `layouts` (the inputs it asks for are
        converted to); None: not sharded for these layouts (it then runs replicated)."""


class CostInterface(ABC):
    ON_MATMUL_UNITS: ClassVar[bool] = False

    @abstractmethod
    def flops(self, flops_of: Callable[[Operation], float]) -> float:
        """FLOPs of one run (`flops_of` prices the ops of a region the op holds)."""

    @abstractmethod
    def workspace_bytes(self) -> int:
        """Memory the kernel that really runs the op allocates besides its results, while it runs."""

    def sent_bytes(self) -> float:
        """Bytes this rank sends to the others (a ring collective's volume); 0: a local op."""
        return 0.0


class MovesData(CostInterface):
    """An op that computes nothing (its time is the bytes it moves) and allocates only its results."""

    def flops(self, flops_of) -> float:
        return 0.0

    def workspace_bytes(self) -> int:
        return 0


@dataclass(frozen=True)
class ProgramGlobal:
    """A name the generated program defines and the runtime sets (e.g. HOST, the host pool)."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass
class RuntimeCall:
    callee: str  # in the generated program's namespace, e.g. "kernels.attention_forward"
    args: list[SSAValue | Attribute]
    kwargs: dict[str, SSAValue | Attribute | int | ProgramGlobal] = field(default_factory=dict)


class RuntimeCallInterface(ABC):
    @abstractmethod
    def runtime_call(self) -> RuntimeCall:
        """The op in the generated program: one call, its results the op's results."""


@dataclass(frozen=True)
class IndexUse:
    indices: SSAValue
    size: int  # valid indices are 0 .. size-1
    ignore: int | None  # a value that is skipped, not read (ignore_index)
    reader: str  # what reads them, for the message


class IndexReaderInterface(ABC):
    @abstractmethod
    def index_use(self) -> IndexUse:
        """The operand the op reads as indices, and their valid range."""
