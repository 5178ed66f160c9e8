"""How many examples a property test tries: its usual count, scaled by HYPOTHESIS_EXAMPLES_SCALE.

`make test-fast` sets the scale to 0.1 for a quick round while working; `make test` (and CI) runs the full count.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("HYPOTHESIS_EXAMPLES_SCALE") or 1.0)


def examples(usual: int) -> int:
    return max(10, round(usual * SCALE))
