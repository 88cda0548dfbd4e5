"""What a fuzzing process saw, per property and stratum: the statistics behind the summary.

:class:`Record` is the bookkeeping half of a session (:mod:`esmfuzz.session` does the
checking): rows of examples, failures and edges hit per target, how far the inputs
reached, distinct failures, skipped examples, nondeterminism. It is plain data, exported
as JSON for the pytest summary, ``--esm-report`` and an xdist controller.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from esmfuzz import edges
from esmfuzz.edges import Scope
from esmfuzz.properties import Sample, Verdict
from esmfuzz.triage import Known

if TYPE_CHECKING:
    from esmfuzz.errors import HarnessError
    from esmfuzz.harness import Repeat
    from esmfuzz.runlog import RunLog

__all__ = ["Reach", "Record"]


class Record:
    """What one fuzzing process saw: statistics per property and stratum, the distinct
    failures, saved cases, skipped examples and nondeterminism. JSON-ready through
    :meth:`export`, so an xdist controller can :meth:`merge` its workers' records."""

    def __init__(self, profile: str):
        self.profile = profile
        self.rows: dict[tuple[str, str], dict] = {}
        self.reach = Reach()
        self.saved: list[Path] = []
        self.unsaved: tuple | None = None
        """The latest failing example not yet in the corpus: saved if the test ends failed
        without a final (shrunk, reproduced) example, as with a flaky implementation."""
        self.unsaved_errors: list[str] = []
        """Failures that could not be written to the corpus, and why."""
        self.header = ""
        self.notes: list[str] = []
        self.known: dict[str, Known] = {}
        """Distinct failures by signature: found and saved in this run, or open corpus
        cases that still fail. A later failure with one of these signatures is counted
        as seen again, not shrunk again."""
        self.log: RunLog | None = None
        """A soak process's statistics log, written as examples run."""
        self.skipped: dict[str, dict] = {}
        """Examples skipped because esmfuzz's own computation failed, by reason:
        ``{"advice": ..., "first": message, "targets": {target: count}}``."""
        self.unchecked: list[str] = []
        """Targets every example of which was skipped: the run fails as esmfuzz's error."""
        self.spreads: dict[str, dict] = {}
        """Per target where identical calls of the implementation under test gave different
        outputs: the worst spread measured, its bound, and how the failures it explained
        were judged."""
        self.firsts: dict[tuple[str, str], tuple[Sample, Verdict]] = {}
        """Per target, its first failure where it showed on every one of repeated calls of a
        nondeterministic implementation: saved should shrinking end on one that does not."""

    def distinct(self) -> list[Known]:
        """Each distinct failure once (a signature folded into another's maps to it)."""
        out: dict[int, Known] = {}
        for known in self.known.values():
            out.setdefault(id(known), known)
        return list(out.values())

    def skip(self, target: str, failure: HarnessError) -> None:
        """One example not checked: esmfuzz's own computation failed (never a finding)."""
        item = self.skipped.setdefault(failure.reason, {"advice": failure.advice,
                                                        "first": str(failure), "targets": {}})
        item["targets"][target] = item["targets"].get(target, 0) + 1
        if self.log is not None:
            self.log.skip(target, failure.reason)

    def skipped_in(self, target: str) -> int:
        return sum(item["targets"].get(target, 0) for item in self.skipped.values())

    def spread(self, target: str, repeat: Repeat, *, outcome: str) -> None:
        """A nondeterministic implementation, measured on a failure of ``target``; ``outcome``
        says how that failure was judged (``reproduced``, ``noise``, ``finding``)."""
        spread = repeat.spread
        item = self.spreads.setdefault(target, {"worst": None, "bound": spread.threshold,
                                                "where": "", "reproduced": 0, "noise": 0,
                                                "finding": 0, "calls": len(repeat.verdicts)})
        if item["worst"] is None or spread.value > item["worst"]:
            layer = spread.worst.get("layer")
            item["worst"] = _json_float(spread.value)
            item["where"] = spread.path + (f", layer {layer}" if layer is not None else "")
        item[outcome] += 1

    def settle(self, sig: str, *, status: str, case: str, pattern: str, target: str) -> None:
        known = self.known.setdefault(sig, Known(sig, status, case, pattern))
        if target not in known.targets:
            known.targets.append(target)

    def record(self, prop: str, stratum: str, sample: Sample, verdict: Verdict,
               under_test: list[str], *, scope: Scope, seen_again: bool = False) -> None:
        row = self.rows.setdefault(
            (prop, stratum),
            {"examples": 0, "failures": 0, "first_failure": None, "worst": None,
             "under_test": under_test, "shrink_calls": 0, "seen_again": 0,
             "edges": dict.fromkeys(edges.reachable(scope), 0)},
        )
        shrinking = not seen_again and row["first_failure"] is not None
        if not shrinking:
            for edge in edges.hits((sample.sequences, sample.variant), scope):
                row["edges"][edge] += 1
        if seen_again:
            row["examples"] += 1
            row["seen_again"] += 1
        elif shrinking:
            row["shrink_calls"] += 1  # after the first failure, Hypothesis is shrinking it
        else:
            row["examples"] += 1
            row["failures"] += not verdict.ok
            if not verdict.ok:
                row["first_failure"] = row["examples"]
                row["failed_at"] = time.monotonic()
                if self.log is not None:
                    self.log.activity = f"shrinking a failure of {prop}[{stratum}]"
        if self.log is not None and not shrinking:
            self.log.example(f"{prop}[{stratum}]", verdict, known=seen_again,
                                  sequences=sample.sequences, variant=sample.variant)
        # A known bug seen again is listed under "distinct failures", not as this row's worst.
        if row["worst"] is None or (not seen_again and verdict.margin < row["worst"].margin):
            row["worst"] = verdict
        self.reach.add(sample)

    def export(self) -> dict:
        """Everything the summary needs, as JSON-ready data: what an xdist worker sends to
        the controller (:meth:`merge`)."""
        return {
            "rows": [
                {"key": list(key), **row, "worst": dataclasses.asdict(row["worst"])}
                for key, row in self.rows.items()
            ],
            "reach": self.reach.as_dict(),
            "saved": [str(p) for p in self.saved],
            "unsaved_errors": self.unsaved_errors,
            "header": self.header,
            "notes": self.notes,
            "known": [dataclasses.asdict(k) for k in self.distinct()],
            "skipped": self.skipped,
            "unchecked": self.unchecked,
            "spreads": self.spreads,
        }

    def merge(self, data: dict) -> None:
        """Add a worker's :meth:`export` to this (the controller's) recorder."""
        for item in data["rows"]:
            item = dict(item)
            key = tuple(item.pop("key"))
            worst = Verdict(**item.pop("worst"))
            row = self.rows.get(key)
            if row is None:
                self.rows[key] = {**item, "worst": worst}
                continue
            row["examples"] += item["examples"]
            row["failures"] += item["failures"]
            row["shrink_calls"] += item["shrink_calls"]
            row["seen_again"] += item["seen_again"]
            for edge, count in item["edges"].items():
                row["edges"][edge] = row["edges"].get(edge, 0) + count
            firsts = [x for x in (row["first_failure"], item["first_failure"]) if x is not None]
            row["first_failure"] = min(firsts) if firsts else None
            if worst.margin < row["worst"].margin:
                row["worst"] = worst
        self.reach.merge(data["reach"])
        self.saved += [Path(p) for p in data["saved"]]
        self.unsaved_errors += data["unsaved_errors"]
        self.header = self.header or data["header"]
        for item in data["known"]:
            mine = self.known.setdefault(item["signature"], Known(**{
                **item, "targets": [], "seen_again": 0, "also": []}))
            mine.seen_again += item["seen_again"]
            mine.case, mine.pattern = mine.case or item["case"], mine.pattern or item["pattern"]
            mine.targets += [t for t in item["targets"] if t not in mine.targets]
            for sig in item["also"]:
                if sig not in mine.also:
                    mine.also.append(sig)
                self.known.setdefault(sig, mine)
        self.notes += [n for n in data["notes"] if n not in self.notes]
        for reason, item in data["skipped"].items():
            mine = self.skipped.setdefault(reason, {**item, "targets": {}})
            for name, count in item["targets"].items():
                mine["targets"][name] = mine["targets"].get(name, 0) + count
        self.unchecked += data["unchecked"]
        for name, item in data["spreads"].items():
            mine = self.spreads.get(name)
            if mine is None:
                self.spreads[name] = dict(item)
                continue
            for key in ("reproduced", "noise", "finding"):
                mine[key] += item[key]
            if float(item["worst"]) > float(mine["worst"]):
                mine["worst"], mine["where"] = item["worst"], item["where"]

    def report(self) -> dict:
        """What ran, per property and stratum, as JSON-ready data (``--esm-report``)."""
        rows = []
        for (prop, stratum), row in sorted(self.rows.items()):
            worst: Verdict = row["worst"]
            rows.append(
                {
                    "property": prop,
                    "stratum": stratum,
                    "examples": row["examples"],
                    "failures": row["failures"],
                    "first_failure": row["first_failure"],
                    "shrink_calls": row["shrink_calls"],
                    "seen_again": row["seen_again"],
                    "metric": worst.metric,
                    "value": _json_float(worst.value),
                    "threshold": _json_float(worst.threshold),
                    "margin": _json_float(worst.margin),
                    "layer": worst.worst.get("layer"),
                    "path": worst.path,
                    "under_test": row["under_test"],
                    "edges": row["edges"],
                    "edges_never_hit": [e for e, n in row["edges"].items() if not n],
                    "skipped": self.skipped_in(f"{prop}[{stratum}]"),
                }
            )
        return {"profile": self.profile, "rows": rows, "saved": [str(p) for p in self.saved],
                "reach": self.reach.as_dict(),
                "failures": [dataclasses.asdict(k) for k in self.distinct()],
                "skipped": self.skipped, "unchecked": self.unchecked,
                "nondeterministic": self.spreads}


class Reach:
    """How far into the input space the examples of a run went."""

    def __init__(self):
        self.sequences = self.tokens = self.longest = self.masks = 0
        self.rare: set[str] = set()

    def add(self, sample: Sample) -> None:
        from esmfuzz.alphabet import MASK, RARE_RESIDUES, layout_residues

        for layout in (sample.sequences, sample.variant or ()):
            if not layout:
                continue
            lengths, residues = layout_residues(layout)
            self.sequences = max(self.sequences, len(layout))
            self.tokens = max(self.tokens, sum(lengths) + 2 * len(lengths))
            self.longest = max(self.longest, max(lengths))
            self.masks += MASK in residues
            self.rare |= set(residues) & set(RARE_RESIDUES)

    def merge(self, data: dict) -> None:
        self.sequences = max(self.sequences, data["max_sequences_per_pack"])
        self.tokens = max(self.tokens, data["max_tokens_per_pack"])
        self.longest = max(self.longest, data["longest_sequence"])
        self.rare |= set(data["rare_residues_seen"])
        self.masks += data["layouts_with_mask"]

    def as_dict(self) -> dict:
        return {"max_sequences_per_pack": self.sequences, "max_tokens_per_pack": self.tokens,
                "longest_sequence": self.longest, "rare_residues_seen": sorted(self.rare),
                "layouts_with_mask": self.masks}

    def describe(self) -> str:
        return (f"reach: up to {self.sequences} sequences and {self.tokens} tokens per pack, "
                f"longest sequence {self.longest} residues; rare residues seen: "
                f"{' '.join(sorted(self.rare)) or 'none'}; <mask> in {self.masks} layouts")


def _json_float(value: float) -> float | str:
    return value if value == value and abs(value) != float("inf") else str(value)
