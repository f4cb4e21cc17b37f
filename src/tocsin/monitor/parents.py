"""Parent dependencies (`depends_on`): whose ticket a parent's outage holds back.

The tracker decides what a held subject does (`ParentChanged`: past its debounce it is
`unreachable` and opens nothing; released, its debounce starts again). This module keeps who
depends on whom and answers, when a parent's health changes, which parent now holds a child.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from tocsin.probes.observation import SubjectKey
from tocsin.tracker import SubjectHealth

# A parent in these holds its children's tickets back; unreachable passes a grandparent's on.
HOLDING = frozenset({SubjectHealth.FAILING, SubjectHealth.DOWN, SubjectHealth.UNREACHABLE})


def holder(parents: Iterable[tuple[str, SubjectHealth | None]], current: str | None) -> str | None:
    """The id of the parent that holds a subject back, given its parents' (id, health; None
    when not tracked) and the one holding it now.

    A failing, down or unreachable parent holds it, the current holder first while it still
    does. A parent whose health is unknown (not seen since a restart, or its probe cannot tell)
    changes nothing: if it is the current holder, it still is.
    """
    holding: list[str] = []
    for parent, health in parents:
        if health in HOLDING:
            holding.append(parent)
        elif health is SubjectHealth.UNKNOWN and parent == current:
            return current
    if current is not None and current in holding:
        return current
    return holding[0] if holding else None


class Dependencies:
    """Who depends on whom, by subject key (the config's ids resolved within the org)."""

    def __init__(self) -> None:
        self._parents: dict[SubjectKey, tuple[SubjectKey, ...]] = {}
        self._children: dict[SubjectKey, tuple[SubjectKey, ...]] = {}

    def set(self, parents: Mapping[SubjectKey, Sequence[SubjectKey]]) -> None:
        self._parents = {child: tuple(of) for child, of in parents.items() if of}
        children: dict[SubjectKey, list[SubjectKey]] = {}
        for child, of in self._parents.items():
            for parent in of:
                children.setdefault(parent, []).append(child)
        self._children = {parent: tuple(kids) for parent, kids in children.items()}

    def parents(self, child: SubjectKey) -> tuple[SubjectKey, ...]:
        return self._parents.get(child, ())

    def children(self, parent: SubjectKey) -> tuple[SubjectKey, ...]:
        return self._children.get(parent, ())

    def has_children(self, key: SubjectKey) -> bool:
        return key in self._children

    def dependents(self) -> Iterable[SubjectKey]:
        """Every subject that has a parent."""
        return self._parents.keys()

    def holder(
        self,
        child: SubjectKey,
        current: str | None,
        health: Callable[[SubjectKey], SubjectHealth | None],
    ) -> str | None:
        """`holder` for `child`, its parents' health read through `health`."""
        return holder(((p.id, health(p)) for p in self._parents.get(child, ())), current)


def parent_key(org: str, parent: str, known: Container[SubjectKey]) -> SubjectKey | None:
    """The subject a `depends_on` id names: the org's device of that id, or else its
    integration, or else its space (the config refuses ids that name none, and space ids
    that are also a device's or an integration's)."""
    for kind in ("device", "integration", "space"):
        if (key := SubjectKey(org, kind, parent)) in known:
            return key
    return None


def resolve(
    depends_on: Mapping[SubjectKey, Sequence[str]], known: Container[SubjectKey]
) -> dict[SubjectKey, list[SubjectKey]]:
    """The config's `depends_on` ids as subject keys (`parent_key`)."""
    return {
        child: [key for parent in ids if (key := parent_key(child.org, parent, known)) is not None]
        for child, ids in depends_on.items()
        if ids
    }
