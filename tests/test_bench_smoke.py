"""Smoke test of `keygate bench --quick`: the harness runs end to end and its figures are sane.

It only asserts on the references that do not depend on the gateway (direct and bare), so that
the harness is checked even while keygate itself is changing; keygate's own figures are the
benchmark's business, not this test's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("wrk") is None
        or (shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK)),
        reason="needs the nginx and wrk binaries (apt-get install nginx-light wrk)",
    ),
]


def test_quick_run_writes_clean_figures_for_direct_and_bare(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "keygate.benchmark", "--quick", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Targets (issue 7)" in proc.stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.txt").exists()

    refs = data["references"]
    for ref in ("direct", "bare"):
        series = refs[ref]["wrk"]
        assert set(series) == {"1", "10"}, (ref, series)
        for c, run in series.items():
            assert run["rps"] > 0 and run["requests"] > 0, (ref, c, run)
            assert run["p50_ms"] is not None and run["p99_ms"] is not None, (ref, c, run)
            assert run["errors"] == 0 and not run["flagged"], (ref, c, run)
    assert refs["bare"]["startup_s"] > 0
    assert refs["bare"]["memory"]["idle_mb"] > 0
    assert refs["bare"]["added_c1"]["p50_ms"] is not None

    if importlib.util.find_spec("keygate.testing.mock_upstream") is not None:
        for ref in ("direct", "bare"):
            streams = refs[ref]["streams"]
            assert streams["failed_streams"] == 0, (ref, streams)
            assert streams["chunks_lost"] == 0, (ref, streams)
            assert streams["gap_p50_ms"] is not None, (ref, streams)
        assert refs["bare"]["memory"]["peak_streams_mb"] > 0
        assert refs["bare"]["memory"]["after_load_mb"] > 0

    targets = {v["target"] for v in data["verdict"]}
    assert any(t.startswith("throughput c=50") for t in targets)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench.png").stat().st_size > 0


def test_wrk_parser_reads_latency_errors_and_units() -> None:
    sys.path.insert(0, str(SRC))
    from keygate.benchmark.wrk import lua_script, parse_wrk

    out = """Running 2s test @ http://127.0.0.1:8080/v1/chat/completions
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.21ms    1.03ms  30.12ms   90.00%
    Req/Sec     4.90k   100.00     5.00k    80.00%
  Latency Distribution
     50%    9.80ms
     75%   10.50ms
     90%   11.00ms
     99%    1.20s
  9800 requests in 2.00s, 5.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   4900.12
Transfer/sec:      2.50MB
"""
    r = parse_wrk(out, 50, 2)
    assert r.rps == pytest.approx(4900.12)
    assert r.requests == 9800
    assert r.p50_ms == pytest.approx(9.8)
    assert r.p99_ms == pytest.approx(1200.0)
    assert r.non_2xx == 7 and r.socket_errors["read"] == 3 and r.socket_errors["timeout"] == 2
    assert r.error_count == 12 and r.flagged
    assert parse_wrk("garbage", 1, 1).flagged

    script = lua_script(b'{"a":"b\\\\c\\n"}', {"Authorization": "Bearer x"})
    assert 'wrk.body = "{\\034a\\034:\\034b\\092\\092c\\092n\\034}"' in script
    assert 'wrk.headers["Authorization"] = "Bearer x"' in script


def test_rounds_take_the_median_of_each_rounds_own_ratio() -> None:
    """One drifting round must not decide the verdict: with rounds, the check reads the median
    of the per-round ratios, and each reference's figure is its median round."""
    sys.path.insert(0, str(SRC))
    from keygate.benchmark import report
    from keygate.benchmark.case_wrk import run_rounds
    from keygate.benchmark.servers import Target

    rps = {  # bare drifts: round 2 is fast for everyone, round 3 slow for keygate only
        "bare": iter([5000.0, 8000.0, 5000.0]),
        "keygate": iter([4250.0, 6800.0, 2500.0]),
        "unified": iter([4250.0, 6800.0, 2500.0]),
    }

    class FakeBench:
        opts = type("O", (), {"rounds": 3})()
        refs: dict[str, dict[str, object]] = {"bare": {}, "keygate": {}, "unified": {}}
        ratios: dict[str, dict[str, object]] = {}

        def wrk_case(self, t: Target, c: int) -> dict[str, object]:
            return {"rps": next(rps[t.name]), "flagged": False, "p50_ms": 1.0}

    bench = FakeBench()
    targets = [Target(n, 1, "/") for n in ("bare", "keygate", "unified")]
    run_rounds(bench, targets, 50)  # type: ignore[arg-type]
    paired = bench.ratios["50"]["keygate/bare"]
    assert paired["rounds"] == [0.85, 0.85, 0.5]
    assert paired["median"] == pytest.approx(0.85)
    assert bench.refs["keygate"]["wrk"]["50"]["rps"] == 4250.0  # the median round, not the mean
    assert bench.refs["keygate"]["wrk"]["50"]["rounds_rps"] == [4250.0, 6800.0, 2500.0]
    data = {"references": bench.refs, "ratios": bench.ratios}
    check = next(v for v in report.verdict(data) if v["target"].startswith("throughput c=50"))
    assert check["status"] == "pass" and check["value"] == pytest.approx(0.85)
    assert "(median of rounds 0.85, 0.85, 0.50)" in check["shown"]
    # one round only: the single pair decides, as before
    single = {"references": bench.refs, "ratios": None}
    check = next(v for v in report.verdict(single) if v["target"].startswith("throughput c=50"))
    assert check["value"] == pytest.approx(4250.0 / 5000.0)
