"""Process-level settings of the stream processor's entry point."""

from __future__ import annotations

import json
import subprocess
import sys


def test_tune_gc_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    # In a child process: the settings are process-wide and must not leak into pytest.
    code = (
        "import gc, json\n"
        "from rtrec.streaming.service import GC_THRESHOLDS, tune_gc\n"
        "before = gc.get_freeze_count()\n"
        "tune_gc()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(),"
        " list(GC_THRESHOLDS)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="."
    )
    before, frozen, threshold, expected = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == 0 and frozen > 10_000  # the imported modules' objects at least
    assert threshold == expected
    assert expected[0] > 700  # raised above Python's default young threshold
