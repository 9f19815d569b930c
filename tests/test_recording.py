"""The recording format: what is written reads back the same (times to the microsecond, counters
exactly), and a file that is not a whole recording is said so in one line, naming where."""
import gzip
import json
import math
from dataclasses import replace
from typing import Any, Dict, List

import pytest

from coherence.config import Config, as_dict
from coherence.recording import (CPU_SERIES, VERSION, Chunk, End, Header, Recording,
                                 RecordingError, Track, decode_times, decode_values, encode_chunk,
                                 encode_times, encode_values, end_record, open_for_writing,
                                 write_record)


def header() -> Header:
    return Header(version=VERSION, coherence="test", host="h", kernel="Linux", started_at=1.7e9,
                  ncpu=2.0, ncpu_reason="test", hz=1000.0, slow_hz=20.0, runtime_hz=2.0,
                  resolution_s=0.1, pid=None, sources={"cpu": "cpu.test"},
                  available=("cpu", "memory"), settings=as_dict(Config()))


def chunk(k: int) -> Chunk:
    t = [k + i * 0.05 + 0.0000004 for i in range(20)]
    return Chunk(k + 1.0, (k + 0.25, k + 0.5), {
        CPU_SERIES: ([k + i / 10 for i in range(10)], [12.3456789 + i for i in range(10)]),
        "minor_faults_total": (t, [1e12 + 1000.0 * (20 * k + i) for i in range(20)]),
        "mem_resident_bytes": (t, [1.5e9 + 0.5 * i for i in range(20)]),
    }, tracks=(Track(0, "jvm 12", "jvm", 12),) if k == 0 else (),
        runtime=((k + 0.3, 0, {"gc_seconds_total": 1.5 * k}, ""),),
        lost=((k + 0.9, "minor_faults_total"),) if k == 2 else ())


def write(path: str, records: List[Dict[str, Any]], tail: str = "") -> None:
    stream = open_for_writing(path)
    for r in records:
        write_record(stream, r)
    stream.write(tail)
    stream.close()


def whole(n: int = 3) -> List[Dict[str, Any]]:
    return [header().as_json(), *(encode_chunk(chunk(k)) for k in range(n)),
            end_record(End(float(n), "duration", 0))]


def test_times_and_counters_round_trip_exactly():
    times = [0.0, 0.05, 0.1000004, 3600.123456]
    assert decode_times(encode_times(times)) == [0.0, 0.05, 0.1, 3600.123456]
    counters = [2.0 ** 52, 2.0 ** 52 + 7, 3.0]
    assert encode_values(counters) == {"dv": [2 ** 52, 7, 3 - (2 ** 52 + 7)]}
    assert decode_values(encode_values(counters)) == counters
    floats = [0.5, math.nan]
    assert decode_values(encode_values(floats))[0] == 0.5
    assert math.isnan(decode_values(encode_values(floats))[1])


@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
def test_a_recording_reads_back_what_was_written(tmp_path, name):
    path = str(tmp_path / name)
    write(path, whole())
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")
    rec = Recording(path)
    # settings go through JSON: the tuples of the Config come back as lists
    assert replace(rec.header, settings={}) == replace(header(), settings={})
    assert rec.header.settings == json.loads(json.dumps(as_dict(Config())))
    records = list(rec.records())
    assert isinstance(records[-1], End) and records[-1].reason == "duration"
    first = records[0]
    assert isinstance(first, Chunk)
    assert first.steps == (0.25, 0.5)
    times, values = first.series["minor_faults_total"]
    assert values == [1e12 + 1000.0 * i for i in range(20)]
    assert times[1] == pytest.approx(0.05, abs=1e-6)
    cpu = first.series[CPU_SERIES][1]
    assert cpu[0] == 12.346              # to 0.001 points of %
    assert first.tracks == (Track(0, "jvm 12", "jvm", 12),)
    assert first.runtime == ((0.3, 0, {"gc_seconds_total": 0.0}, ""),)
    third = records[2]
    assert isinstance(third, Chunk) and third.lost == ((2.9, "minor_faults_total"),)


def errors(path: str) -> RecordingError:
    with pytest.raises(RecordingError) as info:
        rec = Recording(path)
        list(rec.records())
    assert "\n" not in str(info.value)
    return info.value


def test_a_record_cut_short_is_reported_as_truncated(tmp_path):
    path = str(tmp_path / "cut.jsonl")
    lines = whole()
    write(path, lines[:2], tail=json.dumps(lines[2])[:40])
    err = errors(path)
    assert err.truncated and "line 3" in str(err) and "truncated" in str(err)


def test_a_file_without_its_end_record_is_truncated(tmp_path):
    path = str(tmp_path / "noend.jsonl.gz")
    write(path, whole()[:-1])
    err = errors(path)
    assert err.truncated and "without its end record" in str(err)


def test_a_gzip_stream_cut_short_keeps_the_records_before(tmp_path):
    path = str(tmp_path / "rec.jsonl.gz")
    write(path, whole(20))
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.jsonl.gz")
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    rec = Recording(cut)
    seen = []
    with pytest.raises(RecordingError) as info:
        for r in rec.records():
            seen.append(r)
    assert info.value.truncated
    assert len(seen) >= 5 and all(isinstance(r, Chunk) for r in seen)


@pytest.mark.parametrize("content, says", [
    ("", "empty file"),
    ("hello\n", "not a coherence recording"),
    ('{"format": "other"}\n', "not a coherence recording"),
    ('{"format": "coherence-recording", "version": 99}\n', "version 99"),
    ('{"format": "coherence-recording", "version": 1, "host": "h"}\n', "a header without"),
])
def test_a_bad_header_is_one_line(tmp_path, content, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert says in str(errors(str(path)))


@pytest.mark.parametrize("record, says", [
    ({"t": 1, "steps": [], "series": {"nonsense": {"t": [1], "v": [1]}}}, "unknown series"),
    ({"t": 1, "steps": [], "series": {"pgalloc_total": {"t": [1, 2], "v": [1]}}}, "2 times for 1"),
    ({"t": 1, "steps": [], "series": {"pgalloc_total": {"t": [5, -2], "v": [1, 2]}}},
     "back in time"),
    ({"t": 1, "series": {}}, "malformed record (no 'steps')"),
    ([1, 2], "not a record"),
])
def test_a_malformed_record_names_its_line(tmp_path, record, says):
    path = str(tmp_path / "bad.jsonl")
    write(path, [header().as_json(), encode_chunk(chunk(0)), record])
    err = errors(path)
    assert says in str(err) and "line 3" in str(err) and not err.truncated


def test_binary_garbage_is_not_a_recording(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    assert "gzip" in str(errors(str(path)))
    with gzip.open(str(tmp_path / "x.gz"), "wb") as f:
        f.write(b"\xff\xfe\x00not text\n")
    assert "not a coherence recording" in str(errors(str(tmp_path / "x.gz")))
