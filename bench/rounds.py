"""
Helpers the side-by-side benchmarks share: run servers alternately over several
rounds and quote the median of the paired ratios.

On a 2-core machine shared with other work, one run of A then one run of B is
noise (the issue saw 0.73x and 1.48x for the same FTP figure).  Alternating the
servers round by round, and swapping who goes first every other round (A B, B A,
A B ...), pairs each of A's figures with one of B's taken moments apart; the
median of those paired ratios is robust to a round disturbed by something else.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Until something accepts on 127.0.0.1:C{port}; fails early if C{proc} exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def order(round_index: int, names: Sequence[str]) -> list[str]:
    """Who runs first in this round: as given in even rounds, reversed in odd ones."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def alternate(rounds: int, runners: dict[str, Callable[[], dict[str, float]]],
              show: Callable[[int, str, dict[str, float]], None] | None = None
              ) -> dict[str, list[dict[str, float]]]:
    """
    Run every runner once per round, alternating who goes first; each runner
    returns its figures by name.  Returns every round's figures per runner.
    """
    results: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in order(r, list(runners)):
            figures = runners[name]()
            results[name].append(figures)
            if show is not None:
                show(r, name, figures)
    return results


def paired_ratios(ours: list[dict[str, float]], theirs: list[dict[str, float]],
                  key: str) -> list[float]:
    """Round by round ours/theirs for C{key} (rounds where theirs is 0 are left out)."""
    return [o[key] / t[key] for o, t in zip(ours, theirs, strict=True) if t.get(key)]


def median_ratio(ours: list[dict[str, float]], theirs: list[dict[str, float]],
                 key: str) -> float | None:
    """The median of the paired ratios, or None if there is none."""
    ratios = paired_ratios(ours, theirs, key)
    return statistics.median(ratios) if ratios else None


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def shared_dir() -> Path | None:
    """
    The steering repository's shared/ folder: beside the repository in CI
    (C{../shared}); for a git worktree, beside the main checkout.
    C{NETSUITE_SHARED} overrides.
    """
    candidates = []
    if os.environ.get("NETSUITE_SHARED"):
        candidates.append(Path(os.environ["NETSUITE_SHARED"]))
    candidates.append(ROOT.parent / "shared")
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-common-dir"],
                                capture_output=True, text=True, timeout=10)
        if common.returncode == 0 and common.stdout.strip():
            git_dir = Path(common.stdout.strip())
            if not git_dir.is_absolute():
                git_dir = ROOT / git_dir
            candidates.append(git_dir.resolve().parent.parent / "shared")
    except (OSError, subprocess.TimeoutExpired):
        pass
    for path in candidates:
        if path.is_dir():
            return path
    return None
