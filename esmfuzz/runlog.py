"""What one process of a soak run records, for the live progress, the statistics JSON
and the HTML report: every example's headline metric, throughput over time, and the
reach of the input space, written atomically every ``every`` seconds.

A process holds one :class:`RunLog`; its file is complete at every instant (written to a
temporary file, then renamed), so a run killed at any moment leaves whole statistics.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path

__all__ = ["RunLog", "bin_of", "REACH_BINS"]

SCHEMA = 1
REACH_BINS = {
    "sequences_per_pack": (1, 2, 4, 8, 16, 32, 64, 128, 256),
    "tokens_per_pack": (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    "sequence_length": (1, 10, 50, 100, 200, 500, 800, 1022),
}
"""Upper edges of the reach histograms; a value goes into the first bin it fits."""

_KEEP = 2000
"""Metric values kept per target (a uniform reservoir): enough for a distribution plot,
a few hundred kB for a night's run."""


def bin_of(value: int, edges) -> str:
    low = 0
    for high in edges:
        if value <= high:
            return f"{low + 1}-{high}" if high > low + 1 else str(high)
        low = high
    return f">{edges[-1]}"


class RunLog:
    """Per process: examples, metric samples, a timeline and reach counts."""

    def __init__(self, path: Path | str, *, worker: str, every: float = 10.0,
                 describe: dict | None = None):
        self.path = Path(path)
        self.worker = worker
        self.every = every
        self.describe = dict(describe or {})
        self.started = time.time()
        self.last_write = 0.0
        self.targets: dict[str, dict] = {}
        self.timeline: list[dict] = []
        self.reach = {name: Counter() for name in REACH_BINS}
        self.residues: Counter = Counter()
        self.layouts = self.with_mask = 0
        self.failures: list[dict] = []
        self.seen_again: dict[str, dict] = {}
        """Known bugs (saved by another process, or open in the corpus) this process failed
        on again, by signature: ``{"case", "targets", "count"}``."""
        self.skipped: dict[str, int] = {}
        self.activity = ""
        """What the process is busy with beyond fuzzing (``shrinking a failure of ...``)."""
        """Examples not checked, by why esmfuzz's own computation failed."""
        self._random = random.Random(0)
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write every ``every`` seconds from a thread, so that one slow example (minutes at
        3B) does not hold the statistics back."""
        self.write()
        self._thread = threading.Thread(target=self._loop, name="esmfuzz-runlog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            self.write()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write()

    def target(self, name: str) -> dict:
        return self.targets.setdefault(name, {
            "examples": 0, "failing": 0, "seen_again": 0, "worst_margin": None, "metric": "",
            "threshold": None, "values": [], "seen": 0, "first": None, "last": None,
            "seconds": 0.0, "mark": None, "residues": 0, "check_seconds": 0.0, "phases": {},
        })

    def begin(self, name: str) -> None:
        """Target ``name`` starts fuzzing: its examples/s counts from here (model loading,
        corpus replay and the other targets' slices are not its time)."""
        with self._lock:
            row = self.target(name)
            row["mark"] = time.time()
            row.setdefault("began", []).append(row["mark"])

    def example(self, name: str, verdict, *, known: bool, sequences=(), variant=()) -> None:
        """One generated example of target ``name`` and its verdict."""
        with self._lock:
            self._example(name, verdict, known, sequences, variant)

    def _example(self, name, verdict, known, sequences, variant) -> None:
        now = time.time()
        row = self.target(name)
        row["examples"] += 1
        row["first"] = row["first"] or now
        row["last"] = now
        if row["mark"] is not None:
            row["seconds"] += now - row["mark"]
        row["mark"] = now
        if verdict is not None:
            row["failing"] += not verdict.ok and not known
            row["seen_again"] += known
            margin = verdict.margin
            if math.isfinite(margin) and (row["worst_margin"] is None
                                          or margin < row["worst_margin"]):
                row["worst_margin"] = margin
            if verdict.metric and math.isfinite(verdict.value):
                row["metric"] = row["metric"] or verdict.metric
                if verdict.metric == row["metric"]:
                    if math.isfinite(verdict.threshold):
                        row["threshold"] = verdict.threshold
                    self._keep(row, verdict.value)
        for layout in (sequences, variant or ()):
            if layout:
                row["residues"] += self._cover(layout)

    def timing(self, name: str, seconds: float, phases: dict) -> None:
        """Time in the property's check (every call, shrinking too), and of it, seconds per
        kind of forward where they are timed: what is left of a target's time went to
        generating examples and to Hypothesis."""
        with self._lock:
            row = self.target(name)
            row["check_seconds"] += seconds
            for kind, spent in phases.items():
                row["phases"][kind] = row["phases"].get(kind, 0.0) + spent

    def _keep(self, row: dict, value: float) -> None:
        row["seen"] += 1
        values = row["values"]
        if len(values) < _KEEP:
            values.append(value)
        else:
            slot = self._random.randrange(row["seen"])
            if slot < _KEEP:
                values[slot] = value

    def _cover(self, layout) -> int:
        """Counts ``layout`` into the reach histograms; returns its residues."""
        from esmfuzz.alphabet import MASK, RARE_RESIDUES, layout_residues

        lengths, residues = layout_residues(layout)
        self.layouts += 1
        self.reach["sequences_per_pack"][bin_of(len(lengths),
                                                   REACH_BINS["sequences_per_pack"])] += 1
        tokens = sum(lengths) + 2 * len(lengths)
        self.reach["tokens_per_pack"][bin_of(tokens, REACH_BINS["tokens_per_pack"])] += 1
        for length in lengths:
            self.reach["sequence_length"][bin_of(length,
                                                    REACH_BINS["sequence_length"])] += 1
        self.with_mask += MASK in residues
        self.residues.update(r for r in residues if r in RARE_RESIDUES or r == MASK)
        return sum(lengths)

    def skip(self, name: str, reason: str) -> None:
        """An example of target ``name`` not checked: esmfuzz's own computation failed."""
        with self._lock:
            row = self.target(name)
            row["skipped"] = row.get("skipped", 0) + 1
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def again(self, signature: str, *, case: str, target: str) -> None:
        """A failure with a known bug's signature: a failure of this run too."""
        with self._lock:
            item = self.seen_again.setdefault(signature, {"case": case, "targets": [],
                                                          "count": 0})
            item["count"] += 1
            item["case"] = item["case"] or case
            if target not in item["targets"]:
                item["targets"].append(target)

    def failure(self, entry: dict) -> None:
        with self._lock:
            self.failures.append(entry)
        self.write()

    def snapshot(self) -> dict:
        return {
            "t": time.time(),
            "examples": {k: v["examples"] for k, v in self.targets.items()},
            "worst_margin": {k: v["worst_margin"] for k, v in self.targets.items()},
        }

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "worker": self.worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            **self.describe,
            "targets": self.targets,
            "timeline": self.timeline,
            "reach": {
                **{k: dict(v) for k, v in self.reach.items()},
                "rare_and_mask_residues": dict(self.residues),
                "layouts": self.layouts,
                "layouts_with_mask": self.with_mask,
            },
            "failures": self.failures,
            "seen_again": self.seen_again,
            "skipped": self.skipped,
            "activity": self.activity,
        }

    def write(self) -> None:
        """The whole log, atomically; a failure to write is kept for the next try."""
        with self._lock:
            self.last_write = time.time()
            self.timeline.append(self.snapshot())
            data = json.dumps(self.as_dict(), sort_keys=True)
        part = self.path.with_name(
            f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part.write_text(data)
            os.replace(part, self.path)
        except OSError:
            pass

