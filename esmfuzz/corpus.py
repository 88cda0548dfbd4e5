"""The durable corpus of shrunk failing cases.

A failing property, once Hypothesis has shrunk it, is written to
``<root>/<property>/<id>.json``. The id is a short hash of the case's canonical
content (property, sequences, model, dtype, backend, implementations, thresholds,
extra), so the same failing input found twice maps to the same file; what was
observed (metrics, worst position, environment, date, message) and the ``status``
are deliberately left out of the hash.

File format decisions:

* Strict JSON: ``NaN`` and ``Infinity`` literals are neither written nor accepted.
  Non-finite values in ``metrics`` and ``thresholds`` are stored as the strings
  ``"inf"``, ``"-inf"`` and ``"nan"`` and read back as floats; every other number in
  those two mappings is stored as a JSON number (an int is stored as a float).
  ``extra`` and ``environment`` hold plain JSON values and must be finite.
* In memory every NaN in ``metrics``/``thresholds`` is the same float object, so two
  cases that both observed NaN compare equal.
* Keys are sorted, indent is 2, the file ends with a newline; ``schema_version``,
  ``id`` and ``cu_seqlens`` are written for readers, and checked against the content
  when a file is loaded, so a hand edit of the hashed fields is reported (with the
  id the edited content would have) rather than silently replayed under a stale
  name. Editing ``status`` (or the other unhashed fields) by hand is fine.

Writers never clobber: a case is written to a dot-prefixed temporary file in the
target directory, fsynced, then hard-linked to its final name, which fails if the
name exists; only where the filesystem has no hard links does it fall back to a
check followed by :func:`os.replace`. Readers never see a half-written file under a
final name, and :func:`load_corpus` ignores dot-files.

This module imports no torch; :func:`environment` imports it lazily.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from esmfuzz.alphabet import InvalidSequence, residue_count, validate_sequence
from esmfuzz.errors import EsmfuzzError

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "Case",
    "CorpusError",
    "environment",
    "load_case",
    "load_corpus",
    "save_case",
    "set_status",
]

SCHEMA_VERSION = 1
STATUSES = ("open", "fixed", "accepted")

_PROPERTY = re.compile(r"[a-z0-9_]+")
_IMPLEMENTATION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_DTYPES = ("float16", "bfloat16", "float32", "float64")
_WORST_KEYS = ("layer", "sequence", "token")
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_NAN = math.nan  # the one NaN object used in metrics/thresholds (see module docstring)
_HASHED = (
    "property", "sequences", "model", "dtype", "backend", "implementations", "thresholds",
    "extra",
)
_REQUIRED = (
    "schema_version", "property", "sequences", "model", "dtype", "backend",
    "implementations", "thresholds", "status",
)
_OPTIONAL = (
    "id", "cu_seqlens", "metrics", "worst", "extra", "environment", "created", "message",
    "reason",
)
# errno values meaning "this filesystem cannot make hard links" (not "permission denied")
_NO_LINK_ERRNOS = {
    getattr(errno, name)
    for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS")
    if hasattr(errno, name)
}


class CorpusError(EsmfuzzError, ValueError):
    """A corpus file or case that cannot be used; the message names the file and field."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


@dataclass(frozen=True)
class Case:
    """One shrunk failing example. Construct with keyword arguments; validated on creation.

    Mappings are deep-copied on construction (the caller's dicts are never shared),
    ``sequences`` becomes a tuple, metric and threshold values become floats.
    """

    property: str
    sequences: tuple[str, ...]
    model: str
    dtype: str
    backend: str
    implementations: dict[str, str]
    thresholds: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    worst: dict[str, int | None] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    status: str = "open"
    environment: dict[str, object] = field(default_factory=dict)
    created: str = ""
    message: str = ""
    reason: str = ""
    """Why an ``accepted`` divergence is accepted (``esmfuzz known``)."""

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in _normalise(values, "Case").items():
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:  # equal cases have equal ids; dict fields are unhashable
        return hash(self.id)

    @property
    def cu_seqlens(self) -> list[int]:
        """Packed layout boundaries: each sequence takes its residues plus ``<cls>``/``<eos>``."""
        bounds = [0]
        for sequence in self.sequences:
            bounds.append(bounds[-1] + residue_count(sequence) + 2)
        return bounds

    @property
    def id(self) -> str:
        """First 16 hex digits of the sha256 of the canonical hashed content."""
        content = {
            "property": self.property,
            "sequences": list(self.sequences),
            "model": self.model,
            "dtype": self.dtype,
            "backend": self.backend,
            "implementations": self.implementations,
            "thresholds": _encode_numbers(self.thresholds),
            "extra": self.extra,
        }
        canonical = json.dumps(
            content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, object]:
        """The JSON-ready mapping written to disk (non-finite numbers as strings)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "property": self.property,
            "sequences": list(self.sequences),
            "cu_seqlens": self.cu_seqlens,
            "model": self.model,
            "dtype": self.dtype,
            "backend": self.backend,
            "implementations": dict(self.implementations),
            "thresholds": _encode_numbers(self.thresholds),
            "metrics": _encode_numbers(self.metrics),
            "worst": dict(self.worst),
            "extra": json.loads(json.dumps(self.extra)),
            "status": self.status,
            "environment": json.loads(json.dumps(self.environment)),
            "created": self.created,
            "message": self.message,
            **({"reason": self.reason} if self.reason else {}),
        }

    def to_json(self) -> str:
        """Readable strict JSON: sorted keys, indent 2, trailing newline."""
        return (
            json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False,
                       allow_nan=False)
            + "\n"
        )

    @classmethod
    def from_dict(cls, d: object, *, source: str = "<dict>") -> Case:
        """Validate a mapping read from a corpus file and build the case.

        Raises :class:`CorpusError` ``"{source}: {field}: {what is wrong}"``.
        """
        if not isinstance(d, Mapping):
            raise CorpusError(f"{source}: <top level>: expected a JSON object, got "
                              f"{_type_name(d)}")
        if "schema_version" not in d:
            raise CorpusError(f"{source}: schema_version: missing field")
        version = d["schema_version"]
        if not _is_int(version):
            raise CorpusError(f"{source}: schema_version: expected an integer, got "
                              f"{_type_name(version)}")
        if version > SCHEMA_VERSION:
            raise CorpusError(
                f"{source}: schema_version: {version} is newer than the newest version this "
                f"esmfuzz reads ({SCHEMA_VERSION}); upgrade esmfuzz"
            )
        if version < 1:
            raise CorpusError(f"{source}: schema_version: unknown version {version}")
        unknown = sorted(str(k) for k in d if k not in _REQUIRED and k not in _OPTIONAL)
        if unknown:
            raise CorpusError(f"{source}: {unknown[0]}: unknown field "
                              f"(schema version {SCHEMA_VERSION} has no such field)")
        for name in _REQUIRED:
            if name not in d:
                raise CorpusError(f"{source}: {name}: missing field")

        values = {name: d[name] for name in _REQUIRED + _OPTIONAL if name in d}
        values.pop("schema_version")
        stored_id = values.pop("id", None)
        stored_bounds = values.pop("cu_seqlens", None)
        case = cls(**_normalise(values, source))

        if "cu_seqlens" in d and stored_bounds != case.cu_seqlens:
            raise CorpusError(
                f"{source}: cu_seqlens: stored {stored_bounds!r} does not match the sequences, "
                f"which give {case.cu_seqlens!r}"
            )
        if "id" in d:
            if not isinstance(stored_id, str):
                raise CorpusError(f"{source}: id: expected a string, got "
                                  f"{_type_name(stored_id)}")
            if stored_id != case.id:
                raise CorpusError(
                    f"{source}: id: stored id {stored_id!r} does not match the content hash "
                    f"{case.id!r}; the hashed fields ({', '.join(_HASHED)}) were edited by "
                    f"hand. If the edit is intended, set \"id\" to {case.id!r} and rename the "
                    f"file to {case.id}.json"
                )
        return case


def save_case(case: Case, root: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Write ``case`` to ``root/<property>/<id>.json`` unless a case of that id exists.

    Returns ``(path, created)``. An existing file is left untouched (its status,
    created date and observations are kept) and ``created`` is False. An empty
    ``case.created`` is filled in with the current UTC time. Safe against concurrent
    writers of the same or different ids, in threads or processes.
    """
    if not isinstance(case, Case):
        raise TypeError(f"save_case needs a Case, got {_type_name(case)}")
    directory = Path(root) / case.property
    final = directory / f"{case.id}.json"
    if final.is_file():
        return final, False
    if not case.created:
        case = dataclasses.replace(case, created=_now())
    data = case.to_json().encode("utf-8")
    directory.mkdir(parents=True, exist_ok=True)

    tmp_name = _write_temp(directory, data)
    try:
        try:
            os.link(tmp_name, final)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            # No hard links here: check, then rename. Only same-id writers can race in
            # the gap, and they write the same hashed content.
            if final.exists():
                created = False
            else:
                os.replace(tmp_name, final)
                created = True
    finally:
        _unlink_quietly(tmp_name)
    if not created and not final.is_file():
        raise CorpusError(f"{final}: exists but is not a regular file", path=final)
    if created:
        _fsync_directory(directory)
    return final, created


def load_case(path: str | os.PathLike[str]) -> Case:
    """Read and validate one corpus file; :class:`CorpusError` names the file and field."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{source}: <file>: cannot read: {exc}", path=path) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise CorpusError(f"{source}: <json>: malformed JSON: {exc}", path=path) from None
    try:
        case = Case.from_dict(data, source=source)
    except CorpusError as exc:
        exc.path = path
        raise
    if path.parent.name != case.property:
        raise CorpusError(
            f"{source}: property: {case.property!r}, but the file is in directory "
            f"{path.parent.name!r}; cases live in <corpus>/<property>/<id>.json",
            path=path,
        )
    if path.name != f"{case.id}.json":
        raise CorpusError(
            f"{source}: id: the file name {path.name!r} does not match the case id "
            f"{case.id!r}; rename it to {case.id}.json",
            path=path,
        )
    return case


def load_corpus(
    root: str | os.PathLike[str],
) -> tuple[list[tuple[Path, Case]], list[CorpusError]]:
    """Load every ``root/<property>/*.json``, sorted by path.

    Returns ``(cases, errors)``: a malformed file becomes an error in the list (never
    skipped silently, never stopping the others). A ``*.json`` at the wrong depth is
    also reported. Dot-files and dot-directories (temporary files) are ignored; a
    missing root is an empty corpus.
    """
    root = Path(root)
    cases: list[tuple[Path, Case]] = []
    errors: list[CorpusError] = []
    if not root.exists():
        return cases, errors
    if not root.is_dir():
        return cases, [CorpusError(f"{root}: <corpus>: not a directory", path=root)]
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) != 2:
            errors.append(CorpusError(
                f"{path}: <location>: not directly inside a property directory; cases live "
                f"in <corpus>/<property>/<id>.json",
                path=path,
            ))
            continue
        if not path.is_file():
            errors.append(CorpusError(f"{path}: <file>: not a regular file", path=path))
            continue
        try:
            cases.append((path, load_case(path)))
        except CorpusError as exc:
            errors.append(exc)
    return cases, errors


def set_status(path: str | os.PathLike[str], status: str, *, reason: str = "") -> Case:
    """Change the status of the case stored at ``path``, atomically; return the new case.

    ``accepted`` (a divergence the user accepts: reported, never a failure) needs a
    ``reason``."""
    if status not in STATUSES:
        raise CorpusError(f"{path}: status: {status!r} is not one of {STATUSES}", path=path)
    if status == "accepted" and not reason.strip():
        raise CorpusError(f"{path}: reason: an accepted case needs a reason", path=path)
    path = Path(path)
    case = load_case(path)
    reason = reason.strip() if status == "accepted" else ""
    if (case.status, case.reason) == (status, reason):
        return case
    updated = dataclasses.replace(case, status=status, reason=reason)
    tmp_name = _write_temp(path.parent, updated.to_json().encode("utf-8"))
    try:
        os.replace(tmp_name, path)
    finally:
        _unlink_quietly(tmp_name)
    _fsync_directory(path.parent)
    return updated


def environment(device: object | None = None) -> dict[str, object]:
    """Versions to record with a case: python, platform, esmfuzz, torch, fair-esm.

    torch is imported here, lazily; a missing torch or fair-esm gives ``None``. With
    ``device`` (a ``torch.device`` or string) the device and, for CUDA, its name are
    recorded too.
    """
    from importlib import metadata

    import esmfuzz

    env: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "esmfuzz": esmfuzz.__version__,
    }
    try:
        env["fair-esm"] = metadata.version("fair-esm")
    except metadata.PackageNotFoundError:
        env["fair-esm"] = None
    try:
        import torch
    except ImportError:
        env["torch"] = None
        torch = None
    else:
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
    if device is not None:
        env["device"] = str(device)
        if torch is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(str(device)))
    return env


# --- helpers --------------------------------------------------------------------------


def _normalise(values: dict[str, object], source: str) -> dict[str, object]:
    """Validate field values and return normalised copies; raise CorpusError on the first fault."""

    def fail(name: str, problem: str) -> CorpusError:
        return CorpusError(f"{source}: {name}: {problem}")

    out: dict[str, object] = dict(values)

    prop = values.get("property")
    if not isinstance(prop, str):
        raise fail("property", f"expected a string, got {_type_name(prop)}")
    if not _PROPERTY.fullmatch(prop):
        raise fail("property", f"{prop!r} is not a [a-z0-9_]+ name")

    sequences = values.get("sequences")
    if isinstance(sequences, str) or not isinstance(sequences, (list, tuple)):
        raise fail("sequences", f"expected a list of strings, got {_type_name(sequences)}")
    if not sequences:
        raise fail("sequences", "empty; a case needs at least one sequence")
    for i, sequence in enumerate(sequences):
        try:
            validate_sequence(sequence, name=f"sequences[{i}]")
        except InvalidSequence as exc:
            raise fail("sequences", str(exc)) from None
    out["sequences"] = tuple(sequences)

    for name in ("model", "backend"):
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            raise fail(name, f"expected a non-empty string, got {value!r}")
    dtype = values.get("dtype")
    if dtype not in _DTYPES:
        raise fail("dtype", f"{dtype!r} is not one of {_DTYPES}")

    implementations = values.get("implementations")
    if not isinstance(implementations, Mapping):
        raise fail("implementations",
                   f"expected an object of name -> 'module:function', got "
                   f"{_type_name(implementations)}")
    for key, target in implementations.items():
        if not isinstance(key, str):
            raise fail("implementations", f"key {key!r} is not a string")
        if not isinstance(target, str) or not _IMPLEMENTATION.fullmatch(target):
            raise fail(f"implementations.{key}", f"{target!r} is not a 'module:function' name")
    out["implementations"] = dict(implementations)

    for name in ("thresholds", "metrics"):
        out[name] = _decode_numbers(values.get(name, {}), name, fail)

    worst = values.get("worst", {})
    if not isinstance(worst, Mapping):
        raise fail("worst", f"expected an object, got {_type_name(worst)}")
    for key, index in worst.items():
        if key not in _WORST_KEYS:
            raise fail("worst", f"unknown key {key!r}; expected some of {_WORST_KEYS}")
        if key == "layer" and index == "logits":
            continue
        if index is not None and (not _is_int(index) or index < 0):
            raise fail(f"worst.{key}", f"expected a non-negative integer or null, got {index!r}")
    if worst.get("sequence") is not None and worst["sequence"] >= len(sequences):
        raise fail("worst.sequence",
                   f"{worst['sequence']} is out of range for {len(sequences)} sequence(s)")
    out["worst"] = dict(worst)

    for name in ("extra", "environment"):
        value = values.get(name, {})
        if not isinstance(value, Mapping):
            raise fail(name, f"expected an object, got {_type_name(value)}")
        out[name] = _json_value(value, name, fail)

    status = values.get("status", "open")
    if status not in STATUSES:
        raise fail("status", f"{status!r} is not one of {STATUSES}")

    created = values.get("created", "")
    if not isinstance(created, str):
        raise fail("created", f"expected a string, got {_type_name(created)}")
    if created:
        try:
            datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            raise fail("created", f"{created!r} is not an ISO 8601 date-time") from None

    for name in ("message", "reason"):
        text = values.get(name, "")
        if not isinstance(text, str):
            raise fail(name, f"expected a string, got {_type_name(text)}")
    if status == "accepted" and not values.get("reason"):
        raise fail("reason", "an accepted case needs a reason (esmfuzz known CASE --reason ...)")
    return out


def _decode_numbers(value: object, name: str, fail) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise fail(name, f"expected an object of name -> number, got {_type_name(value)}")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str):
            raise fail(name, f"key {key!r} is not a string")
        if isinstance(number, str) and number in _NONFINITE:
            number = _NONFINITE[number]
        elif isinstance(number, bool) or not isinstance(number, (int, float)):
            raise fail(f"{name}.{key}",
                       f"expected a number (or 'inf', '-inf', 'nan'), got {number!r}")
        number = float(number)
        out[key] = _NAN if math.isnan(number) else number
    return out


def _encode_numbers(numbers: Mapping[str, float]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, number in numbers.items():
        if math.isnan(number):
            out[key] = "nan"
        elif math.isinf(number):
            out[key] = "inf" if number > 0 else "-inf"
        else:
            out[key] = number
    return out


def _json_value(value: object, where: str, fail) -> object:
    """Deep copy of a strict-JSON value (tuples become lists); reject anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(where, f"non-finite number {value!r}; only metrics and thresholds "
                              f"may hold inf/nan")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{i}]", fail) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise fail(where, f"key {key!r} is not a string")
            out[key] = _json_value(item, f"{where}.{key}", fail)
        return out
    raise fail(where, f"{_type_name(value)} value {value!r} is not JSON-serialisable")


def _write_temp(directory: Path, data: bytes) -> str:
    """Write ``data`` to a fsynced dot-prefixed temporary file in ``directory``; return its name.

    The temporary file is removed if anything fails.
    """
    tmp = tempfile.NamedTemporaryFile(delete=False, dir=directory, prefix=".", suffix=".tmp")
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
    except BaseException:
        _unlink_quietly(tmp.name)
        raise
    return tmp.name


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def _fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}; write non-finite numbers as the "
                     f"strings 'inf', '-inf', 'nan'")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
