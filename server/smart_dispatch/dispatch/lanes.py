"""Delivery lanes: the order in which ready dispatches are claimed.

Every dispatch is queued in its lane (`domain.LANES`: critical, high, normal, bulk; set by the
rule effect `lane`, else by category). Claimers serve the lanes by weight, 8 : 4 : 2 : 1, with a
smooth weighted round robin: with every lane busy, of 15 claims 8 go to critical, 4 to high, 2 to
normal and 1 to bulk, interleaved; a lane with no work gives its turns to the others. So a login
code queued behind 50,000 marketing messages is claimed next, and marketing still moves while
login codes keep coming.
"""

from __future__ import annotations

from collections.abc import Collection

from smart_dispatch.domain import LANES

WEIGHTS: dict[str, int] = {"critical": 8, "high": 4, "normal": 2, "bulk": 1}


class LaneOrder:
    """Which lane to serve next. Not thread-safe (one per store, on its event loop)."""

    def __init__(self) -> None:
        self._credit = dict.fromkeys(LANES, 0)

    def next(self, busy: Collection[str] = LANES) -> list[str]:
        """The lanes to try for the next claim, the one whose turn it is first, then the other
        busy ones most urgent first (a store that cannot tell which lanes have work passes all)."""
        lanes = [lane for lane in LANES if lane in busy]
        if not lanes:
            return []
        for lane in lanes:
            self._credit[lane] += WEIGHTS[lane]
        turn = max(lanes, key=lambda lane: self._credit[lane])  # ties: the more urgent (first)
        self._credit[turn] -= sum(WEIGHTS[lane] for lane in lanes)
        return [turn, *(lane for lane in lanes if lane != turn)]
