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
    """Defer ``builder`` (and so its option checks) until the strategy is used.

    The same options give the same strategy object: strategies built inside a draw (the
    neighbours of a stratified layout) would otherwise be rebuilt on every draw, and
    building an ``@st.composite`` reads its function's source (25 ms each, most of a
    shrink's time where the property itself is quick)."""
    built: dict[tuple, SearchStrategy[Any]] = {}

    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> SearchStrategy[Any]:
        try:
            # Types are part of the key: masks=1 equals masks=True, and must still fail.
            key = (tuple((type(a), a) for a in args),
                   tuple(sorted((k, type(v), v) for k, v in kwargs.items())))
            return built[key]
        except TypeError:
            key = None
        except KeyError:
            pass

        def definition() -> SearchStrategy[Any]:
            return builder(*args, **kwargs)

        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        definition.__name__ = definition.__qualname__ = f"{builder.__name__}({', '.join(shown)})"
        strategy = st.deferred(definition)
        if key is not None and len(built) < _BUILT:
            built[key] = strategy
        return strategy

    return wrapper  # type: ignore[return-value]


_BUILT = 4096
"""Strategies kept per builder: options drawn from a run's own state stay few."""


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
