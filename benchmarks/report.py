"""Output helpers shared by the benchmarks: JSON on a clean stdout, a plain text table on stderr."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence


@contextmanager
def clean_stdout() -> Iterator:
    """Route file descriptor 1 to stderr while the body runs (Ray's C++ processes write log
    lines to it, e.g. when a node dies); yields a function that prints JSON on the real stdout."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)

    def emit(obj) -> None:
        with os.fdopen(os.dup(real), "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")

    try:
        yield emit
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, the first row a header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)
