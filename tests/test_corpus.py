"""The durable corpus: round trips, ids, no-clobber saves, concurrency, malformed files.

Everything here works on real files under ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from esmfuzz import corpus
from esmfuzz.corpus import (
    SCHEMA_VERSION,
    STATUSES,
    Case,
    CorpusError,
    environment,
    load_case,
    load_corpus,
    save_case,
    set_status,
)

REPO = Path(__file__).resolve().parents[1]


def make_case(**changes) -> Case:
    values = dict(
        property="error_ratio",
        sequences=("MKTAYIAK", "G<mask>LV", "W"),
        model="synthetic:esm2_t6_8M_UR50D",
        dtype="float16",
        backend="sdpa",
        implementations={"packed": "esmfuzz.packed:forward", "padded": "esmfuzz.padded:forward"},
        thresholds={"ratio": 2.0, "absolute": 1e-3},
        metrics={"ratio": 7.25, "absolute": 0.0125},
        worst={"layer": 5, "sequence": 1, "token": 2},
        extra={"variant": ["MKTAYIAK"], "target": 0},
        environment={"torch": "2.6.0", "python": "3.11.7"},
        created="2025-01-02T03:04:05+00:00",
        message="packed/padded error ratio 7.25 > 2.0 at layer 5",
    )
    values.update(changes)
    return Case(**values)


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.startswith("."))


# --- round trip and format ------------------------------------------------------------


def test_public_names():
    assert sorted(corpus.__all__) == sorted([
        "SCHEMA_VERSION", "STATUSES", "Case", "CorpusError", "environment", "load_case",
        "load_corpus", "save_case", "set_status",
    ])
    assert SCHEMA_VERSION == 1
    assert STATUSES == ("open", "fixed", "accepted")


def test_no_torch_import():
    code = "import sys, esmfuzz.corpus; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def test_round_trip(tmp_path):
    case = make_case()
    path, created = save_case(case, tmp_path)
    assert created
    assert path == tmp_path / "error_ratio" / f"{case.id}.json"
    loaded = load_case(path)
    assert loaded == case
    assert loaded.sequences == ("MKTAYIAK", "G<mask>LV", "W")
    assert isinstance(loaded.sequences, tuple)


def test_json_is_sorted_readable_and_complete(tmp_path):
    case = make_case()
    path, _ = save_case(case, tmp_path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert list(data) == sorted(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["id"] == case.id
    assert data["status"] == "open"
    assert data["sequences"] == list(case.sequences)
    assert set(data) == {
        "schema_version", "id", "property", "sequences", "cu_seqlens", "model", "dtype",
        "backend", "implementations", "thresholds", "metrics", "worst", "extra", "status",
        "environment", "created", "message",
    }


def test_cu_seqlens_counts_mask_as_one_residue(tmp_path):
    case = make_case()
    # 8 residues, "G<mask>LV" is 4 residues, "W" is 1; each plus <cls> and <eos>.
    assert case.cu_seqlens == [0, 10, 16, 19]
    path, _ = save_case(case, tmp_path)
    assert json.loads(path.read_text())["cu_seqlens"] == [0, 10, 16, 19]


def test_constructor_copies_and_normalises():
    implementations = {"packed": "a.b:c", "padded": "a.b:d"}
    extra = {"variant": ("MK", "MW"), "nested": {"k": [1, 2]}}
    case = make_case(sequences=["MK", "W"], implementations=implementations, extra=extra,
                     thresholds={"ratio": 2})
    implementations["packed"] = "changed:x"
    extra["nested"]["k"].append(3)
    assert case.implementations["packed"] == "a.b:c"
    assert case.extra == {"variant": ["MK", "MW"], "nested": {"k": [1, 2]}}
    assert case.sequences == ("MK", "W")
    assert case.thresholds == {"ratio": 2.0} and isinstance(case.thresholds["ratio"], float)
    assert hash(case) == hash(make_case(sequences=("MK", "W"), implementations={
        "packed": "a.b:c", "padded": "a.b:d"}, extra={"variant": ["MK", "MW"],
        "nested": {"k": [1, 2]}}, thresholds={"ratio": 2.0}))


def test_created_filled_in_when_empty(tmp_path):
    path, _ = save_case(make_case(created=""), tmp_path)
    created = load_case(path).created
    assert created.endswith("+00:00") and created.startswith("20")


def test_non_finite_metrics_round_trip(tmp_path):
    case = make_case(metrics={"ratio": math.inf, "low": -math.inf, "bad": float("nan"),
                              "zero": -0.0, "tiny": 5e-324},
                     thresholds={"ratio": math.inf})
    path, _ = save_case(case, tmp_path)
    data = json.loads(path.read_text())
    assert data["metrics"] == {"ratio": "inf", "low": "-inf", "bad": "nan", "zero": -0.0,
                               "tiny": 5e-324}
    assert data["thresholds"] == {"ratio": "inf"}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    loaded = load_case(path)
    assert loaded == case  # every NaN is the same object, so equal cases compare equal
    assert math.isnan(loaded.metrics["bad"])
    assert loaded.metrics["ratio"] == math.inf and loaded.metrics["low"] == -math.inf
    assert math.copysign(1.0, loaded.metrics["zero"]) == -1.0
    assert loaded.metrics["tiny"] == 5e-324


def test_bare_nan_literal_is_rejected(tmp_path):
    case = make_case()
    path, _ = save_case(case, tmp_path)
    path.write_text(path.read_text().replace('"ratio": 7.25', '"ratio": NaN'))
    with pytest.raises(CorpusError, match="NaN"):
        load_case(path)


# --- ids ------------------------------------------------------------------------------


def test_id_is_stable_and_ignores_observations():
    case = make_case()
    assert len(case.id) == 16 and int(case.id, 16) >= 0
    assert case.id == make_case().id
    same = make_case(status="fixed", metrics={"ratio": 99.0}, created="2030-01-01T00:00:00Z",
                     environment={"torch": "9"}, message="other", worst={"layer": 0})
    assert same.id == case.id
    assert same != case


@pytest.mark.parametrize("change", [
    {"property": "isolation"},
    {"sequences": ("MKTAYIAK", "G<mask>LV")},
    {"sequences": ("W", "MKTAYIAK", "G<mask>LV")},
    {"model": "synthetic:esm2_t12_35M_UR50D"},
    {"dtype": "bfloat16"},
    {"backend": "torch-varlen"},
    {"implementations": {"packed": "x:y", "padded": "esmfuzz.padded:forward"}},
    {"thresholds": {"ratio": 2.5, "absolute": 1e-3}},
    {"extra": {"variant": ["MKTAYIAW"], "target": 0}},
])
def test_id_depends_on_hashed_content(change):
    assert make_case(**change).id != make_case().id


def test_id_independent_of_dict_order():
    a = make_case(thresholds={"ratio": 2.0, "absolute": 1e-3})
    b = make_case(thresholds={"absolute": 1e-3, "ratio": 2.0})
    assert a.id == b.id


# --- no clobber -----------------------------------------------------------------------


def test_same_case_saved_twice_keeps_existing_file(tmp_path):
    case = make_case()
    path, created = save_case(case, tmp_path)
    assert created
    set_status(path, "fixed")
    before = path.read_bytes()
    again = make_case(metrics={"ratio": 3.0}, created="2031-01-01T00:00:00+00:00")
    path2, created2 = save_case(again, tmp_path)
    assert (path2, created2) == (path, False)
    assert path.read_bytes() == before
    loaded = load_case(path)
    assert loaded.status == "fixed"
    assert loaded.created == case.created and loaded.metrics == case.metrics
    assert [p.name for p in (tmp_path / "error_ratio").iterdir()] == [path.name]


def test_set_status(tmp_path):
    path, _ = save_case(make_case(), tmp_path)
    updated = set_status(path, "fixed")
    assert updated.status == "fixed"
    assert load_case(path) == updated
    assert json.loads(path.read_text())["status"] == "fixed"
    assert set_status(path, "fixed") == updated
    assert set_status(path, "open").status == "open"
    with pytest.raises(CorpusError, match="status"):
        set_status(path, "closed")
    assert load_case(path).status == "open"
    assert leftovers(tmp_path) == []


def test_status_edited_by_hand_is_fine(tmp_path):
    path, _ = save_case(make_case(), tmp_path)
    path.write_text(path.read_text().replace('"status": "open"', '"status": "fixed"'))
    assert load_case(path).status == "fixed"


# --- concurrency ----------------------------------------------------------------------


def _distinct(i: int) -> Case:
    return make_case(sequences=("MK" + "A" * i,), worst={}, extra={"writer": i})


def _check_corpus(root: Path, expected: set[str]) -> None:
    cases, errors = load_corpus(root)
    assert errors == []
    assert {p.name for p, _ in cases} == expected
    for path, case in cases:
        json.loads(path.read_text())
        assert path.name == f"{case.id}.json"
    assert leftovers(root) == []


def test_threads_save_same_and_distinct_cases(tmp_path):
    shared = make_case()
    results: list[tuple[Path, bool]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                results.append(save_case(shared, tmp_path))
                save_case(_distinct(i), tmp_path)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(created for _, created in results) == 1
    assert {path for path, _ in results} == {tmp_path / "error_ratio" / f"{shared.id}.json"}
    _check_corpus(tmp_path, {f"{shared.id}.json"} | {f"{_distinct(i).id}.json"
                                                      for i in range(8)})


def _process_worker(root: str, i: int, start, queue) -> None:
    start.wait()
    created = 0
    for _ in range(20):
        created += save_case(make_case(), root)[1]
        save_case(_distinct(100 + i), root)
    queue.put(created)


def test_processes_save_same_and_distinct_cases(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    queue = context.Queue()
    processes = [context.Process(target=_process_worker, args=(str(tmp_path), i, start, queue))
                 for i in range(4)]
    for p in processes:
        p.start()
    start.set()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert sum(queue.get(timeout=10) for _ in processes) == 1
    _check_corpus(tmp_path, {f"{make_case().id}.json"} | {f"{_distinct(100 + i).id}.json"
                                                           for i in range(4)})


# --- failed writes ----------------------------------------------------------------------


def test_unserialisable_value_fails_before_anything_is_written(tmp_path):
    with pytest.raises(CorpusError, match=r"extra\.when: .*not JSON-serialisable"):
        make_case(extra={"when": object()})
    with pytest.raises(CorpusError, match=r"metrics\.ratio"):
        make_case(metrics={"ratio": "7.25"})
    with pytest.raises(CorpusError, match="non-finite"):
        make_case(extra={"x": math.nan})
    # A Case cannot even be built from bad values, so there is nothing to save.
    assert list(tmp_path.iterdir()) == []


_CRASH = """
import resource, signal, sys
from esmfuzz.corpus import Case, save_case
case = Case(property="error_ratio", sequences=("MKTAYIAK" * 40,), model="m",
            dtype="float16", backend="sdpa", implementations={"packed": "a:b"},
            thresholds={"ratio": 2.0}, message="x" * 5000)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
try:
    save_case(case, sys.argv[1])
except OSError as exc:
    print("write failed:", exc.errno)
    sys.exit(3)
sys.exit(0)
"""


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                    reason="needs RLIMIT_FSIZE/SIGXFSZ semantics of Linux")
def test_write_failing_midway_leaves_no_file(tmp_path):
    """A real partial write: the process may write only 512 bytes of the file."""
    result = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "write failed" in result.stdout
    directory = tmp_path / "error_ratio"
    assert directory.is_dir()
    assert list(directory.iterdir()) == []  # neither a final file nor a temp file
    assert load_corpus(tmp_path) == ([], [])


def test_leftover_temp_file_from_a_killed_writer_is_ignored(tmp_path):
    case = make_case()
    path, _ = save_case(case, tmp_path)
    (path.parent / ".tmpkilled.tmp").write_text(path.read_text()[:40])
    cases, errors = load_corpus(tmp_path)
    assert errors == [] and cases == [(path, case)]


# --- malformed files --------------------------------------------------------------------


def _corrupt(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def test_malformed_files_are_reported_by_name_and_field(tmp_path):
    good = make_case()
    good_path, _ = save_case(good, tmp_path)
    other = make_case(property="isolation")
    other_path, _ = save_case(other, tmp_path)

    bad: dict[str, tuple[Path, str]] = {}

    def add(kind: str, case: Case, edit, pattern: str, *, property_dir: str | None = None):
        path, _ = save_case(case, tmp_path)
        if property_dir is not None:
            target = tmp_path / property_dir / path.name
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
            path = target
        if edit is not None:
            edit(path)
        bad[kind] = (path, pattern)

    add("json", _distinct(1), lambda p: p.write_text(p.read_text()[:-20]), "malformed JSON")
    add("missing", _distinct(2), lambda p: _corrupt(p, lambda d: d.pop("sequences")),
        "sequences: missing field")
    add("status", _distinct(3), lambda p: _corrupt(p, lambda d: d.update(status="closed")),
        "status: 'closed' is not one of")
    add("sequence", _distinct(4),
        lambda p: _corrupt(p, lambda d: d.update(sequences=["MJK"], cu_seqlens=[0, 5])),
        r"sequences: .*'J' is not in the ESM-2 alphabet")
    add("id", _distinct(5), lambda p: _corrupt(
        p, lambda d: d.update(sequences=["MKW"], cu_seqlens=[0, 5])),
        "id: stored id .* does not match the content hash")
    add("directory", _distinct(6), None, "property: 'error_ratio', but the file is in "
        "directory 'precision'", property_dir="precision")
    add("cu_seqlens", _distinct(7), lambda p: _corrupt(p, lambda d: d.update(cu_seqlens=[0, 4])),
        "cu_seqlens: stored")
    add("schema", _distinct(8), lambda p: _corrupt(p, lambda d: d.update(schema_version=2)),
        "schema_version: 2 is newer")
    add("type", _distinct(9), lambda p: _corrupt(p, lambda d: d.update(thresholds=[1.0])),
        "thresholds: expected an object")
    add("property", _distinct(10), lambda p: _corrupt(p, lambda d: d.update(property="Bad-Name")),
        "property: 'Bad-Name' is not a")

    def rename(p: Path) -> None:
        p.rename(p.with_name("0123456789abcdef.json"))

    add("filename", _distinct(11), rename, "id: the file name '0123456789abcdef.json'")
    bad["filename"] = (bad["filename"][0].with_name("0123456789abcdef.json"), bad["filename"][1])
    misplaced = tmp_path / "stray.json"
    misplaced.write_text("{}")
    bad["location"] = (misplaced, "not directly inside a property directory")

    cases, errors = load_corpus(tmp_path)
    assert cases == sorted([(good_path, good), (other_path, other)])
    assert len(errors) == len(bad)
    by_path = {e.path: e for e in errors}
    for kind, (path, pattern) in bad.items():
        error = by_path[path]
        assert str(error).startswith(f"{path}: "), kind
        assert error.path == path
        assert re.search(pattern, str(error)), (kind, str(error))
        if kind != "location":
            with pytest.raises(CorpusError, match=pattern):
                load_case(path)


def test_id_mismatch_suggests_new_id(tmp_path):
    path, _ = save_case(make_case(), tmp_path)
    _corrupt(path, lambda d: d.update(sequences=["MKW"], cu_seqlens=[0, 5], worst={}))
    new_id = make_case(sequences=("MKW",), worst={}).id
    with pytest.raises(CorpusError, match=f"rename the file to {new_id}.json") as info:
        load_case(path)
    assert info.value.path == path


def test_from_dict_checks(tmp_path):
    data = make_case().to_dict()
    assert Case.from_dict(data) == make_case()
    # derived fields may be left out of a hand-written case
    trimmed = {k: v for k, v in data.items() if k not in ("id", "cu_seqlens", "metrics")}
    assert Case.from_dict(trimmed).id == make_case().id
    with pytest.raises(CorpusError, match=r"^<dict>: surprise: unknown field"):
        Case.from_dict({**data, "surprise": 1})
    with pytest.raises(CorpusError, match=r"^src: schema_version: expected an integer"):
        Case.from_dict({**data, "schema_version": "1"}, source="src")
    with pytest.raises(CorpusError, match="top level"):
        Case.from_dict([data])
    with pytest.raises(CorpusError, match=r"worst\.sequence: 7 is out of range"):
        Case.from_dict({**data, "worst": {"sequence": 7}})
    with pytest.raises(CorpusError, match="dtype"):
        Case.from_dict({**data, "dtype": "int8"})
    with pytest.raises(CorpusError, match=r"implementations\.packed"):
        Case.from_dict({**data, "implementations": {"packed": "no colon"}})
    with pytest.raises(CorpusError, match="created"):
        Case.from_dict({**data, "created": "yesterday"})


def test_missing_root_and_empty_corpus(tmp_path):
    assert load_corpus(tmp_path / "absent") == ([], [])
    assert load_corpus(tmp_path) == ([], [])


def test_corpus_is_sorted_by_path(tmp_path):
    saved = [save_case(_distinct(i), tmp_path)[0] for i in range(5)]
    saved.append(save_case(make_case(property="precision"), tmp_path)[0])
    cases, errors = load_corpus(tmp_path)
    assert errors == []
    assert [p for p, _ in cases] == sorted(saved)


def test_replace_keeps_validation():
    with pytest.raises(CorpusError, match="status"):
        dataclasses.replace(make_case(), status="done")


def test_environment():
    env = environment()
    import esmfuzz

    assert env["esmfuzz"] == esmfuzz.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["platform"], str) and env["platform"]
    assert "torch" in env and "fair-esm" in env
    json.dumps(env, allow_nan=False)
    assert environment(device="cpu")["device"] == "cpu"
    make_case(environment=env)  # a valid environment mapping for a case


def test_accepted_needs_a_reason_and_keeps_it(tmp_path):
    path, _ = save_case(make_case(), tmp_path)
    with pytest.raises(CorpusError, match="needs a reason"):
        set_status(path, "accepted")
    accepted = set_status(path, "accepted", reason="our pipeline never sees <mask>")
    assert load_case(path) == accepted and accepted.reason == "our pipeline never sees <mask>"
    assert json.loads(path.read_text())["reason"] == "our pipeline never sees <mask>"
    assert accepted.id == make_case().id  # the reason is not hashed
    reopened = set_status(path, "open")
    assert reopened.reason == "" and "reason" not in json.loads(path.read_text())
