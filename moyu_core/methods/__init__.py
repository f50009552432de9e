"""DA methods behind one registry: name -> class. A new method is one file in this package and
one line in `_BUILT_IN` (or `register(cls)` from anywhere, e.g. a user's own module)."""
from __future__ import annotations

import dataclasses

from ..errors import MoyuError
from .base import Method
from .cats import Cats
from .cett import Cett
from .dejavu import Dejavu
from .dense import Dense
from .griffin import Griffin
from .moe import Moe
from .moe_oracle import MoeOracle
from .oracle import Oracle
from .static import Static
from .tda import Tda
from .teal import Teal

_BUILT_IN = (Dense, Oracle, Tda, Cats, Cett, Dejavu, Griffin, Moe, MoeOracle, Static, Teal)
REGISTRY: dict[str, type[Method]] = {c.name: c for c in _BUILT_IN}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class under its `name` (usable as a decorator); a name already taken by
    another class is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not dataclasses.is_dataclass(cls.Params):
        raise MoyuError("a method is a subclass of methods.base.Method with a dataclass Params")
    if REGISTRY.get(cls.name, cls) is not cls:
        raise MoyuError(f"a method named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, **params) -> Method:
    """Build a method by name; unknown name or parameter -> MoyuError listing the valid ones."""
    if name not in REGISTRY:
        raise MoyuError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(cls.Params)]
    bad = [k for k in params if k not in valid]
    if bad:
        raise MoyuError(f"method {name!r} has no parameter {bad[0]!r}; valid: {', '.join(valid) or '(none)'}")
    try:
        p = cls.Params(**params)
    except (TypeError, ValueError) as e:
        raise MoyuError(f"bad parameters for {name!r}: {e}") from None
    return cls(p)


__all__ = ["REGISTRY", "Method", "make", "register"]
