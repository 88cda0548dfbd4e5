"""The HTML report of a soak run: self-contained, escaped, readable errors, and drawn for real
by a headless Chromium when one is installed."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from esmfuzz.report import ReportError, render_report, write_report

T0 = 1_764_400_000.0
TARGETS = {
    # name: (metric, threshold, log10 range of the values, share past the bound)
    "error_ratio[short]": ("error_ratio", 2.0, (-3.0, -0.2), 0.0),
    "error_ratio[long]": ("error_ratio", 2.0, (-2.5, 0.0), 0.01),
    "isolation[mixed]": ("isolation", 0.05, (-4.5, -2.0), 0.0),
    "padding_invariance[short]": ("padding_invariance", 0.01, (-5.0, -2.6), 0.0),
    "precision[medium]": ("token_cosine_min", 0.999, None, 0.0),
    "packed_precision[very_long]": ("token_cosine_min", 0.999, None, 0.0),
    "statistics[mixed]": ("std_rel_diff", 0.05, (-3.0, -1.5), 0.0),
    "finite[mixed]": ("", None, None, 0.0),
}
WORKERS = {"gw0": ["error_ratio[short]", "error_ratio[long]", "isolation[mixed]",
                   "finite[mixed]"],
           "gw1": ["error_ratio[short]", "padding_invariance[short]", "precision[medium]",
                   "packed_precision[very_long]", "statistics[mixed]"]}


def _margin(metric, threshold, value):
    if "cosine" in metric:
        return (value - threshold) / abs(1 - threshold)
    return (threshold - value) / threshold


def _values(rng, name, count):
    metric, threshold, decades, bad = TARGETS[name]
    if threshold is None:
        return []
    out = []
    for _ in range(count):
        if decades is None:
            out.append(1 - 10 ** rng.uniform(-5.5, -3.3))
        elif rng.random() < bad:
            out.append(threshold * 10 ** rng.uniform(0.1, 2.7))
        else:
            out.append(10 ** rng.gauss(sum(decades) / 2, (decades[1] - decades[0]) / 5))
    return out


def _process(rng, worker, names, case):
    """One xdist worker's log: 40 snapshots 30 s apart, as esmfuzz.runlog writes it."""
    targets, timeline = {}, []
    examples = dict.fromkeys(names, 0)
    margins = dict.fromkeys(names)
    rate = {n: rng.uniform(0.1, 0.6) for n in names}
    values = {n: [] for n in names}
    for step in range(40):
        t = T0 + 5 + 30 * step
        for n in names:
            new = max(0, round(rng.gauss(rate[n] * 30, 2))) if step else 0
            examples[n] += new
            fresh = _values(rng, n, new)
            values[n] += fresh
            metric, threshold, _, _ = TARGETS[n]
            for v in fresh:
                m = _margin(metric, threshold, v)
                margins[n] = m if margins[n] is None else min(margins[n], m)
        timeline.append({"t": t, "examples": dict(examples), "worst_margin": dict(margins)})
    for n in names:
        metric, threshold, _, _ = TARGETS[n]
        failing = sum(_margin(metric, threshold, v) < 0 for v in values[n]) if threshold else 0
        targets[n] = {"examples": examples[n], "failing": failing, "seen_again": 0,
                      "worst_margin": margins[n], "metric": metric, "threshold": threshold,
                      "values": values[n][:2000], "seen": len(values[n]),
                      "first": T0 + 5, "last": T0 + 5 + 30 * 39}
    failures = []
    if "error_ratio[long]" in names:
        failures.append({"signature": "error_ratio: error_ratio in the packed output, failing "
                                      "layers 0,1,2", "case": str(case),
                         "target": "error_ratio[long]",
                         "pattern": "0 error_ratio=148 FAIL; 1 error_ratio=96.2 FAIL",
                         "status": "new", "t": T0 + 700})
    return {"schema": 1, "worker": worker, "round": 1, "host": "h200-07", "pid": 4242,
            "started": T0, "updated": T0 + 1200, "model": "esm2_t33_650M_UR50D",
            "device": "cuda:" + worker[-1], "dtype": "float16", "packed_impl":
            "esmfuzz.forward:packed_forward", "padded_impl": "esmfuzz.forward:padded_forward",
            "profile": "soak", "targets": targets, "timeline": timeline,
            "reach": {"sequences_per_pack": {"1": 40, "2": 35, "3-4": 61, "5-8": 44,
                                                "9-16": 12, "17-32": 3},
                         "tokens_per_pack": {"65-128": 20, "129-256": 51, "257-512": 70,
                                             "513-1024": 41, "1025-2048": 11, "1-64": 9,
                                             "2049-4096": 2},
                         "sequence_length": {"1": 4, "2-10": 55, "11-50": 160, "51-100": 120,
                                             "101-200": 90, "201-500": 60, "501-800": 12,
                                             "801-1022": 3},
                         "rare_and_mask_residues": {"X": 31, "B": 12, "Z": 9, "<mask>": 44},
                         "layouts": 194, "layouts_with_mask": 27},
            "failures": failures}


def make_stats(tmp_path: Path) -> tuple[Path, dict, Path]:
    """A finished two-worker run with one saved failure whose case file exists."""
    case = tmp_path / "corpus" / "error_ratio" / "3d36b7db4088e3ba.json"
    case.parent.mkdir(parents=True)
    case.write_text(json.dumps({"id": "3d36b7db4088e3ba", "property": "error_ratio"}))
    run_dir = tmp_path / "soak-run"
    run_dir.mkdir()
    rng = random.Random(7)
    stats = {"schema": 1,
             "run": {"run_dir": str(run_dir), "started": T0, "updated": T0 + 1200,
                     "duration": 3600.0, "elapsed": 1200.0, "state": "finished", "rounds": 1,
                     "workers": "2", "database": None, "corpus": str(tmp_path / "corpus"),
                     "pytest_args": ["fuzz/", "-x"]},
             "processes": [_process(rng, w, names, case) for w, names in WORKERS.items()]}
    (run_dir / "statistics.json").write_text(json.dumps(stats))
    return run_dir, stats, case


@pytest.fixture
def run(tmp_path):
    return make_stats(tmp_path)


def test_report_is_self_contained_and_shows_everything(run):
    run_dir, stats, case = run
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", text)
    for name in TARGETS:
        assert name in text
    assert text.count('<svg class="chart"') >= 9
    assert f'href="{case.as_uri()}"' in text
    assert "log scale" in text
    assert "1 failure saved" in text
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "statistics.json"]


def test_render_is_deterministic_and_out_is_honoured(run, tmp_path):
    run_dir, stats, _ = run
    assert render_report(stats, run_dir=run_dir) == render_report(stats, run_dir=run_dir)
    out = write_report(run_dir, tmp_path / "elsewhere.html")
    assert out == tmp_path / "elsewhere.html" and out.read_text().startswith("<!DOCTYPE html>")
    assert not (run_dir / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_text_is_escaped(run):
    run_dir, stats, _ = run
    proc = stats["processes"][0]
    proc["targets"]["<script>alert(1)</script>[short]"] = {"examples": 1, "values": [0.5],
                                                          "metric": "error_ratio"}
    proc["failures"][0]["signature"] = '"><img src=x onerror=alert(1)>'
    proc["failures"][0]["case"] = "javascript:alert(1)"
    text = render_report(stats, run_dir=run_dir)
    assert "<script>" not in text and "<img" not in text and "href=\"javascript:" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;[short]" in text


def test_partial_and_empty_statistics_render(tmp_path):
    empty = render_report({"schema": 1, "run": {"state": "running"}, "processes": []},
                          run_dir=tmp_path)
    assert "No failures saved" in empty and "No target has run yet" in empty
    partial = {"run": None, "processes": [
        {"worker": "gw0", "targets": {"error_ratio[short]": {"examples": 3, "values": None,
                                                             "worst_margin": None,
                                                             "threshold": None}},
         "timeline": [{"t": T0, "examples": {"error_ratio[short]": 0},
                       "worst_margin": {"error_ratio[short]": None}}],
         "reach": None, "failures": [{"signature": "x", "case": "", "t": None}]},
        "not a process"]}
    text = render_report(partial, run_dir=tmp_path)
    assert "error_ratio[short]" in text and "not saved" in text
    nonfinite = {"processes": [{"targets": {"a[short]": {
        "metric": "error_ratio", "threshold": 2.0, "values": [0.0, 1e-3, 5.0, math.inf]}}}]}
    assert "<svg" in render_report(nonfinite, run_dir=tmp_path)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "statistics.json"))):
        write_report(tmp_path)
    stats = tmp_path / "statistics.json"
    stats.write_text("")
    with pytest.raises(ReportError, match=r"statistics\.json is empty"):
        write_report(tmp_path)
    stats.write_text('{"schema": 1, "run": {')
    with pytest.raises(ReportError, match=r"statistics\.json: not valid JSON \(line 1"):
        write_report(tmp_path)
    stats.write_text("[1, 2]")
    with pytest.raises(ReportError, match="statistics.json: expected a JSON object"):
        write_report(tmp_path)
    stats.write_text('{"schema": 2}')
    with pytest.raises(ReportError, match="schema 2 is not supported"):
        write_report(tmp_path)
    stats.write_text('{"processes": {}}')
    with pytest.raises(ValueError, match="'processes' must be a JSON array"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


# -- a real browser ----------------------------------------------------------------------

def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and the number of distinct bytes in the pixel data (a blank page has a
    handful), read with the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return width, height, len(set(pixels[::7]))


def test_chromium_draws_the_report(run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    run_dir, _, case = run
    report = write_report(run_dir)
    shot = tmp_path / "shot.png"
    done = _chromium(browser, tmp_path / "profile", f"--screenshot={shot}",
                     "--window-size=1400,2400", report.as_uri())
    assert shot.exists(), f"no screenshot: {done.stderr[-2000:]}"
    width, height, colours = _png_size_and_colours(shot)
    assert (width, height) == (1400, 2400)
    assert shot.stat().st_size > 20_000 and colours > 40
    if os.environ.get("ESMFUZZ_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ESMFUZZ_REPORT_SCREENSHOT"])
    dom = _chromium(browser, tmp_path / "profile", "--dump-dom", report.as_uri()).stdout
    source = report.read_text(encoding="utf-8")
    assert dom.count("<svg") == source.count("<svg") >= 9
    assert f'href="{case.as_uri()}"' in dom
    assert dom.count("<table") == 2 and "error_ratio[long]" in dom
