"""Consecutive items grouped into batches of one image size (eval and sample mode)."""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def same_size_batches(items: Iterable[Item], batch_size: int,
                      size_of: Callable[[Item], Hashable]) -> Iterator[list[Item]]:
    """Consecutive items in batches of at most `batch_size` whose `size_of` agree (order kept).

    A batch ends where the size changes, so images of different sizes are never stacked together
    and no item is held back; `items` is read once, one item ahead of the batch it closes.
    """
    group: list[Item] = []
    for item in items:
        if group and (size_of(item) != size_of(group[0]) or len(group) == batch_size):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
