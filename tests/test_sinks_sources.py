"""What `coherence sources` prints, from rows as coherence.sources.describe() gives them."""
import json

from coherence.sinks.sources import HEADER, json_lines, table_lines
from coherence.sources import Row

ROWS = [Row("cpu", "cpu.cgroup2", True, True, 2000.0, "/sys/fs/cgroup/cpu.stat usage_usec"),
        Row("cpu", "cpu.procstat", True, False, 100.0, "/proc/stat cpu line"),
        Row("pressure", "pressure.psi", False, False, 1000.0, "no /proc/pressure")]


def test_the_table_aligns_columns_and_says_why():
    lines = table_lines(ROWS, 2.0, "2 CPUs in the affinity mask")
    assert lines[0].split() == ["FAMILY", "SOURCE", "STATE", "MAX", "HZ", "WHAT", "/", "WHY", "NOT"]
    column = lines[0].index("STATE")
    assert [line[column:].split("  ")[0] for line in lines[1:4]] == ["in use", "available", "unavailable"]
    assert lines[3].endswith("no /proc/pressure") and len(HEADER) == 5
    assert "normalized to 2 CPUs: 2 CPUs in the affinity mask." in lines[-2]


def test_json_lines_are_one_object_per_source_then_the_cpus():
    objects = [json.loads(line) for line in json_lines(ROWS, 1.5, "quota")]
    assert objects[0] == {"family": "cpu", "name": "cpu.cgroup2", "available": True, "in_use": True,
                          "max_hz": 2000.0, "reason": "/sys/fs/cgroup/cpu.stat usage_usec"}
    assert objects[-1] == {"cpus": 1.5, "cpus_reason": "quota"} and len(objects) == 4
