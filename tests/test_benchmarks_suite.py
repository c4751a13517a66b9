"""benchmarks.suite at --size=ci: every program runs and its printed tables land in suite.json.

One run of the whole ci suite (all programs, none skipped; compare_torch reports "torch absent"
when this interpreter has no torch) is shared by the tests. The parsed cells are checked against
the programs' own definitions (faces/s = 2 x batch x batches/s, frames/s = frames / seconds, ...)
and against train_throughput's JSON, so a column parsed into the wrong place fails.
"""
import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from benchmarks.suite import PROGRAMS, parse_aligned, parse_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    done = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--size=ci", f"--output={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(out / "suite.json") as f:
        report = json.load(f)
    return out, report, done.stdout


def _entry(report, name):
    return next(e for e in report["programs"] if e["name"] == name)


def _table(report, name):
    tables = _entry(report, name)["tables"]
    assert len(tables) == 1 and tables[0]["rows"], (name, tables)
    return tables[0]


def test_every_program_ran_and_reported(suite):
    out, report, stdout = suite
    assert report["size"] == "ci" and report["jobs"] == 2 and report["finished"] and report["seconds"] > 0
    ci_programs = [p for p in PROGRAMS if "ci" in p.flags]  # scaling has no ci size
    assert [e["name"] for e in report["programs"]] == [p.name for p in ci_programs]
    for e in report["programs"]:
        assert e["status"] == "ok" and e["returncode"] == 0 and e["seconds"] > 0, e
        assert os.path.exists(out / f"{e['name']}.out") and os.path.exists(out / f"{e['name']}.log")
        if e["name"] == "compare_torch" and not find_spec("torch"):
            assert e["tables"] == [] and any(n.startswith("torch absent:") for n in e["notes"]), e
            assert e["json"]["torch"] == "absent"
            continue
        for table in e["tables"]:
            assert table["rows"] and all(list(row) == table["columns"] for row in table["rows"]), table
    md = (out / "suite.md").read_text()
    for p in ci_programs:
        assert f"## {p.name} (ok, " in md and f"## {p.name} (ok, " in stdout


def test_train_row_matches_the_programs_json(suite):
    _, report, _ = suite
    row = _table(report, "train_throughput")["rows"][0]
    result = _entry(report, "train_throughput")["json"]["results"][0]
    assert (row["archi"], row["res"], row["batch"]) == ("tiny", 32, 2)
    # the table prints one decimal: equal within 0.05 (+ float noise)
    for column, part in (("e2e samples/s", "end_to_end"), ("model samples/s", "model_only")):
        assert abs(row[column] - result[part]["samples_per_s"]) <= 0.051
        assert abs(row[column] - 2 * 2 / (result[part]["step_ms"] / 1e3)) <= 0.051


def test_parsed_columns_follow_each_programs_definitions(suite):
    _, report, _ = suite
    for row in _table(report, "extract_throughput")["rows"]:  # frames/s = frames / seconds (2-decimal s)
        assert row["frames"] >= 1 and row["faces"] >= 1
        # seconds are rounded to 0.01 and frames/s to 0.1: bound the true rate from both roundings
        low = row["frames"] / (row["seconds"] + 0.005) - 0.05 - 1e-9
        high = row["frames"] / max(row["seconds"] - 0.005, 1e-9) + 0.05 + 1e-9
        assert low <= row["frames/s"] <= high
    data = _table(report, "data_throughput")
    assert data["columns"] == ["size", "mode", "batch", "load s", "batches/s", "faces/s", "3x steps/s"]
    assert [r["mode"] for r in data["rows"]] == ["resident", "streamed"]
    for r in data["rows"]:  # faces/s printed as an integer, batches/s with one decimal
        assert abs(r["faces/s"] - 2 * r["batch"] * r["batches/s"]) <= 0.5 + 2 * r["batch"] * 0.05
        assert abs(r["3x steps/s"] - r["batches/s"] / 3) <= 0.05 + 0.05 / 3 + 1e-9  # both rounded to 0.1
    read = _table(report, "faceset_read")
    assert read["columns"][:2] == ["size", "codec"] and "MB/s (3)" in read["columns"]
    row = read["rows"][0]
    assert (row["size"], row["codec"]) == (64, "raw")
    for rate, mbs in (("cold f/s", "MB/s"), ("no-cache f/s", "MB/s (2)"), ("warm f/s", "MB/s (3)")):
        assert abs(row[mbs] - row[rate] * 64 * 64 * 3 / 1e6) <= 0.5 + 0.5 * 64 * 64 * 3 / 1e6
    merge = _table(report, "merge_throughput")["rows"][0]
    # ratio = ours / reference, within what printing both rates with one decimal allows
    ours, ref = merge["ours frames/s"], merge["OpenCV reference frames/s"]
    assert (ours - 0.05) / (ref + 0.05) - 0.005 <= merge["ratio"] <= (ours + 0.05) / max(ref - 0.05, 1e-9) + 0.005
    xseg = _table(report, "xseg_throughput")["rows"][0]
    assert xseg["preset"] == "tiny" and xseg["train samples/s"] > 0 and xseg["apply faces/s (batch 4)"] > 0


def test_parsers_on_partial_and_aligned_output():
    # A header whose separator has not arrived yet is a note until it does.
    assert parse_markdown(["| a | b |"]) == ([], ["| a | b |"])
    tables, notes = parse_markdown(["intro", "| a | a |", "|---|---|", "| 1 | x |", "| 2.5 | 3% |"])
    assert notes == ["intro"]
    assert tables == [{"columns": ["a", "a (2)"], "rows": [{"a": 1, "a (2)": "x"}, {"a": 2.5, "a (2)": "3%"}]}]
    # right-aligned as the programs print them: f"{'size':>4} {'mode':>5} {'load s':>6}"
    lines = ["8 faces, in /tmp/x", "size  mode load s", "  64  fast   0.25", " 128  slow  12.00", "done"]
    tables, notes = parse_aligned(lines)
    assert notes == ["8 faces, in /tmp/x", "done"]
    assert tables == [{"columns": ["size", "mode", "load s"],
                       "rows": [{"size": 64, "mode": "fast", "load s": 0.25},
                                {"size": 128, "mode": "slow", "load s": 12.0}]}]
