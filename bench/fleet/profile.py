"""py-spy on the daemon: record folded stacks (`--format raw`), then rank functions."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

# Leaf frames of a thread that waits rather than works (py-spy --nonblocking keeps them).
IDLE = ("EpollSelector.select (", "_worker (concurrent/futures/thread.py)")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def record_command(pid: int, seconds: int, output: Path, rate: int = 100) -> list[str]:
    exe = py_spy()
    if exe is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return [
        *(exe, "record", "--pid", str(pid), "--duration", str(seconds)),
        *("--rate", str(rate), "--nonblocking", "--threads", "--format", "raw"),
        *("--output", str(output)),
    ]


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarize(folded: Path, top: int = 25) -> str:
    """Self and inclusive sample counts per function, and per thread."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    if not folded.exists():
        return f"(no profile: {folded} missing)"
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = ""
        while frames and frames[0].startswith(("process ", "thread ")):
            if frames[0].startswith("thread "):
                thread = frames[0]
            frames = frames[1:]
        if not frames:
            continue
        names = [_short(f) for f in frames]
        if names[-1].startswith(IDLE):
            idle += count
            continue
        total += count
        threads[thread] += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "(no samples)"
    lines = [
        f"{total} busy samples (% below are of these); {idle} more were threads waiting "
        "(epoll, the executor's queue), left out"
    ]
    lines.append("by thread:")
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in threads.most_common(8)]
    lines.append("self (leaf) time:")
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines.append("inclusive time:")
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top + 15)]
    return "\n".join(lines)
