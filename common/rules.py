"""Per-op knowledge lives in rule tables: a dict from an op's key (IR op name, ATen target or op
class) to a function, filled by a decorator where each rule is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict) -> Callable[..., Callable[[F], F]]:
    """The decorator of `table`: `@rule(key, ...)` files the function under each key."""

    def rule(*keys) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for key in keys:
                table[key] = fn
            return fn

        return register

    return rule
