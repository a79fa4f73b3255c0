"""Where the time goes, from a py-spy profile in raw (collapsed-stack) form.

``bench/run.py --profile FILE`` records one (``py-spy record --subprocesses --gil --format raw``) while
the BFF is under the benchmark's load; ``py-spy`` writes one line per distinct stack, its frames
separated by ``;`` (outermost first) and the number of samples at the end. This prints the share of
the samples each function accounts for on its own (self) and with everything it calls (inclusive),
and the shares of the cost groups named in :data:`GROUPS`, which add up to the whole.

    python bench/cpu_profile.py FILE [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
import typing as t
from collections import Counter
from pathlib import Path

__all__ = ["GROUPS", "Profile", "read_profile"]

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: Cost groups, most specific first: a sample counts in the first group that has one of its frames
#: on the sample's stack, so the shares add up to the whole. A frame pattern is a function name (a
#: method's name without its class; ``*`` for any) and a piece of the file's path as py-spy prints it.
GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("OpenTelemetry API (installed, no SDK configured: no-op spans and context)",
     (("*", "trace/"), ("*", "context/"), ("*", "opentelemetry/"), ("*", "bff/tracing.py"))),
    ("Prometheus metrics", (("*", "prometheus_client/"), ("*", "bff/metrics.py"))),
    ("the access line and other logging (fields, session tag, JSON, scrubbing, writing)",
     (("*", "logging/"), ("*", "bff/logs.py"), ("finish", "bff/access.py"), ("_finish", "bff/access.py"),
      ("start", "bff/access.py"), ("tag_session", "bff/access.py"), ("_session_known", "bff/access.py"),
      ("_note", "bff/access.py"), ("upstream_call", "bff/access.py"))),
    ("urllib3's check that a pooled upstream connection is still open (poll, emulated by gevent)",
     (("is_connection_dropped", "urllib3/"),)),
    ("the rest of the upstream call (urllib3, http.client: request, response)", (("send", "bff/proxy/forward.py"),)),
    ("the session load (redis-py HGETALL, the record's document)",
     (("open_session", "bff/session/interface.py"), ("load_live", "bff/session/core.py"))),
    ("the rest of the proxy view (allowlist, checks, the cached token, the response)",
     (("proxy", "bff/proxy/views.py"),)),
    ("the rest of Flask and werkzeug (request context, routing, response, after_request hooks)",
     (("__call__", "flask/app.py"),)),
    ("gunicorn and gevent outside the app (reading, parsing, writing, the event loop)", (("*", ""),)),
)


class Profile:
    """Samples per stack, and the shares derived from them."""

    def __init__(self, stacks: t.Mapping[tuple[str, ...], int]) -> None:
        self.stacks = stacks
        self.total = sum(stacks.values())

    def self_shares(self) -> Counter[str]:
        """Samples per innermost frame."""
        counts: Counter[str] = Counter()
        for frames, samples in self.stacks.items():
            if frames:
                counts[frames[-1]] += samples
        return counts

    def inclusive_shares(self) -> Counter[str]:
        """Samples per frame, counting a sample once however often the frame is on its stack."""
        counts: Counter[str] = Counter()
        for frames, samples in self.stacks.items():
            for frame in set(frames):
                counts[frame] += samples
        return counts

    def group_shares(self) -> dict[str, int]:
        """Samples per :data:`GROUPS` entry; each sample in the first group it matches."""
        shares = {name: 0 for name, _ in GROUPS}
        for frames, samples in self.stacks.items():
            for name, patterns in GROUPS:
                if any(_matches(frame, patterns) for frame in frames):
                    shares[name] += samples
                    break
        return shares


def _matches(frame: str, patterns: tuple[tuple[str, str], ...]) -> bool:
    match = _FRAME.match(frame)
    if match is None:
        return False
    name = match["function"]
    # py-spy names methods Class.method; a pattern names the method alone.
    return any((function in ("*", name) or name.endswith("." + function)) and path in match["file"]
               for function, path in patterns)


def _function(frame: str) -> str:
    """``name (file)``: the frame without its line number, so that a function is one frame."""
    match = _FRAME.match(frame)
    return frame if match is None else f"{match['function']} ({match['file']})"


def read_profile(path: Path) -> Profile:
    """Read py-spy's raw output by function; process and thread frames (``process 12:...``) are dropped."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(_function(frame) for frame in stack.split(";")
                       if frame and not frame.startswith(("process ", "thread ")))
        stacks[frames] += int(count)
    return Profile(stacks)


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    parts = match["file"].split("/")
    for anchor in ("site-packages", "python3.11", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{match['function']} ({'/'.join(parts)})"


def report(profile: Profile, top: int) -> str:
    total = profile.total or 1
    lines = [f"{profile.total} samples", "", "cost groups (each sample in the first group it matches):"]
    for name, samples in profile.group_shares().items():
        lines.append(f"  {samples / total:6.1%}  {name}")
    lines += ["", f"top {top} functions by self samples:"]
    for frame, samples in profile.self_shares().most_common(top):
        lines.append(f"  {samples / total:6.1%}  {_short(frame)}")
    lines += ["", f"top {top} functions by inclusive samples:"]
    for frame, samples in profile.inclusive_shares().most_common(top):
        lines.append(f"  {samples / total:6.1%}  {_short(frame)}")
    return "\n".join(lines)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("file", type=Path, help="py-spy raw output (collapsed stacks)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    args = parser.parse_args(argv)
    print(report(read_profile(args.file), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
