"""Batches built ahead of the step that uses them, in a background thread.

The loop decides the order (the epoch order of (seed, epoch), each rank's share), so prefetching
changes when a batch is built, never which batch comes next: the batches are those of calling
build() on each index in turn (tests/test_prefetch.py checks every column). numpy's copies and
torch's ops release the GIL, so building the next window overlaps the current step.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Index = TypeVar("Index")
Built = TypeVar("Built")


def prefetched(build: Callable[[Index], Built], indices: Iterable[Index], ahead: int) -> Iterator[Built]:
    """build(index) for each index, in order, with up to `ahead` of them built in advance by one
    background thread (ahead = 0: built here, when asked for). An error in build() is raised
    where its batch would have been yielded."""
    if ahead <= 0:
        yield from map(build, indices)
        return
    pending: deque[Future] = deque()
    upcoming = iter(indices)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etarec-batches") as builder:
        try:
            for index in upcoming:
                pending.append(builder.submit(build, index))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (or failed): the batches still queued are not wanted
            for future in pending:
                future.cancel()
