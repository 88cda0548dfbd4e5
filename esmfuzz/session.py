"""The fuzz session: check an example, judge and triage its failure, shrink it, save it.

pytest (through :mod:`esmfuzz.plugin`), ``esmfuzz soak`` (pytest processes) and the
false-positive benchmark drive this one loop; it imports no pytest. One :class:`Session`
per process holds the configuration, the corpus and what the run saw (:class:`Record`);
:func:`check_example` is one Hypothesis example of one fuzz target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import time
import unittest
from collections.abc import Callable
from pathlib import Path

from hypothesis import event, seed, target
from hypothesis.control import current_build_context
from hypothesis.database import ExampleDatabase

from esmfuzz.alphabet import residue_count
from esmfuzz.config import Config, dtype_name, hypothesis_settings
from esmfuzz.corpus import Case, CorpusError, load_case, load_corpus, save_case
from esmfuzz.errors import HarnessError
from esmfuzz.harness import Harness, harness_error, harness_for
from esmfuzz.properties import FAILURE_KINDS, NONDETERMINISTIC, Sample, Verdict
from esmfuzz.record import Record
from esmfuzz.registry import PROPERTIES
from esmfuzz.runlog import RunLog
from esmfuzz.tighten import crowded, same_failure, size, tighten, tightened
from esmfuzz.triage import Claims, Known, signature

__all__ = ["Session", "Shrunk", "SliceOver", "Soak", "applies", "check_example", "fuzz",
           "replay_open_case", "save_failure",
           "seeded", "target_id", "unchecked_message", "without_pareto_front"]


class Session(Record):
    """One process's fuzzing: its configuration and profile, the corpus, the bugs it shares
    with the other processes of the run (:class:`~esmfuzz.triage.Claims`), its soak share,
    and the :class:`Record` of what it saw."""

    def __init__(self, config: Config, profile: str):
        super().__init__(profile)
        self.config = config
        self.claims: Claims | None = None
        """Shared with the other processes of the run (xdist workers), if any."""
        self.soak: Soak | None = None
        self.mine: set[str] = set()
        """Signatures this process claimed: it shrinks and saves them."""
        self.run_options: dict[str, object] = {}
        """Options of the run, not of what is tested (``seed``, ``report``, ``database``)."""
        self.settings = hypothesis_settings(profile)
        """Hypothesis settings of every target: the profile's, with ``--esm-database``'s
        database where given (built once: a Redis database is reached when built)."""
        self._corpus: tuple[list[tuple[Path, Case]], list[CorpusError]] | None = None

    @property
    def harness(self) -> Harness:
        return harness_for(self.config)

    def share_claims(self, directory: str | Path) -> None:
        """Claim bugs in ``directory`` with the other processes fuzzing the same set-up."""
        self.claims = Claims(directory, namespace=_namespace(self.config))

    def start_soak(self, soak: Soak | None) -> None:
        self.soak = soak
        self.log = soak.log if soak is not None else None
        if soak is not None and self.settings.database is not None:
            from hypothesis import settings

            self.settings = settings(self.settings,
                                     database=_SliceDatabase(self.settings.database, soak))

    def corpus(self) -> tuple[list[tuple[Path, Case]], list[CorpusError]]:
        if self._corpus is None:
            self._corpus = load_corpus(self.config.corpus)
        return self._corpus

    def claimed_elsewhere(self, sig: str, *, claim: bool) -> bool:
        """True where another process of the run claimed ``sig`` first; it is then known
        here too, and this process does not shrink it again. ``claim``: a target's first
        failure claims its signature; a shrink step only looks (shrinking passes through
        failures it will not save)."""
        if self.claims is None or sig in self.known or sig in self.mine:
            return False
        if claim and self.claims.claim(sig):
            self.mine.add(sig)
            return False
        if not self.claims.claimed(sig):
            return False
        theirs = self.claims.read(sig)
        self.known[sig] = Known(sig, "new", theirs.get("case", ""), theirs.get("pattern", ""))
        return True

    def describe_harness(self) -> None:
        """The summary's header line and notes, from this process's harness (in a worker,
        before its results go to the controller, which loads no model)."""
        try:
            harness = self.harness
            pair = harness.pair
            self.header = (
                f"model {pair.spec.text} on {pair.device}; candidate {dtype_name(pair.dtype)}, "
                f"backend {harness.backend}; {pair.oracle_note}; profile {self.profile}"
            )
            self.notes += [n for n in harness.refusal_notes() + harness.output_notes()
                           if n not in self.notes]
        except Exception as exc:  # the summary must never hide the test results
            self.header = f"(model pair unavailable: {exc})"

    def stopping(self) -> bool:
        return self.soak is not None and self.soak.stopping


def _namespace(config: Config) -> str:
    """What a claim is about: a bug of this model, dtype and implementation."""
    return json.dumps([config.model, dtype_name(config.dtype), dtype_name(config.oracle_dtype),
                       config.packed_impl,
                       config.padded_impl, config.paths, config.thresholds.as_dict()],
                      sort_keys=True)


def save_failure(harness: Harness, prop: str, sample: Sample, verdict: Verdict,
          session: Session, target_name: str, *, status: str = "new") -> str:
    """Save the case and settle its signature; what to add to the failure message. A
    failure to save is said, never raised: it must not replace the finding."""
    sig = signature(verdict, harness.layers)
    case = ""
    if session.log is not None:
        session.log.activity = ""
    try:
        path, created = save_case(harness.case(prop, sample, verdict), harness.config.corpus)
    except (OSError, CorpusError) as exc:
        session.unsaved_errors.append(f"{prop}: {exc}")
        saved = f"could not save: {exc}"
    else:
        if created:
            session.saved.append(path)
        case = str(path)
        saved = f"corpus case: {path}{'' if created else ' (already in the corpus)'}"
    pattern = verdict.layer_pattern()
    session.settle(sig, status=status, case=case, pattern=pattern, target=target_name)
    if session.log is not None:
        session.log.failure({"signature": sig, "case": case, "target": target_name,
                                   "pattern": pattern, "status": status, "t": time.time()})
    if session.claims is not None:
        try:
            session.claims.settle(sig, case=case, pattern=pattern)
        except OSError as exc:
            session.notes.append(f"could not share the case of {sig!r} with the other "
                                  f"workers: {exc}")
    return f"signature: {sig}\n{saved}"


class SliceOver(unittest.SkipTest):
    """Raised from an example to end a soak target's slice: Hypothesis re-raises skip
    exceptions at once, without counting a failure or shrinking."""


class _SliceDatabase(ExampleDatabase):
    """The run's example database, less the example each soak slice ends on.

    Hypothesis saves the example of any exception it re-raises, :class:`SliceOver`'s too,
    and replays every saved example when the target starts again: each slice of every
    process sharing the database would begin by checking again, as new examples, the ones
    the last slices stopped on. Failures and everything else are saved as before.
    """

    def __init__(self, database: ExampleDatabase, soak: Soak):
        super().__init__()
        self._database = database
        self._soak = soak

    def __repr__(self) -> str:
        return repr(self._database)

    def save(self, key: bytes, value: bytes) -> None:
        if self._soak.ending:
            self._soak.ending = False
            return
        self._database.save(key, value)

    def fetch(self, key: bytes):
        yield from self._database.fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        self._database.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self._database.move(src, dest, value)


class Soak:
    """A soak process's share of the run: its time slice per target, its statistics log,
    and a stop asked for by SIGTERM or SIGINT (the example in flight ends, a failure being
    shrunk is saved as small as it got, the statistics are written, the targets pass)."""

    def __init__(self, slice_seconds: float | None, log: RunLog | None):
        self.slice = slice_seconds
        self.log = log
        self.stopping = False
        self.ending = False
        """A :class:`SliceOver` is on its way out: Hypothesis's save of its example is
        dropped (:class:`_SliceDatabase`)."""
        self.target_started = time.monotonic()
        if slice_seconds is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._stop)
        if log is not None:
            log.start()

    @classmethod
    def open(cls, session: Session, *, slice_seconds: float | None, log_path: str | None,
             worker: str, runs_examples: bool) -> Soak | None:
        """A soak share where ``--esm-soak-slice`` or ``--esm-soak-log`` is given; the log
        only in a process that ``runs_examples`` (not an xdist controller)."""
        if slice_seconds is None and log_path is None:
            return None
        log = None
        if log_path and runs_examples:
            import torch

            from esmfuzz.models import resolve_device

            c = session.config
            device = resolve_device(c.device)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
            log = RunLog(log_path.replace("{worker}", worker), worker=worker, describe={
                "model": c.model, "device": f"{device} ({name})", "dtype": dtype_name(c.dtype),
                "packed_impl": c.packed_impl, "padded_impl": c.padded_impl,
                "profile": session.profile})
        return cls(slice_seconds, log)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def begin(self, target: str) -> None:
        self.target_started = time.monotonic()
        self.ending = False
        if self.log is not None:
            self.log.begin(target)

    def over(self) -> bool:
        """The slice is spent, or a stop was asked for."""
        return self.stopping or (
            self.slice is not None and time.monotonic() - self.target_started > self.slice
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.stop()


def stratum_of_layout(sequences) -> str:
    from strategies import stratum_of

    return stratum_of(max(residue_count(s) for s in sequences))


_COUNT_BINS = ((1, "1"), (4, "2-4"), (32, "5-32"), (math.inf, "33+"))


def check_example(
    harness: Harness,
    session: Session,
    prop: str,
    sample: Sample,
    *,
    stratum: str,
) -> Verdict | None:
    """One fuzz example: check, report to Hypothesis, save the final shrunk failure.

    Returns None for an example not checked: a shrink attempt past ``shrink_seconds``
    (Hypothesis sees it pass, so it keeps the smallest failure so far), or one that
    esmfuzz's own computation failed on (skipped and counted, never a finding).
    """
    scope = PROPERTIES[prop].scope(harness.config, stratum)
    target_name = f"{prop}[{stratum}]"
    count = len(sample.sequences)
    event(f"stratum={stratum}")
    event("sequences=" + next(b for n, b in _COUNT_BINS if count <= n))
    final = current_build_context().is_final
    budget = harness.config.shrink_seconds
    row = session.rows.get((prop, stratum))
    shrinking = not final and row is not None and row.get("failed_at") is not None
    stopping = session.stopping()
    if shrinking and (stopping or (budget and time.monotonic() - row["failed_at"] > budget)):
        row["shrink_cut"] = "the soak run was stopped" if stopping else (
            f"--esm-shrink-seconds {budget:g}")
        return None
    if not shrinking and not final and session.soak is not None and session.soak.over():
        session.soak.ending = True
        raise SliceOver("the soak slice is over")
    started = time.perf_counter()
    phases = dict(harness.timings) if harness.timings is not None else None
    try:
        verdict = harness.check(prop, sample, explain=final)
        sig = None if verdict.ok else signature(verdict, harness.layers)
        first = row is None or row["first_failure"] is None
        if sig is not None and shrinking and target_name in session.spreads:
            verdict = _confirmed(harness, prop, sample, verdict, sig)
            sig = None if verdict.ok else sig
        judged = None
        if (sig is not None and not final and first and sig not in session.known
                and verdict.metric not in FAILURE_KINDS):
            verdict, judged = _judged(harness, session, prop, stratum, sample, verdict, sig)
            sig = None if verdict.ok else signature(verdict, harness.layers)
    except HarnessError as failure:
        session.skip(target_name, failure)
        return None
    except Exception as exc:  # esmfuzz's own code, outside the check (never a finding)
        session.skip(target_name, harness_error("esmfuzz's checks", exc))
        return None
    if session.log is not None:
        session.log.timing(target_name, time.perf_counter() - started,
                                 _spent(harness.timings, phases))
    if final and verdict.ok and (prop, stratum) in session.firsts:
        # Shrinking ended on a failure that showed on some calls only: save the first one.
        sample, verdict = session.firsts.pop((prop, stratum))
        verdict.notes.append("saved before shrinking: Hypothesis's smallest failure did not "
                             "fail again (the implementation under test is not "
                             "deterministic); this one failed on every repeated call")
        sig = signature(verdict, harness.layers)
    if sig is not None and not final and first and judged is None:
        same = _same_bug(harness, session, prop, sig, sample)
        if same is not None:
            session.known[sig] = same
    if (
        sig is not None
        and not final  # the final, shrunk failure is always saved: nothing found is lost
        and (sig in session.known or session.claimed_elsewhere(sig, claim=first))
    ):
        # A bug this run already knows: counted, not shrunk again; fuzzing goes on.
        known = session.known[sig]
        if known.signature == sig:
            known.hit(target_name)
        else:
            known.fold(sig, target_name)
        session.record(prop, stratum, sample, verdict, harness.under_test(prop), scope=scope,
                        seen_again=True)
        if session.log is not None:
            session.log.again(known.signature, case=known.case, target=target_name)
        return verdict
    session.record(prop, stratum, sample, verdict, harness.under_test(prop), scope=scope)
    if math.isfinite(verdict.margin) and judged is None:
        target(max(-verdict.margin, -1e6), label=f"{prop} margin")
    if verdict.ok:
        return verdict
    cut = session.rows[(prop, stratum)].get("shrink_cut")
    if cut:
        verdict.notes.append(f"shrinking stopped ({cut}): this case may not be minimal")
    if not final:
        if judged == "finding":
            raise Shrunk(_shrunk_now(harness, session, prop, stratum, sample, verdict, sig,
                                     judge=lambda c: _spread_failure(harness, prop, sig, c)))
        if first and crowded(sample):
            raise Shrunk(_shrunk_now(harness, session, prop, stratum, sample, verdict, sig))
        session.unsaved = (harness, prop, sample, verdict, target_name)
        raise AssertionError(verdict.message())
    session.unsaved = None
    session.firsts.pop((prop, stratum), None)
    if harness.config.shrink_seconds:
        sample, verdict = tightened(harness, prop, sample, verdict, sig)
    saved = save_failure(harness, prop, sample, verdict, session, target_name)
    raise AssertionError(verdict.message() + "\n" + saved)


def _judged(harness: Harness, session: Session, prop: str, stratum: str, sample: Sample,
            verdict: Verdict, sig: str) -> tuple[Verdict, str | None]:
    """A target's first failure, before it is shrunk: the implementation under test called
    on it twice more. Where the calls' outputs are identical, or differ but every call
    fails the same way, the failure stands (None). Where it showed on some calls only, it
    is judged on the calls' spread instead: within the property's noise bound, it is the
    implementation's nondeterminism, not a bug (``noise``: a passing verdict, counted in
    the summary); past it, the spread is the finding (``finding``)."""
    repeat = harness.repeat(prop, sample)
    if repeat.spread is None:
        return verdict, None
    spread = repeat.spread
    calls = len(repeat.verdicts) + 1
    if repeat.reproduced(lambda v: signature(v, harness.layers), sig):
        session.spread(f"{prop}[{stratum}]", repeat, outcome="reproduced")
        session.firsts.setdefault((prop, stratum), (sample, verdict))
        verdict.notes.append(f"the implementation under test is not deterministic (identical "
                             f"calls differ: {spread.brief()}, {spread.path}); this failure "
                             f"showed on every one of {calls} calls")
        return verdict, None
    outcome = "noise" if spread.ok else "finding"
    session.spread(f"{prop}[{stratum}]", repeat, outcome=outcome)
    failing = sum(not v.ok for v in repeat.verdicts) + 1
    spread.notes.insert(0, f"{prop} failed on {failing} of {calls} identical calls "
                           f"({verdict.brief()} first); judged on the calls' spread instead")
    return spread, outcome


def _confirmed(harness: Harness, prop: str, sample: Sample, verdict: Verdict,
               sig: str) -> Verdict:
    """A shrink step's failure, for an implementation seen to be nondeterministic: it stands
    only where a second call fails the same way (else the second call's verdict)."""
    again = harness.check(prop, sample, explain=False)
    return verdict if not again.ok and signature(again, harness.layers) == sig else again


def _spread_failure(harness: Harness, prop: str, sig: str, candidate: Sample) -> Verdict | None:
    """The spread verdict of ``candidate`` where identical calls still disagree past the
    noise bound; None otherwise (a shrink step of a ``nondeterministic`` finding)."""
    try:
        repeat = harness.repeat(prop, candidate)
    except Exception:
        return None
    spread = repeat.spread
    if spread is None or spread.ok or signature(spread, harness.layers) != sig:
        return None
    failing = sum(not v.ok for v in repeat.verdicts)
    spread.notes.insert(0, f"{prop} failed on {failing} of {len(repeat.verdicts)} identical "
                           f"calls; judged on the calls' spread instead")
    return spread


def _spent(now: dict | None, before: dict | None) -> dict:
    """Seconds per kind of forward since ``before`` (with ``$ESMFUZZ_TIMINGS``; with
    ``launches``, operations too: :mod:`esmfuzz.launches`)."""
    if now is None or before is None:
        return {}
    return {kind: now[kind] - before.get(kind, 0.0) for kind in now}


def _same_bug(harness: Harness, session: Session, prop: str, sig: str,
              sample: Sample) -> Known | None:
    """The failure of another property that this failure is the same bug as.

    One bug shows through several oracles (a missing rescale fails ``error_ratio``,
    ``packed_precision`` and ``statistics``). This failure is that bug again when the known
    failure's shrunk case, checked by ``prop``, fails with this very signature, or when this
    failing ``sample``, checked by the known failure's property, fails with the known
    signature; either costs a check or two per known failure instead of a shrink. A case or
    sample that fails otherwise, passes, or cannot run as the other property's sample
    belongs to another bug: this failure is shrunk as new.
    """
    if sig in session.known or (session.claims is not None and session.claims.claimed(sig)):
        return None
    candidates = [k for k in session.distinct() if k.case]
    if session.claims is not None:
        seen = {k.signature for k in candidates}
        candidates += [Known(c["signature"], "new", c["case"], c.get("pattern", ""))
                       for c in session.claims.settled() if c["signature"] not in seen]
    for known in candidates:
        if known.property == prop or known.status.startswith("accepted"):
            continue
        for check, expected in ((lambda k=known: _case_under(harness, prop, k.case), sig),
                                (lambda k=known: harness.check(k.property, sample,
                                                               explain=False),
                                 known.signature)):
            try:
                found = check()
            except Exception:
                continue
            if not found.ok and signature(found, harness.layers) == expected:
                return session.known.setdefault(known.signature, known)
    return None


def _case_under(harness: Harness, prop: str, path: str) -> Verdict:
    case = load_case(path)
    return harness.check(prop, case.sequences, case.extra, explain=False)


STRUCTURED_SECONDS = 300.0
"""Time the structured passes may take on a crowded failure without ``--esm-shrink-seconds``
(measured: well under a minute at 8M on an H200, docs/performance.md)."""


class Shrunk(unittest.SkipTest):
    """Raised from an example once its crowded failure was shrunk and saved: Hypothesis
    re-raises skip exceptions at once, without shrinking again; the target then fails with
    the message."""


def _shrunk_now(harness: Harness, session: Session, prop: str, stratum: str,
                sample: Sample, verdict: Verdict, sig: str,
                judge: Callable[[Sample], Verdict | None] | None = None) -> str:
    """A first failure shrunk by :func:`esmfuzz.tighten.tighten` right away and saved (a
    crowded pack, or a spread between identical calls, which Hypothesis cannot shrink):
    the message the target fails with. ``judge(candidate)`` is the candidate's failing
    verdict with signature ``sig``, else None (default: :func:`same_failure`); candidates
    that raise, pass or fail otherwise are refused. ``--esm-shrink-seconds`` (else
    :data:`STRUCTURED_SECONDS`) or a soak's stop ends the passes, and the smallest failure
    so far is saved."""
    judge = judge or (lambda candidate: same_failure(harness, prop, sig, candidate))
    last = {"verdict": verdict}

    def still_fails(candidate: Sample) -> bool:
        found = judge(candidate)
        if found is not None:
            last["verdict"] = found
        return found is not None

    seconds = harness.config.shrink_seconds or STRUCTURED_SECONDS
    started = time.monotonic()
    smaller, tried = tighten(sample, still_fails, seconds=seconds,
                             stop=lambda: session.stopping())
    spent = time.monotonic() - started
    session.rows[(prop, stratum)]["shrink_calls"] += tried
    try:
        explained = (harness.check(prop, smaller) if verdict.metric != NONDETERMINISTIC
                     else judge(smaller))
    except Exception:
        explained = None
    if explained is None or explained.ok or signature(explained, harness.layers) != sig:
        explained = last["verdict"]
        explained.notes.append("the shrunk case did not fail again when checked once more "
                               "(the implementation under test is not deterministic)")
    explained.notes.append(
        f"shrunk by esmfuzz's structured passes (fewer sequences, merged, shorter, plainer; "
        f"{tried} samples tried in {spent:.0f} s): from {size(sample)} to {size(smaller)}")
    if session.stopping():
        explained.notes.append("shrinking stopped (the soak run was stopped): this case may "
                               "not be minimal")
    elif spent >= seconds:
        cut = (f"--esm-shrink-seconds {seconds:g}" if harness.config.shrink_seconds
               else f"after {seconds:g} s")
        explained.notes.append(f"shrinking stopped ({cut}): this case may not be minimal")
    return explained.message() + "\n" + save_failure(harness, prop, smaller, explained, session,
                                              f"{prop}[{stratum}]")


def replay_open_case(harness: Harness, session: Session, path: Path, case: Case,
                     target_name: str) -> None:
    """An open or accepted corpus case, before its target fuzzes: still failing, its
    signature is known (fuzzing goes on past it); passing, the summary says to mark it
    fixed."""
    try:
        verdict = harness.check_case(case)
    except Exception as exc:  # a case that cannot run must not stop the fuzzing
        session.notes.append(f"open case {path} could not run: {type(exc).__name__}: {exc}")
        return
    if verdict.ok:
        session.notes.append(f"open case {path} now passes: mark it fixed")
        return
    status = f"accepted: {case.reason}" if case.status == "accepted" else "still open"
    session.settle(signature(verdict, harness.layers), status=status, case=str(path),
                    pattern=verdict.layer_pattern(), target=target_name)


def unchecked_message(session: Session, prop: str, stratum: str) -> str | None:
    """Where a target checked no example because esmfuzz's own computation failed on every
    one: the message it fails with, as esmfuzz's error, never as a finding (the run's exit
    status says so too)."""
    name = f"{prop}[{stratum}]"
    skipped = session.skipped_in(name)
    row = session.rows.get((prop, stratum))
    if not skipped or (row is not None and row["examples"]):
        return None
    session.unchecked.append(name)
    why = "; ".join(f"{reason} ({item['advice']}); first: {item['first']}"
                    for reason, item in session.skipped.items() if name in item["targets"])
    return (f"esmfuzz error, not a finding against the code under test: {name} checked "
            f"no example, all {skipped} were skipped because esmfuzz's own computation "
            f"failed: {why}")


def target_id(prop: str, stratum: str) -> str:
    """The key a fuzz target's randomness derives from (Hypothesis's digest): the node id
    the target had when each property was a test function of its own, kept so that the ci
    profile draws the examples it drew then."""
    return f"fuzz/test_properties.py::test_{prop}[{stratum}]"


def seeded(test, nodeid: str, chosen: int | str | None):
    """``test`` (a ``@given`` function) with the randomness of the fuzz target ``nodeid``: the
    profile's (derandomized under ci: from the node id), or seed ``chosen`` mixed with it.
    ``benchmarks/edge_reach.py`` draws what a run draws through this too."""
    test.hypothesis.inner_test._hypothesis_internal_add_digest = nodeid.encode()
    if chosen is None:
        return test
    digest = hashlib.sha256(f"{chosen}:{nodeid}".encode()).digest()
    return seed(int.from_bytes(digest[:8], "big"))(test)


def fuzz(session: Session, prop: str, stratum: str, *, chosen_seed: int | None = None,
         on_example: Callable[[bool, bool], None] = lambda ok, known: None) -> str | None:
    """Fuzz one target: property ``prop`` of :mod:`esmfuzz.registry` in ``stratum``.

    Corpus cases of the property run first, in the target of their length stratum:
    ``fixed`` ones as explicit examples (a regression fails the target), open ones that
    apply to this set-up as known bugs (:func:`replay_open_case`); the strategy's examples
    follow under the session's profile. A failure raises ``AssertionError`` with its
    message; a crowded failure shrunk by esmfuzz's own passes, or a target that checked no
    example, returns the message to fail with (None: passed).
    ``on_example(ok, known)`` follows each example (progress lines).
    """
    from hypothesis import example, given

    harness = session.harness
    entry = PROPERTIES[prop]
    name = f"{prop}[{stratum}]"

    def body(sample):
        try:
            verdict = check_example(harness, session, prop, sample, stratum=stratum)
        except AssertionError:
            on_example(False, False)
            raise
        on_example(True, verdict is not None and not verdict.ok)

    test = given(sample=entry.samples(harness.config, stratum))(body)
    cases, _ = session.corpus()
    for path, case in cases:
        if case.property != prop or not _replays_in(case, entry.strata, stratum):
            continue
        if case.status == "fixed":
            test = example(sample=Sample.from_extra(case.sequences, case.extra))(test)
        elif applies(case, harness.config):
            replay_open_case(harness, session, path, case, name)
    test = session.settings(test)
    test = seeded(test, target_id(prop, stratum), chosen_seed)
    if session.soak is not None:
        session.soak.begin(name)
    try:
        with without_pareto_front():
            test()
    except SliceOver:
        pass
    except Shrunk as done:
        return str(done)
    finally:
        if session.soak is not None:
            session.soak.ending = False
    return unchecked_message(session, prop, stratum)


@contextlib.contextmanager
def without_pareto_front():
    """Hypothesis runs started inside keep no Pareto front of their targeted examples.

    Where a database is set (the soak profile), Hypothesis keeps the front of examples that
    trade ``target()`` score against simplicity, saves each new member to the database and
    replays them all when the target starts again. Each example then costs up to about
    twenty dominance tests, each computing the shortlex key of two examples' every choice
    (a protein sequence's is a big integer built residue by residue): 11-70 ms per example
    of esmfuzz's strategies on a CPU core, against 4-33 without
    (``benchmarks/pareto_cost.py``); and each soak slice began by re-checking the
    previous slices' front (16-70 members per target after a 4-s run, same benchmark).
    esmfuzz saves failures to its corpus and replays them first; the target phase climbs
    from Hypothesis's best example per label, which does not need the front. Runs outside
    (another test of the session) are untouched; a Hypothesis without this internal is
    left as it is.
    """
    try:
        from hypothesis.internal.conjecture import engine
        from hypothesis.internal.conjecture.pareto import ParetoFront
    except ImportError:
        yield
        return
    if getattr(engine, "ParetoFront", None) is not ParetoFront:
        yield
        return

    class EmptyFront(ParetoFront):
        def add(self, data) -> bool:
            return False

    engine.ParetoFront = EmptyFront
    try:
        yield
    finally:
        engine.ParetoFront = ParetoFront


def applies(case: Case, config: Config) -> bool:
    """Whether an open case speaks of this set-up: the same model (the same weights for a
    synthetic one), candidate dtype and implementations. An open case of another set-up
    (the seeded faults esmfuzz is tested on, a colleague's kernel) says nothing here: it
    is not replayed, and no "now passes" note is made of it."""
    from esmfuzz.models import parse_spec

    try:
        same_model = parse_spec(case.model).weights == parse_spec(config.model).weights
    except ValueError:
        return False
    ours = {"packed": config.packed_impl, "padded": config.padded_impl}
    return (same_model and case.dtype == dtype_name(config.dtype)
            and all(case.implementations.get(kind) == impl for kind, impl in ours.items()))


def _replays_in(case: Case, strata, stratum) -> bool:
    """A corpus case runs in one target: its length stratum's, else the property's first."""
    own = stratum_of_layout(case.sequences)
    return stratum == (own if own in strata else strata[0])
