"""esmfuzz's configuration: the one table of options, the typed :class:`Config`, the profiles.

Every option is declared once, in :data:`OPTIONS`: the pytest plugin adds it as
``--esm-NAME``, ``[tool.esmfuzz]`` takes it as the key ``NAME``, the ``esmfuzz`` command and
the soak runner read it through :func:`option_value`. Each option has a ``parse_*``
converter (in the style of pytest-benchmark's) that turns text or TOML into the typed value
and names where a bad value came from. :class:`Config` holds typed values, validated once.

Importing this module imports neither torch nor the rest of esmfuzz: the pytest plugin
declares its options from it in every session, asked or not.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esmfuzz.errors import EsmfuzzError

if TYPE_CHECKING:
    import torch

__all__ = [
    "OPTIONS",
    "PROFILES",
    "Backend",
    "Config",
    "ConfigError",
    "Option",
    "Thresholds",
    "crowd_limits",
    "dtype_name",
    "hypothesis_settings",
    "option_value",
    "read_pyproject",
]

DEFAULT_MODEL = "synthetic:esm2_t6_8M_UR50D"
DEFAULT_PACKED = "esmfuzz.forward:packed_forward"
DEFAULT_PADDED = "esmfuzz.forward:padded_forward"
LOADINGS = ("auto", "together", "sequential")
PATHS = ("auto", "both", "candidate")
COMPARES = ("auto", "dtype", "quantized")
RESIDUES = ("all", "standard")
PROFILES = ("quick", "ci", "dev", "soak")


class ConfigError(EsmfuzzError, ValueError):
    """A bad option or ``[tool.esmfuzz]`` value; the message names where it came from."""


class Backend(enum.StrEnum):
    """Attention backend of esmfuzz's packed reference forward."""

    AUTO = "auto"
    FLASH_ATTN = "flash-attn"
    TORCH_VARLEN = "torch-varlen"
    SDPA = "sdpa"


BACKENDS = tuple(b.value for b in Backend if b is not Backend.AUTO)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA where there is one, else the CPU; a CUDA device where there is none is
    an error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} asked for, but CUDA is not available here")
    return device


def dtype_name(dtype: torch.dtype | str) -> str:
    """``float16`` for ``torch.float16``: the name corpus cases, logs and messages use."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bounds, every one configurable; docs/oracles.md says how each was measured."""

    sequence_cosine: float = 0.99
    token_cosine: float = 0.95
    error_ratio: float = 8.0
    """k in ``err(tested) <= k * err(baselines) + atol``; errors are RMS statistics. Correct
    controls reached 2.2 (pooled, 8M to 3B) and 5.4 (one baseline, 3B): docs/oracles.md."""
    ulp_floor: float = 1.0
    """atol of the error and context bounds, in ulps of the path's dtype (relative to the
    oracle's RMS), so an exactly-equal baseline cannot make the bound zero."""
    context_ratio: float = 8.0
    """k for one sequence in two contexts: ``diff <= k * err(baselines) + atol``. Correct
    controls reached 2.7 (four baselines, 3B) and 5.1 (one, 3B): docs/oracles.md."""
    mean_abs_diff: float = 0.01
    std_rel_diff: float = 0.05
    l2_norm_rel_diff: float = 0.05
    outlier_rel_diff: float = 0.25
    statistics_ratio: float = 3.0
    """A statistic also passes within this factor of fair-esm's own padded value in the
    candidate dtype (bfloat16 alone moves 650M embeddings past mean_abs_diff 0.01)."""
    precision_ratio: float = 3.0
    """A cosine below its threshold also passes where its distance from 1 is within this
    factor of fair-esm's own padded forward's in the candidate dtype (fair-esm's bfloat16
    forward took one 650M sequence to residue-mean cosine 0.9705 of float32)."""
    embedding_cosine: float = 0.99
    """--esm-compare quantized: least cosine of a residue-mean final embedding to float32's."""
    logit_drift: float = 2.0
    """--esm-compare quantized: most a logit of an amino acid at a masked position may move."""
    log_prob_drift: float = 1.0
    """--esm-compare quantized: most an amino acid's log-probability at a masked position may
    move (in nats: 1 is a factor e in the probability)."""
    rank_agreement: float = 0.9
    """--esm-compare quantized: least Spearman correlation of the 20 amino acids'
    log-probabilities (the masked-marginal mutation scores) at any masked position."""
    context_drift: float = 0.1
    """--esm-compare quantized: most a log-probability at a masked position may move when the
    sequence's pack neighbours change (a batch-invariant engine moves it by 0)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"threshold {f.name}={value!r} must be a finite number >= 0")
        for name in ("error_ratio", "context_ratio", "statistics_ratio", "precision_ratio"):
            if getattr(self, name) == 0:
                raise ConfigError(f"threshold {name}=0.0 must be above 0 (it multiplies a "
                                 f"baseline's own value)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], *, source: str = "thresholds"):
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{source}: unknown threshold {key!r}; known: {sorted(known)}")
            try:
                clean[name] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: threshold {key}={value!r} is not a number") from None
        try:
            return cls(**clean)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# --- converters: (value, where) -> typed value; ``where`` names the option in errors ---

def parse_str(value: object, where: str) -> str:
    return str(value)


def _choice(choices: Sequence[str]) -> Callable[[object, str], str]:
    def parse(value: object, where: str) -> str:
        if str(value) not in choices:
            raise ConfigError(f"{where}={value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def parse_dtype(value: object, where: str, *, allowed=("float16", "bfloat16", "float32")):
    import torch

    name = dtype_name(value) if isinstance(value, torch.dtype) else str(value)
    if name not in allowed:
        raise ConfigError(f"{where}={value!r} must be one of {', '.join(allowed)}")
    return getattr(torch, name)


def parse_oracle_dtype(value: object, where: str):
    return parse_dtype(value, where, allowed=("float64", "float32"))


def parse_backend(value: object, where: str) -> Backend:
    try:
        return Backend(str(value))
    except ValueError:
        raise ConfigError(f"{where}={value!r} is not one of "
                          f"{', '.join(b.value for b in Backend)}") from None


def parse_implementation(value: object, where: str) -> str:
    text = str(value)
    module, sep, name = text.partition(":")
    if not (sep and module and name):
        raise ConfigError(f"{where}={text!r} must have the form 'module:function'")
    return text


def _least_int(least: int, why: str, *, zero_is_default: bool = False):
    def parse(value: object, where: str) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} is not an int") from None
        if number < least and not (zero_is_default and number == 0):
            raise ConfigError(f"{where}={value!r} must be at least {least} ({why})")
        return number

    return parse


def _seconds(unit: str):
    def parse(value: object, where: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} is not a number") from None
        if not (math.isfinite(number) and number >= 0):
            raise ConfigError(f"{where}={value!r} must be a finite number of {unit}, at least "
                              f"0 (0: no limit)")
        return number

    return parse


def parse_bool(value: object, where: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be true or false")
    return value


def parse_thresholds(value: object, where: str) -> Thresholds:
    if isinstance(value, Thresholds):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    try:
        return Thresholds.from_mapping(value, source=where)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_positive_seconds(value: object, where: str) -> float:
    number = _seconds("seconds")(value, where)
    if number == 0:
        raise ConfigError(f"{where}={value!r} must be a positive number of seconds")
    return number


def parse_int(value: object, where: str) -> int:
    return _least_int(-(2**63), "")(value, where)


@dataclass(frozen=True)
class Option:
    """One option: ``--esm-NAME`` for pytest; a :class:`Config` field (``[tool.esmfuzz]``
    key ``NAME``) unless ``run_only``."""

    name: str
    help: str
    parse: Callable[[object, str], object] = parse_str
    run_only: bool = False
    """Of one run (a report path, a seed), not of what is tested: not in ``[tool.esmfuzz]``."""
    metavar: str | None = None
    flag: str = ""
    """The pytest flag's name after ``--esm-``, where it is not ``name``."""
    action: str = "store"
    """``store``; ``store_false`` for a switch that turns the option off (``--esm-no-mask``);
    ``append`` for ``NAME=VALUE`` items merged into a table (``--esm-threshold``)."""

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")

    @property
    def pytest_flag(self) -> str:
        return f"--esm-{self.flag or self.name}"


OPTIONS: tuple[Option, ...] = (
    Option("model", "model spec: fair-esm name, path to a .pt, or synthetic:<esm2 name>"
           "[?seed=N][&profile=random] (default: trained-like weights)"),
    Option("device", "auto, cpu, cuda or cuda:N"),
    Option("dtype", "candidate dtype: float16, bfloat16 or float32", parse_dtype),
    Option("oracle-dtype", "error-ratio oracle dtype: float64 (falls back to float32 if it "
           "does not fit) or float32", parse_oracle_dtype),
    Option("loading", "auto, together (every model copy on the device) or sequential (one "
           "copy on the device at a time, for models whose copies do not fit together)",
           _choice(LOADINGS)),
    Option("device-memory", "GiB of device memory esmfuzz may use, for a GPU shared with "
           "other work (default 0: all that is free)", _seconds("GiB")),
    Option("backend", "attention backend of the reference packed forward: auto, flash-attn, "
           "torch-varlen or sdpa", parse_backend),
    Option("packed-impl", "packed forward under test, module:function", parse_implementation),
    Option("padded-impl", "padded forward under test, module:function", parse_implementation),
    Option("corpus", "corpus directory where shrunk failures are saved and replayed from"),
    Option("pack-tokens", "token budget of a generated pack (default 1536; long packs reveal "
           "FP16 position rounding)",
           _least_int(1027, "one 1022-residue sequence, <cls>, <eos>, one more")),
    Option("crowd-tokens", "token budget of a crowded pack, many short proteins (default 6144 "
           "for quick and ci on the CPU, else 16384)",
           _least_int(1024, "or 0 for the default", zero_is_default=True)),
    Option("crowd-sequences", "most sequences in a crowded pack (default 128 for quick and ci "
           "on the CPU, else 256)", _least_int(2, "or 0 for the default", zero_is_default=True)),
    Option("residues", "all (the 20 amino acids, X B Z U O) or standard (the 20 only), for "
           "pipelines that never see rare residues", _choice(RESIDUES)),
    Option("masks", "whether generated sequences hold <mask> (--esm-no-mask: pipelines that "
           "never see it)", parse_bool, flag="no-mask", action="store_false"),
    Option("shrink-seconds", "seconds a target may spend shrinking its failure; past them the "
           "smallest failure so far is saved, with a note (default 0: Hypothesis's own "
           "limit); then a second pass drops sequences and residues, for as long again",
           _seconds("seconds")),
    Option("timeout", "seconds one call of an implementation under test may take; a call over "
           "the limit is a finding, saved, and the run goes on (default 0: no limit)",
           _seconds("seconds")),
    Option("paths", "dtype paths the implementations are checked on: auto, both (candidate "
           "dtype and float32) or candidate (FP16/BF16-only kernels)", _choice(PATHS)),
    Option("compare", "how implementations are judged: dtype (against same-dtype baselines "
           "and the float64 oracle: FP16/BF16/FP32 code), quantized (against float32 in user "
           "units: embedding cosine, logit and log-probability drift and mutation-score ranks "
           "at masked positions, batch-composition invariance), or auto (quantized where an "
           "implementation under test declares an integer esmfuzz_precision)", _choice(COMPARES)),
    Option("thresholds", "override one threshold, e.g. token_cosine=0.9 (repeatable)",
           parse_thresholds, metavar="NAME=VALUE", flag="threshold", action="append"),
    Option("profile", "Hypothesis profile: quick (3 examples per target, minutes on a laptop "
           "CPU), ci (6, fixed seed), dev (40), soak (unbounded) "
           "(default: ci when $CI is set, else quick)", _choice(PROFILES), run_only=True),
    Option("seed", "fuzz with seed N (mixed with each test's id) instead of the profile's; the "
           "ci profile is otherwise fixed", parse_int, run_only=True, metavar="N"),
    Option("report", "write the per-property statistics of this run as JSON to PATH",
           run_only=True, metavar="PATH"),
    Option("database", "Hypothesis example database: a directory, or redis://host:port/db "
           "(needs esmfuzz[redis]); shared by the machines of a soak run (default: "
           ".hypothesis/examples where the profile keeps one)", run_only=True, metavar="URL"),
    Option("claims", "directory where processes fuzzing one implementation claim each bug's "
           "signature, so one of them shrinks it (xdist workers get one of their own; esmfuzz "
           "soak shares one in the corpus)", run_only=True, metavar="DIR"),
    Option("soak-slice", "(esmfuzz soak) each target fuzzes for this long, then passes; "
           "SIGTERM and SIGINT end the example in flight, save what was found and stop",
           parse_positive_seconds, run_only=True, metavar="SECONDS"),
    Option("soak-log", "(esmfuzz soak) write this process's statistics as JSON to PATH "
           "({worker} is replaced by the xdist worker id) every 10 s and at the end",
           run_only=True, metavar="PATH"),
)
OPTION = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Config:
    """What to test: the keys of ``[tool.esmfuzz]`` and the ``--esm-*`` options, typed.

    Constructed with text (``dtype="float16"``) or typed values alike; every value is
    converted and checked once, here."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: torch.dtype = "float16"
    oracle_dtype: torch.dtype = "float64"
    backend: Backend = Backend.AUTO
    packed_impl: str = DEFAULT_PACKED
    padded_impl: str = DEFAULT_PADDED
    corpus: str = "corpus"
    pack_tokens: int = 1536
    """Token budget of a generated pack: one very long sequence plus neighbours by default;
    raise it (4096 and more) to reach positions where FP16/BF16 rounding shows."""
    crowd_tokens: int = 0
    """Token budget of the ``crowded`` stratum; 0 picks 6144 for the quick and ci profiles
    on the CPU, else 16384 (:func:`crowd_limits`)."""
    crowd_sequences: int = 0
    """Most sequences in a ``crowded`` pack; 0 picks 128 for quick and ci on the CPU,
    else 256."""
    loading: str = "auto"
    """``together`` (every copy on the device), ``sequential`` (one copy on the device at a
    time), or ``auto`` (the memory estimate decides, and the run's header says which)."""
    device_memory: float = 0.0
    """GiB of device memory esmfuzz may use (0: all that is free)."""
    paths: str = "auto"
    """``both`` (candidate dtype and FP32), ``candidate`` (FP16/BF16-only kernels), or
    ``auto`` (both, dropping FP32 with a note where the implementation refuses it)."""
    compare: str = "auto"
    """``dtype``, ``quantized``, or ``auto`` (:meth:`esmfuzz.harness.Harness.compare`)."""
    masks: bool = True
    residues: str = "all"
    shrink_seconds: float = 0.0
    timeout: float = 0.0
    thresholds: Thresholds = field(default_factory=lambda: Thresholds())

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            option = OPTION[item.name.replace("_", "-")]
            object.__setattr__(self, item.name, option.parse(value, option.name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], *, source: str = "[tool.esmfuzz]"):
        """A Config from ``[tool.esmfuzz]``-style keys; errors name ``source``."""
        clean: dict[str, object] = {}
        for key, value in values.items():
            option = OPTION.get(key.replace("_", "-"))
            if option is None or option.run_only:
                known = sorted(o.field for o in OPTIONS if not o.run_only)
                raise ConfigError(f"{source}: unknown key {key!r}; known: {known}")
            clean[option.field] = option.parse(value, f"{source}: {option.name}")
        return cls(**clean)

    def names(self) -> dict[str, object]:
        """The values as text and numbers, as ``[tool.esmfuzz]`` would hold them."""
        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            out[item.name] = (value.as_dict() if item.name == "thresholds"
                              else dtype_name(value) if "dtype" in item.name
                              else str(value) if isinstance(value, Backend) else value)
        return out


def read_pyproject(start: Path | str = ".") -> dict:
    """The ``[tool.esmfuzz]`` table of the nearest pyproject.toml at or above ``start``."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            with candidate.open("rb") as handle:
                return tomllib.load(handle).get("tool", {}).get("esmfuzz", {})
    return {}


def merged(stored: Mapping[str, object], given: Mapping[str, object],
           where: Callable[[Option], str]) -> Config:
    """``[tool.esmfuzz]`` (``stored``) overridden by ``given``, each value checked where it
    came from (``where(option)`` names a given one: ``--esm-dtype``); ``thresholds`` merge
    key by key."""
    values = Config.from_mapping(stored).names()
    for key, value in given.items():
        option = OPTION[key.replace("_", "-")]
        if option.field == "thresholds":
            value = {**values["thresholds"], **value}
        values[option.field] = option.parse(value, where(option))
    return Config(**values)


def option_value(args: Sequence[str], name: str, *, start: Path | str = ".") -> object:
    """Option ``name`` as a pytest command line ``args`` gives it (``--esm-NAME VALUE`` or
    ``--esm-NAME=VALUE``), else ``[tool.esmfuzz]``, else its default; typed."""
    option = OPTION[name]
    flag = f"--esm-{name}"
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return option.parse(args[i + 1], flag)
        if arg.startswith(flag + "="):
            return option.parse(arg.split("=", 1)[1], flag)
    stored = read_pyproject(start)
    if name in stored:
        return option.parse(stored[name], f"[tool.esmfuzz] {name}")
    return getattr(Config(), option.field)


def crowd_limits(config: Config, *, profile: str) -> tuple[int, int]:
    """(most sequences, token budget) of the ``crowded`` stratum under ``profile``."""
    small = profile in ("quick", "ci") and resolve_device(config.device).type == "cpu"
    return (
        config.crowd_sequences or (128 if small else 256),
        config.crowd_tokens or (6144 if small else 16384),
    )


def default_profile() -> str:
    return "ci" if os.environ.get("CI") else "quick"


def hypothesis_settings(profile: str, *, database: str | None = None):
    """The Hypothesis settings of esmfuzz's ``profile``, applied to its fuzz targets only
    (never loaded as the session's default: other tests keep theirs)."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    # Hypothesis's explain phase re-runs the shrunk failure ~100 times with parts redrawn;
    # esmfuzz's message says more, and those runs took 70% of a failing target's time on
    # the CPU (22 s of 31 for a forward that raises).
    common = {
        "deadline": None,
        "print_blob": True,
        "phases": [phase for phase in Phase if phase is not Phase.explain],
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    chosen = {
        "quick": {"max_examples": 3},
        "ci": {"max_examples": 6, "derandomize": True, "database": None},
        "dev": {"max_examples": 40},
        "soak": {"max_examples": 10**9,
                 "database": DirectoryBasedExampleDatabase(".hypothesis/examples")},
    }[profile]
    if database:
        chosen = {**chosen, "database": example_database(database)}
    return settings(**common, **chosen)


def example_database(url: str):
    """Hypothesis's own database for ``url``: ``redis://...`` or a directory."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError:
            raise ConfigError(
                f"{url!r} needs the redis client: pip install 'esmfuzz[redis]'") from None
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ConfigError(f"{url!r}: cannot reach the Redis server: {exc}") from None
        return RedisExampleDatabase(client)
    if "://" in url:
        raise ConfigError(f"{url!r} is neither a directory nor a redis:// URL")
    return DirectoryBasedExampleDatabase(url)
