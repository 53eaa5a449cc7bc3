"""Racing threads against one repository, to test its compare-and-set writes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def race(act: Callable[[int], T], n: int = 8) -> list[T]:
    """`act(0)` .. `act(n - 1)` on n threads released at once; what they returned, in the
    order they finished. An exception in any of them is raised here."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(act(i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
