"""esmfuzz's exceptions: one root, and the line between esmfuzz's own failures and findings.

``except EsmfuzzError`` catches every error esmfuzz raises on purpose. Below it,
:class:`HarnessError` is esmfuzz's own computation failing (never blamed on the code under
test), while :class:`esmfuzz.forward.ImplementationFailure` is the code under test failing
(a finding). Input errors (a bad option, model spec, corpus file or layout) keep
``ValueError`` as a second base, so callers that caught that still do.
"""

from __future__ import annotations

__all__ = ["EsmfuzzError", "HarnessError"]


class EsmfuzzError(Exception):
    """The root of esmfuzz's exceptions."""


class HarnessError(EsmfuzzError, RuntimeError):
    """esmfuzz's own computation failed: its oracle, a baseline, a default forward standing
    in for an implementation the user did not give, or its checks. Never a finding against
    the code under test: the example is skipped and counted (:meth:`Harness.check` retried
    it once first, after freeing cached memory). :func:`esmfuzz.harness.harness_error`
    makes one of the exception a role raised.

    ``reason`` groups the skips of a run (``esmfuzz's float64 oracle ran out of memory``);
    ``advice`` says what to do about it; ``details`` hold the traceback.
    """

    def __init__(self, reason: str, cause: str, *, advice: str, details=()):
        super().__init__(f"{reason}: {cause}")
        self.reason = reason
        self.advice = advice
        self.details = list(details)
