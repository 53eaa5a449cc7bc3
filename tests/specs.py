"""Job-spec pieces several test modules share."""

from __future__ import annotations

#: A narrow mobilenet space, so that a one-shot job's supernet trains in seconds.
SMALL_SUPERNET = [
    {"type": "fixed", "name": "resolution", "value": 8},
    {"type": "fixed", "name": "width_mult", "value": 0.5},
    *({"type": "categorical", "name": f"s{i}_expand", "choices": [1, 3]} for i in (1, 2, 3)),
    *({"type": "categorical", "name": f"s{i}_kernel", "choices": [3, 5]} for i in (1, 2, 3)),
]
