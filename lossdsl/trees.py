"""Walking trees: ``children()``, ``walk()`` and ``find_all()`` for the AST, the plan and the tensor IR.

Each node class's child fields are found once, from its declared field types (a field whose type
names a node class of the same tree), and kept in a table; ``walk`` then reads the table. The walk
is iterative, not recursive: a spec built in Python nests as deep as it likes (``e = e + T.mae()``
in a loop), and a pass over it must not raise RecursionError. Children come in field order, and
a tuple field's items in order, so every walk of a tree visits its nodes in the same order:
pre-order, left to right, which is source order for the AST.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

N = TypeVar("N")


def child_fields(annotations: dict[str, Any], is_node_class: Callable[[type], bool],
                 skip: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The names of the fields whose type holds a node class (directly, in a union, or in a tuple)."""
    return tuple(name for name, annotation in annotations.items()
                 if name not in skip and _mentions_node(annotation, is_node_class))


def _mentions_node(annotation: Any, is_node_class: Callable[[type], bool]) -> bool:
    pending = [annotation]
    while pending:
        item = pending.pop()
        if isinstance(item, type) and is_node_class(item):
            return True
        pending += typing.get_args(item)
    return False


def children_from(node: Any, fields: tuple[str, ...], node_type: type) -> Iterator[Any]:
    """The nodes held in ``fields`` of ``node``, in field order; a tuple's items in order; None skipped."""
    for name in fields:
        value = getattr(node, name)
        if isinstance(value, node_type):
            yield value
        elif isinstance(value, tuple):
            yield from (item for item in value if isinstance(item, node_type))


def walk(root: Any) -> Iterator[Any]:
    """``root`` and every node below it, pre-order, left to right; iterative (any depth)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(tuple(node.children())))


def find_all(root: Any, kind: type[N] | tuple[type, ...]) -> Iterator[N]:
    """The nodes of ``root``'s walk that are instances of ``kind``, in walk order."""
    return (node for node in walk(root) if isinstance(node, kind))


class DataclassNode:
    """Base of a tree of dataclasses (the plan, the tensor IR): ``children()``, ``walk()``,
    ``find_all()``. A tree's base class sets ``tree`` to itself: a field whose type names a
    subclass of it holds children, unless its metadata marks it ``REFERENCE`` (a node held
    elsewhere in the tree, which a walk must not visit twice)."""

    __slots__ = ()
    tree: typing.ClassVar[type]

    def children(self) -> Iterator[Any]:
        """The nodes directly below this one, in field order."""
        return children_from(self, dataclass_child_fields(type(self)), self.tree)

    def walk(self) -> Iterator[Any]:
        """This node and every node below it, pre-order, left to right; iterative, so any depth."""
        return walk(self)

    def find_all(self, kind: type[N] | tuple[type, ...]) -> Iterator[N]:
        """Every node of the walk that is a ``kind``, in walk order."""
        return find_all(self, kind)


#: Marks a dataclass field that refers to a node held elsewhere in the tree (not a child).
REFERENCE = {"reference": True}

#: Per dataclass node class, the fields that hold nodes: derived from the field types once per class.
_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def dataclass_child_fields(cls: type[DataclassNode]) -> tuple[str, ...]:
    found = _DATACLASS_FIELDS.get(cls)
    if found is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        references = frozenset(f.name for f in fields if f.metadata.get("reference"))
        hints = typing.get_type_hints(cls)
        found = _DATACLASS_FIELDS[cls] = child_fields(
            {f.name: hints[f.name] for f in fields}, lambda t: issubclass(t, cls.tree), references)
    return found


def fill_table(base: type[DataclassNode]) -> None:
    """Derive the child fields of every subclass of ``base`` now (at import), not at the first walk."""
    pending = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        if dataclasses.is_dataclass(cls):
            dataclass_child_fields(cls)
        pending += cls.__subclasses__()
