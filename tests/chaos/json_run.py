"""Run a module of switchboard.chaos as a subprocess and read the JSON line it ends with. The
module starts a multi-node Ray cluster of its own, so it cannot share the process (or the RAY_*
environment) of tests that use the shared Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_json(module: str, arguments: list[str], timeout_s: float) -> tuple[dict, str, int]:
    """(the last stdout line as JSON, stdout and the tail of stderr for failure messages, exit code)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (exit {done.returncode}); stderr tail:\n{done.stderr[-4000:]}"
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"the last line is not JSON (exit {done.returncode}):\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return figures, done.stdout + f"\n(exit {done.returncode})\n" + done.stderr[-3000:], done.returncode
