"""Rows of the results table, the machine they came from, and the markdown written to the terminal and RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parents[1]


@dataclass
class Row:
    """One line of the table: a measured figure, its baseline from the same run, and the target."""

    what: str
    measured: str
    baseline: str = "—"
    ratio: float | None = None
    target: str = "—"
    passed: bool | None = None  # None: no target (reference row)
    beside: str = ""  # a second baseline printed beside (e.g. eager + output_attentions)
    other_load: float | None = None  # share of the CPUs other processes used while this row was measured


def seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def nbytes(b: float | None) -> str:
    """Decimal units (1 MB = 10⁶ B), the stricter reading of the issue's MB/GB targets."""
    if b is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b:.0f} B"


def ratio(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:.3f}×" if r < 0.1 else f"{r:.2f}×"


def verdict(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "—"}[passed]


def table(rows: list[Row]) -> str:
    lines = [
        "| what | measured | baseline (same run) | ratio | target | result | also measured | other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = "—" if r.other_load is None else f"{r.other_load:.0%}"
        cells = [r.what, r.measured, r.baseline, ratio(r.ratio), r.target, verdict(r.passed), r.beside, load]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return nbytes(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return "?"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "?"
    return head.stdout.strip() + (" (app/ modified)" if dirty.stdout.strip() else "")


def machine(device: torch.device) -> dict[str, str]:
    """What the numbers depend on."""
    info = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, torch threads {torch.get_num_threads()}",
        "ram": _ram(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "commit": _commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def section(title: str, info: dict[str, str], rows: list[Row], notes: list[str]) -> str:
    """One `## title` block: machine, table, notes."""
    head = [f"## {title}", "", "; ".join(f"**{k}** {v}" for k, v in info.items()), "", table(rows), ""]
    return "\n".join(head + [f"- {n}" for n in notes] + [""])


def write(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace the `## title` section of RESULTS.md (or append it), keeping the other sections."""
    preamble = (
        "# HeadScope benchmark results\n\n"
        "Written by `python -m bench` (`make bench`); each section is the latest run of one configuration.\n"
        "Ratios divide two figures measured in the same run. Regenerate, do not edit by hand.\n"
    )
    sections: dict[str, str] = {}
    if path.exists():
        current: str | None = None
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("## "):
                current = line[3:].strip()
                sections[current] = ""
            if current is not None:
                sections[current] += line
    sections[title] = body
    path.write_text(preamble + "\n" + "\n".join(s.rstrip() + "\n" for s in sections.values()))
