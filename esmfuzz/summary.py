"""The run's summary: a table per property and stratum, reach, edges, skipped examples,
nondeterminism, distinct failures and saved cases, written at the end of a pytest run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esmfuzz.properties import Verdict
    from esmfuzz.session import Session

__all__ = ["write_summary"]


def write_summary(tr, session: Session, *, report: str | None) -> None:
    """The ``esmfuzz summary`` section, written through pytest's terminal reporter ``tr``
    (``write_line`` and ``section``); the JSON report to ``report`` where given."""
    tr.section("esmfuzz summary")
    if not session.header:
        session.describe_harness()
    tr.write_line(session.header)
    header = (f"{'property':<20}{'stratum':<11}{'examples':>9}{'fail':>6}  "
              f"{'worst metric (path, layer)':<58}under test")
    tr.write_line(header)
    tr.write_line("-" * len(header))
    unexercised = []
    for (prop, stratum), row in sorted(session.rows.items()):
        worst: Verdict = row["worst"]
        where = ", ".join(
            x for x in (worst.path, f"layer {worst.worst.get('layer')}"
                        if worst.worst.get("layer") is not None else "") if x
        )
        detail = _clip(worst.brief() + (f" ({where})" if where else ""), 57)
        tested = "; ".join(row["under_test"]) or "none: esmfuzz defaults only"
        if row["seen_again"]:
            tested += f"  [+{row['seen_again']} failing with a known signature]"
        if not row["under_test"]:
            unexercised.append(f"{prop}[{stratum}]")
        tr.write_line(f"{prop:<20}{stratum:<11}{row['examples']:>9}{row['failures']:>6}  "
                      f"{detail:<58}{tested}")
    tr.write_line(session.reach.describe())
    _write_edges(tr, session.rows)
    _write_skipped(tr, session)
    _write_spreads(tr, session)
    if session.known:
        distinct = session.distinct()
        tr.write_line(f"distinct failures: {len(distinct)}", red=True)
        for known in distinct:
            again = f"; seen again {known.seen_again} times" if known.seen_again else ""
            also = f"; also seen as {'; '.join(known.also)}" if known.also else ""
            tr.write_line(
                f"  [{known.status}] {known.signature}"
                f"{': ' + known.pattern if known.pattern else ''}{also}; targets "
                f"{', '.join(known.targets)}{again}; case {known.case or '-'}",
                red=known.status == "new",
                yellow=known.status != "new",
            )
    if unexercised and len(unexercised) < len(session.rows):
        tr.write_line(
            f"{len(session.rows) - len(unexercised)} of {len(session.rows)} targets called "
            f"an implementation under test; the others ran only esmfuzz's default forwards "
            f"(their passes say nothing about your code): {', '.join(unexercised)}",
            yellow=True,
        )
    for note in session.notes:
        tr.write_line(f"note: {note}", yellow=True)
    _, errors = session.corpus()
    for error in errors:
        tr.write_line(f"corpus error: {error}", red=True)
    for path in session.saved:
        tr.write_line(f"saved corpus case: {path}", yellow=True)
    for error in session.unsaved_errors:
        tr.write_line(f"could not save: {error}", red=True)
    if report:
        try:
            Path(report).write_text(json.dumps(session.report(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            tr.write_line(f"could not write --esm-report: {exc}", red=True)


def _write_edges(tr, rows: dict) -> None:
    """Per target, the edges its checked examples hit, and those they never hit."""
    tr.write_line("edges hit, in examples checked (esmfuzz.edges; shrink steps not counted):")
    never = 0
    for (prop, stratum), row in sorted(rows.items()):
        hit = [f"{edge}: {n}" for edge, n in row["edges"].items() if n]
        missed = [edge for edge, n in row["edges"].items() if not n]
        never += len(missed)
        line = f"  {prop}[{stratum}]: " + ("; ".join(hit) or "no edge")
        if missed:
            line += f"; never hit: {', '.join(missed)}"
        tr.write_line(line, yellow=bool(missed))
    if never:
        tr.write_line(f"{never} edge(s) reachable by a target were never hit by it: run more "
                      "examples (--esm-profile dev, or a soak) to reach them", yellow=True)




def _write_skipped(tr, session: Session) -> None:
    """Examples esmfuzz did not check because its own computation failed, by why."""
    for reason, item in session.skipped.items():
        total = sum(item["targets"].values())
        where = ", ".join(f"{t}: {n}" for t, n in sorted(item["targets"].items()))
        tr.write_line(f"{total} example{'s' * (total != 1)} skipped: {reason}; "
                      f"{item['advice']} ({where}); first: {_clip(item['first'], 300)}",
                      red=True)
    for name in session.unchecked:
        tr.write_line(f"esmfuzz error: {name} checked no example (every one was skipped); "
                      f"this is not a finding against the code under test", red=True)




def _write_spreads(tr, session: Session) -> None:
    """Where identical calls of the implementation under test gave different outputs."""
    for name, item in sorted(session.spreads.items()):
        judged = []
        if item["reproduced"]:
            judged.append(f"{item['reproduced']} failed on every call and stand")
        if item["noise"]:
            judged.append(f"{item['noise']} failed on some calls only, within the noise "
                          f"bound: not findings")
        if item["finding"]:
            judged.append(f"{item['finding']} spread past the bound: finding "
                          f"'nondeterministic'")
        tr.write_line(
            f"nondeterministic: {name}: identical calls of the implementation under test "
            f"give different outputs, spread up to {float(item['worst']):.3g} against "
            f"bound {item['bound']:g} ({item['where']}); of the failures judged on "
            f"{item['calls'] + 1} calls: {'; '.join(judged)}",
            red=bool(item["finding"]), yellow=not item["finding"],
        )




def _clip(text: str, most: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."
