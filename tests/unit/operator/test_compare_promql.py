"""The Prometheus source's compare query, run by Prometheus' own rule tester (`promtool`).

Pod ``a`` holds version v1 of the pushed edges throughout; pod ``b`` switched from v0 to v1
inside the first window, so its counts there were binned on two sets of edges and are left
out; once a whole window holds only v1, they count. A missing promtool fails this test (it
comes with Debian's prometheus package, as for the chart's alert tests).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from roost_operator.analysis import compare_query

SERIES = [
    ('roost_prediction_compare_total{model="m",pod="a",bin="0"}', "0+10x12"),
    ('roost_prediction_compare_info{model="m",pod="a",version="v1"}', "1x12"),
    ('roost_prediction_compare_total{model="m",pod="b",bin="0"}', "0+100x12"),
    ('roost_prediction_compare_info{model="m",pod="b",version="v0"}', "1 1 1"),
    ('roost_prediction_compare_info{model="m",pod="b",version="v1"}', "_ _ _ 1x9"),
]


def test_only_pods_with_one_version_all_window_long_are_counted(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (make system-deps)"
    rules = {
        "groups": [
            {
                "name": "t",
                "rules": [{"record": "t:compare", "expr": compare_query('model="m"', "60s")}],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    samples = [("75s", 40), ("165s", 440)]  # a: 10/15 s; b: 100/15 s, once its window is clean
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in SERIES],
                "promql_expr_test": [
                    {
                        "expr": "t:compare",
                        "eval_time": at,
                        "exp_samples": [{"labels": 't:compare{version="v1",bin="0"}', "value": n}],
                    }
                    for at, n in samples
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
