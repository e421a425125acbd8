"""The process heap: glibc malloc's thresholds and CPython's cyclic garbage collector.

- `pin_malloc_thresholds`, before the rules engine allocates. durable-rules' throughput was
  bimodal (5k vs 15-20k evaluations/s) depending on where glibc's dynamic mmap/trim thresholds
  settled; fixing them made every run fast. Same effect as the MALLOC_MMAP_THRESHOLD_ /
  MALLOC_TRIM_THRESHOLD_ environment variables. No-op off glibc.
- `tune_collector`, at start-up: a decision allocates a few hundred short-lived containers, so
  CPython's default gen-0 threshold (700) ran a young collection every other decision. A higher
  threshold collects the same garbage in fewer, slightly longer passes (`GC_THRESHOLDS`).
- `freeze`, once serving and after every rules reload: what start-up built (modules, the
  compiled rules, protobuf descriptors, clients) lives as long as the process, yet every full
  collection walked all of it. `gc.freeze()` moves it to the permanent generation, which no
  collection scans, so the full collections that remain walk only the state built since.

What it buys is measured by `bench/decide.py` (open-loop p99.9, with SD_GC_TUNING on and off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def pin_malloc_thresholds() -> bool:
    """True when glibc accepted both settings."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok_trim: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return ok_mmap and ok_trim


#: (gen 0 allocations, gen-0 passes per gen-1 pass, gen-1 passes per full pass)
GC_THRESHOLDS = (20_000, 20, 10)


def tune_collector() -> None:
    """Collect less often (`GC_THRESHOLDS`); garbage that is only reachable in cycles still goes."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze(reason: str) -> None:
    """Collect once, then move every object that survived to the permanent generation."""
    gc.collect()
    gc.freeze()
    log.debug("heap frozen (%s): %d objects in the permanent generation", reason, gc.get_freeze_count())
