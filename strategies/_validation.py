"""Option checking shared by the strategies, in Hypothesis's own style.

Strategies are built lazily so that a bad option raises ``InvalidArgument`` when
the strategy is first drawn from, as Hypothesis's built-in strategies do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

_F = TypeVar("_F", bound=Callable[..., SearchStrategy[Any]])


def _lazy(builder: _F) -> _F:
    """Defer ``builder`` (and so its option checks) until the strategy is used."""

    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> SearchStrategy[Any]:
        def definition() -> SearchStrategy[Any]:
            return builder(*args, **kwargs)

        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        definition.__name__ = definition.__qualname__ = f"{builder.__name__}({', '.join(shown)})"
        return st.deferred(definition)

    return wrapper  # type: ignore[return-value]


def _check_int(name: str, value: object, *, at_least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}={value!r} must be an int, not {type(value).__name__}")
    if value < at_least:
        raise InvalidArgument(f"{name}={value!r} must be at least {at_least}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be True or False")
    return value


def _check_strategy(name: str, value: object) -> SearchStrategy[Any] | None:
    if value is not None and not isinstance(value, SearchStrategy):
        raise InvalidArgument(f"{name}={value!r} must be a SearchStrategy or None")
    return value
