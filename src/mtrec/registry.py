"""Components by name: the one place a kind of component (a watch loss, a weighting, a schedule, a
metric) lists its members.

A component registers itself where it is defined::

    WATCH_LOSSES = Registry("watch loss")

    @WATCH_LOSSES.register("bpr")
    class BPR(PairwiseLoss): ...

and everything that offers a choice reads the registry: validation (an unknown name is a
:class:`~mtrec.errors.ConfigError` listing the registered ones, never a silent default), the
command line's choices, the tuner's search space and the tests that run over every member. Adding
a component is then its own module (or class) and its test.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from mtrec.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named components of one kind, in the order they were registered.

    Parameters
    ----------
    kind:
        What a member is, for messages: ``"watch loss"`` gives "unknown watch loss 'x'; ...".
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._members: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator registering its target under ``name`` (a second use of a name is an error)."""

        def add(member: T) -> T:
            if name in self._members:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._members[name] = member
            return member

        return add

    def __getitem__(self, name: str) -> T:
        """The member called ``name``; an unknown name is a :class:`ConfigError` listing the registered ones."""
        self.check(name)
        return self._members[name]

    def check(self, name: object) -> str:
        """``name`` if it is registered, else a :class:`ConfigError` listing the registered names."""
        if not isinstance(name, str) or name not in self._members:
            raise ConfigError(f"unknown {self.kind} {name!r}; use one of {', '.join(self._members)}")
        return name

    def names(self) -> tuple[str, ...]:
        """The registered names, in the order they were registered."""
        return tuple(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._members)})"
