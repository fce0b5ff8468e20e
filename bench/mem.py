"""Peak memory of one run in a fresh process: `python -m bench.mem {analysis,plain,eager} N [--limit-gb G]`.

Prints one JSON line: seconds, peak_rss_bytes (VmHWM, the whole process: weights, Python and the run),
rss_loaded_bytes (before the run) and status ("ok" or "out of memory"). With --limit-gb the address space
is capped (RLIMIT_AS), so a run that would exhaust the machine fails inside this process instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CASES = ("analysis", "plain", "eager")


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS now, VmHWM peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child
    of a large parent would report the parent's size."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(case: str, n: int, limit_gb: float | None) -> dict[str, object]:
    if limit_gb:
        cap = int(limit_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from app.inspect.engine import runs
    from app.inspect.observe import roles
    from bench import inputs, models  # after the limit, so imports count against it too

    loaded = models.default_model()

    def run(n: int) -> None:
        ids = inputs.token_ids(loaded.tokenizer, n)
        if case == "analysis":
            roles.head_stats(runs.analyse(loaded, "", token_ids=ids), loaded.adapter.layout, thumb=32)
        elif case == "plain":
            models.plain_backbone(loaded, models.input_ids(loaded, ids))
        else:
            models.eager_attentions(loaded, models.input_ids(loaded, ids))

    run(32)  # warm-up: kernels initialised and weights paged in, so the timing below is the run's own
    loaded_rss = _status("VmRSS")
    start = time.perf_counter()
    status = "ok"
    try:
        run(n)
    except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator raises RuntimeError when the cap is hit
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        status = "out of memory"
    return {
        "case": case,
        "n": n,
        "status": status,
        "seconds": time.perf_counter() - start,
        "peak_rss_bytes": peak_rss(),
        "rss_loaded_bytes": loaded_rss,
    }


@dataclass
class Peak:
    """What a child reported, or why it reported nothing."""

    status: str  # "ok", "out of memory", "killed (signal N)", "timed out", "failed: …"
    seconds: float | None = None
    peak_rss: int | None = None
    rss_loaded: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def measure(case: str, n: int, limit_gb: float | None = None, timeout_s: float = 1800) -> Peak:
    """Run one case in a fresh interpreter and read its report."""
    cmd = [sys.executable, "-m", "bench.mem", case, str(n)]
    if limit_gb:
        cmd += ["--limit-gb", str(limit_gb)]
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Peak("timed out")
    if proc.returncode < 0:
        return Peak(f"killed (signal {-proc.returncode})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "memory" in tail.lower() or "bad_alloc" in tail:
            return Peak("out of memory")
        return Peak(f"failed: {tail[:120]}")
    rep = json.loads(lines[-1])
    return Peak(rep["status"], rep["seconds"], rep["peak_rss_bytes"], rep["rss_loaded_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=CASES)
    parser.add_argument("n", type=int, help="tokens")
    parser.add_argument("--limit-gb", type=float, default=None, help="cap the address space (RLIMIT_AS)")
    args = parser.parse_args()
    print(json.dumps(child(args.case, args.n, args.limit_gb)), flush=True)


if __name__ == "__main__":
    main()
