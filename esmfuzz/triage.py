"""One bug, reported once: the signature of a failure, and the bugs a run already knows.

A deterministic bug fails every target and stratum that reaches it; shrinking each of
those failures costs minutes and says nothing new. A failure whose signature is already
known (saved earlier in the run, or an open corpus case that still fails) is counted as
"seen again" instead, and fuzzing goes on looking for a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from esmfuzz.properties import FAILURE_KINDS, LOGITS, NONDETERMINISTIC, Verdict
from esmfuzz.registry import PROPERTIES

__all__ = ["Claims", "Known", "signature", "size_class"]

_SIZES = (1024, 4096, 16384)
"""Upper token counts of the size classes of an ``out_of_memory`` signature: one ESM-2
context, a few, a crowded pack, more."""


def size_class(tokens: int) -> str:
    """The size class of a call's input of ``tokens`` tokens, in words."""
    low = 1
    for high in _SIZES:
        if tokens <= high:
            return f"inputs of {low}-{high} tokens"
        low = high + 1
    return f"inputs of more than {_SIZES[-1]} tokens"


def signature(verdict: Verdict, checked: Sequence[int]) -> str:
    """What tells one bug from another: the property, the kind of divergence, the output
    it shows in (packed or padded), and which of the ``checked`` layers fail.

    An implementation that runs out of memory is told apart by the size class of its input,
    so that running out on a crowded pack does not hide running out on one sequence; a
    spread between identical calls, by its output alone (which layers it shows in is itself
    random).

    Only the layers every example checks count, so that a failure found while fuzzing
    and its shrunk, explained case (every layer) have the same signature.
    """
    entry = PROPERTIES.get(verdict.property)
    fixed = entry.fixed_bounds if entry is not None else ""
    coarse = False
    if verdict.metric == "out_of_memory":
        tokens = verdict.metrics.get("tokens")
        kind = "out_of_memory" + (f" on {size_class(int(tokens))}" if tokens else "")
    elif verdict.metric in FAILURE_KINDS:
        kind = verdict.metric
    elif verdict.metric == NONDETERMINISTIC:
        kind, coarse = NONDETERMINISTIC, True
    elif not math.isfinite(verdict.value):
        kind = f"non-finite {verdict.metric}"
    elif fixed:
        kind, coarse = fixed, True
    else:
        kind = verdict.metric
    where = verdict.path.split()[0] if verdict.path else ""
    if fixed and not where:  # as before the registry declared it: the padded output, if called
        where = entry.calls[-1]
    text = f"{verdict.property}: {kind}" + (f" in the {where} output" if where else "")
    if coarse:
        return text
    wanted = {*checked, LOGITS}
    failing = [layer for layer in verdict.failing_layers() if layer in wanted]
    return text + (f", failing layers {','.join(map(str, failing))}" if failing else "")


@dataclass
class Known:
    """One distinct failure of a run: where it was first settled and every target that hit it."""

    signature: str
    status: str
    """``new`` (found and saved in this run) or ``still open`` (an open corpus case)."""
    case: str = ""
    pattern: str = ""
    targets: list[str] = field(default_factory=list)
    seen_again: int = 0
    also: list[str] = field(default_factory=list)
    """Signatures of other properties that fail on this failure's case too: the same bug,
    seen through another oracle, folded in here instead of being shrunk again."""

    @property
    def property(self) -> str:
        return self.signature.split(":", 1)[0]

    def fold(self, sig: str, target: str) -> None:
        if sig not in self.also:
            self.also.append(sig)
        self.hit(target)

    def hit(self, target: str) -> None:
        self.seen_again += 1
        if target not in self.targets:
            self.targets.append(target)


class Claims:
    """Signatures claimed by the processes of one run (the xdist workers of one
    ``pytest -n N``): the first process to fail with a signature shrinks and saves it,
    the others count it as seen again, so a bug is shrunk once per run, not once per worker.

    One file per signature in a directory the processes share, created with ``O_EXCL``:
    of two processes claiming at once, exactly one wins. The winner adds the case and
    the per-layer pattern once saved (written atomically); a reader that comes first
    finds them empty, and the controller's summary takes them from the winner's report.
    """

    def __init__(self, directory: Path | str, *, namespace: str = ""):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        """What the claimants fuzz (model, dtype, implementations): a directory shared by
        runs of other set-ups (the corpus's, in a soak) keeps their bugs apart."""

    def _path(self, sig: str) -> Path:
        key = f"{self.namespace}\n{sig}".encode()
        return self.directory / f"{hashlib.sha256(key).hexdigest()[:16]}.json"

    def _mine(self, sig: str, **more) -> str:
        return json.dumps({"signature": sig, "namespace": self.namespace, "pid": os.getpid(),
                           "host": socket.gethostname(), "t": time.time(), **more})

    def claim(self, sig: str) -> bool:
        """True for the one process that claims ``sig`` first."""
        for _ in range(2):
            try:
                fd = os.open(self._path(sig), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._drop_if_stale(sig):
                    return False
                continue
            with os.fdopen(fd, "w") as out:
                out.write(self._mine(sig))
            return True
        return False

    def settle(self, sig: str, *, case: str, pattern: str) -> None:
        path = self._path(sig)
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_text(self._mine(sig, case=case, pattern=pattern))
        os.replace(part, path)

    def _drop_if_stale(self, sig: str) -> bool:
        """A claim that no longer stands is moved aside, by one process only (a rename):
        its claimant died on this host before saving a case, or, on any host, claimed it
        more than :data:`CLAIM_HOURS` ago without saving one; or its case has left the
        corpus or is marked fixed (the bug, found again, is news)."""
        path = self._path(sig)
        data = self.read(sig)
        if not data or not _stale(data):
            return False
        try:
            os.rename(path, path.with_suffix(f".stale.{os.getpid()}.{time.time_ns()}"))
        except OSError:
            return False
        return True

    def settled(self) -> list[dict]:
        """Every claim whose winner has saved its case, in claiming order."""
        found = []
        for path in sorted(self.directory.glob("*.json"), key=_mtime):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("case") and not _stale(data) and (
                data.get("namespace", "") == self.namespace
            ):
                found.append(data)
        return found

    def claimed(self, sig: str) -> bool:
        if not self._path(sig).exists():
            return False
        return not self._drop_if_stale(sig)

    def read(self, sig: str) -> dict:
        """What the winner wrote: ``case`` and ``pattern`` once settled, else nothing."""
        try:
            data = json.loads(self._path(sig).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return math.inf


CLAIM_HOURS = 2.0
"""A claim not settled with a case within this long is stale, whichever host made it: the
structured shrink stops after 300 s, Hypothesis's own within minutes on a GPU; a claimant
on another host may have died, which no process here can see."""


def _stale(data: dict) -> bool:
    case = data.get("case")
    if case:
        try:
            return json.loads(Path(case).read_text()).get("status") == "fixed"
        except (OSError, ValueError, AttributeError):
            return True
    claimed = data.get("t")
    if isinstance(claimed, (int, float)) and time.time() - claimed > CLAIM_HOURS * 3600:
        return True
    if data.get("host") != socket.gethostname() or not isinstance(data.get("pid"), int):
        return False
    try:
        os.kill(data["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
