"""The command line besides `run`: print-default-config, check-config,
demo, and query (latest, range with cursors, aggregate; json and csv),
checked against the database read directly with Python's sqlite3.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from pathlib import Path

import pytest

from conftest import (
    REPO,
    Gateway,
    assert_gapless,
    assert_no_panic,
    open_db_ro,
    run_cli,
    run_query,
)

READING_KEYS = {"device", "point", "ts", "time", "value", "kind", "unit", "quality", "seq", "source"}

# A short run with every waveform, a profile with units and several kinds.
SHORT_RUN_CONFIG = """\
[store]
commit_max_delay = "20ms"

[store.retention]
max_size = "off"

[profiles.press]
[profiles.press.points.temp_raw]
name = "temperature"
type = "f64"
scale = 0.1
unit = "Cel"

[[drivers.sim.devices]]
id = "press-1"
profile = "press"
points = [
  { name = "temp_raw", waveform = "sine", rate = 400, min = 150, max = 850, period = 1 },
  { name = "strokes", waveform = "counter", rate = 100, step = 1 },
  { name = "running", waveform = "toggle", rate = 5 },
]

[[drivers.sim.devices]]
id = "pump"
copies = 2
points = [
  { name = "flow", waveform = "random_walk", rate = 200, min = 0, max = 10, step = 0.5 },
  { name = "level", waveform = "ramp", rate = 50, min = 0, max = 100, period = 2 },
]
"""


# ---------------------------------------------------------------------------
# Configuration commands
# ---------------------------------------------------------------------------


def test_print_default_config_is_the_sample_and_passes_check_config(gateway_bin, tmp_path):
    result = run_cli(gateway_bin, "print-default-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "config" / "gateway.toml").read_text(), (
        "print-default-config differs from config/gateway.toml"
    )
    printed = tmp_path / "default.toml"
    printed.write_text(result.stdout)
    check = run_cli(gateway_bin, "check-config", printed)
    assert check.returncode == 0, f"check-config on print-default-config's output:\n{check.stderr}"
    assert_no_panic(check.stderr)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.toml")))
def test_every_shipped_config_passes_check_config(gateway_bin, name):
    result = run_cli(gateway_bin, "check-config", REPO / "config" / name)
    assert result.returncode == 0, f"config/{name}:\n{result.stderr}"


def test_usage_error_exits_2(gateway_bin):
    result = run_cli(gateway_bin, "run", "--no-such-flag")
    assert result.returncode == 2, result.stderr
    assert_no_panic(result.stderr)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def test_demo_runs_and_summarizes(dev_bin, tmp_path):
    state = tmp_path / "demo"
    started = time.monotonic()
    result = run_cli(dev_bin, "demo", "--duration", "3s", "--state-dir", state, timeout=60)
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, f"demo exited {result.returncode}\nstdout:\n{out}\nstderr:\n{result.stderr}"
    assert_no_panic(result.stderr)
    assert elapsed < 20, f"demo --duration 3s took {elapsed:.1f}s"

    rate = re.search(r"([\d,]+(?:\.\d+)?) readings/s", out)
    assert rate, f"no readings/s figure in the demo's output:\n{out}"
    assert float(rate.group(1).replace(",", "")) > 0
    assert re.search(r"Example: .*query", out), f"no example query in the demo's output:\n{out}"
    example = out[out.index("Example:"):]
    assert re.search(r"^press-1\s+\S+", example, re.M), f"the example query shows no reading:\n{out}"
    # The simulated PLC is read over Modbus TCP, served in-process by the demo.
    plc_rows = re.findall(r"^plc-1\s+(\S+)\s.*\bgood\s+\d+\s+modbus-tcp://127\.0\.0\.1:\d+/1$", example, re.M)
    assert {"parts", "temperature", "pressure", "conveyor_on"} <= set(plc_rows), (
        f"the demo shows no Modbus readings of plc-1:\n{out}"
    )
    # It writes a setpoint through the control socket and reads it back.
    assert re.search(r"plc-1/speed_setpoint = 12\.5 .*read back and verified", out), out
    assert re.search(r"^plc-1\s+online\s+\d+", out, re.M), f"no device counters:\n{out}"
    # MQTT devices publish to the embedded broker: JSON (profile-scaled) and SenML.
    meter = re.findall(r"^meter-1\s+(\S+)\s.*\b(kWh?)\s+good\s+\d+\s+mqtt://127\.0\.0\.1:\d+/plant/meter-1/json$", example, re.M)
    assert {("energy", "kWh"), ("power", "kW")} <= set(meter), f"no MQTT meter readings:\n{out}"
    env = re.findall(r"^env-1\s+(\S+)\s.*\s(Cel|%RH)\s+good\s+\d+\s+mqtt://", example, re.M)
    assert {("temperature", "Cel"), ("humidity", "%RH")} <= set(env), f"no SenML readings:\n{out}"
    # A CoAP sensor posts confirmable SenML packs, acknowledged after commit.
    coap = re.findall(r"^coap-1\s+(\S+)\s.*\s(Cel|V)\s+good\s+\d+\s+coap://127\.0\.0\.1/v1/devices/coap-1$", example, re.M)
    assert {("temperature", "Cel"), ("battery", "V")} <= set(coap), f"no CoAP readings:\n{out}"

    db = state / "gateway.db"
    stats = assert_gapless(db)
    assert stats.max > 1000, f"demo committed only {stats.max} readings"
    committed = re.search(r"committed\s+([\d,]+) readings", out)
    assert committed, f"no committed count in the summary:\n{out}"
    assert int(committed.group(1).replace(",", "")) == stats.max, (
        f"summary says {committed.group(1)} committed, database holds {stats.max}"
    )


# ---------------------------------------------------------------------------
# query, on the database of a short run
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run_db(gateway_bin, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("short-run")
    config = tmp / "gateway.toml"
    config.write_text(SHORT_RUN_CONFIG)
    state = tmp / "state"
    gw = Gateway(gateway_bin, config, state, log_dir=tmp)
    try:
        gw.wait_ready(timeout=15)
        time.sleep(2.5)
        code = gw.stop(timeout=40)
        assert code == 0, gw.stderr()
    finally:
        gw.kill()
    db = state / "gateway.db"
    assert_gapless(db)
    return db


def db_rows(db: Path, device: str | None = None, point: str | None = None) -> list[dict]:
    """Every reading as the database holds it, oldest first (ts, seq)."""
    conn = open_db_ro(db)
    try:
        sql = """SELECT r.seq, s.device, s.point, r.ts, r.flags, r.value, l.unit, l.source
                 FROM readings r JOIN series s ON s.id = r.series JOIN labels l ON l.id = r.label"""
        where, args = [], []
        if device is not None:
            where.append("s.device = ?")
            args.append(device)
        if point is not None:
            where.append("s.point = ?")
            args.append(point)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.ts, r.seq"
        return [
            dict(seq=seq, device=d, point=p, ts=ts, flags=flags, value=value, unit=unit or None, source=source)
            for seq, d, p, ts, flags, value, unit, source in conn.execute(sql, args)
        ]
    finally:
        conn.close()


KINDS = {1: "bool", 2: "i64", 3: "f64", 4: "text", 5: "bytes"}
QUALITIES = {0: "good", 1: "uncertain", 2: "bad"}


def json_value(row: dict):
    kind = KINDS[row["flags"] >> 2]
    return bool(row["value"]) if kind == "bool" else row["value"]


def assert_reading_matches(got: dict, row: dict) -> None:
    assert set(got) == READING_KEYS, f"keys {sorted(got)}"
    assert got["seq"] == row["seq"]
    assert (got["device"], got["point"], got["ts"]) == (row["device"], row["point"], row["ts"])
    assert got["kind"] == KINDS[row["flags"] >> 2]
    assert got["quality"] == QUALITIES[row["flags"] & 3]
    assert got["value"] == json_value(row), f"seq {row['seq']}: {got['value']!r} != {json_value(row)!r}"
    assert got["unit"] == row["unit"]
    assert got["source"] == row["source"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", got["time"]), got["time"]


def test_query_latest_json_matches_the_database(gateway_bin, short_run_db):
    got = json.loads(run_query(gateway_bin, short_run_db, "latest").stdout)
    rows = db_rows(short_run_db)
    # The latest reading of a series: greatest ts, then greatest seq.
    latest: dict[tuple[str, str], dict] = {}
    for row in rows:
        latest[(row["device"], row["point"])] = row
    assert len(got) == len(latest) == 3 + 2 * 2, [(g["device"], g["point"]) for g in got]
    for reading in got:
        assert_reading_matches(reading, latest[(reading["device"], reading["point"])])
    kinds = {(g["device"], g["point"]): g["kind"] for g in got}
    assert kinds[("press-1", "temperature")] == "f64"
    assert kinds[("press-1", "strokes")] == "i64"
    assert kinds[("press-1", "running")] == "bool"
    assert {g["unit"] for g in got if g["point"] == "temperature"} == {"Cel"}

    only = json.loads(run_query(gateway_bin, short_run_db, "latest", "--device", "pump-2").stdout)
    assert {(g["device"], g["point"]) for g in only} == {("pump-2", "flow"), ("pump-2", "level")}


def range_pages(gateway_bin, db: Path, device: str, point: str, limit: int) -> tuple[list[dict], int]:
    rows: list[dict] = []
    cursor = None
    pages = 0
    while True:
        args = ["range", "--device", device, "--point", point, "--from", "0", "--to", "now", "--limit", str(limit)]
        if cursor:
            args += ["--cursor", cursor]
        result = run_query(gateway_bin, db, *args)
        page = json.loads(result.stdout)
        pages += 1
        assert len(page) <= limit
        rows.extend(page)
        found = re.search(r"next cursor: (\S+)", result.stderr)
        if not found or not page:
            assert len(page) < limit or not page or found, "a full page without a cursor"
            return rows, pages
        assert found.group(1) != cursor, "the cursor did not advance"
        cursor = found.group(1)
        assert pages < 10_000, "endless paging"


@pytest.mark.parametrize("device,point", [("press-1", "temperature"), ("pump-1", "flow")])
def test_query_range_pages_with_cursor_concatenate_to_one_range(gateway_bin, short_run_db, device, point):
    expected = db_rows(short_run_db, device, point)
    assert len(expected) > 300, f"only {len(expected)} readings of {device}/{point}"

    whole = json.loads(
        run_query(
            gateway_bin, short_run_db,
            "range", "--device", device, "--point", point, "--from", "0", "--to", "now", "--limit", "1000000",
        ).stdout
    )
    assert [r["seq"] for r in whole] == [r["seq"] for r in expected], "one big range differs from the database"
    for got, row in zip(whole, expected):
        assert_reading_matches(got, row)

    paged, pages = range_pages(gateway_bin, short_run_db, device, point, limit=97)
    seqs = [r["seq"] for r in paged]
    assert len(seqs) == len(set(seqs)), "a reading appears on two pages"
    assert paged == whole, "the pages do not concatenate to the single range"
    assert pages >= len(expected) // 97
    ts = [r["ts"] for r in paged]
    assert ts == sorted(ts), "range is not oldest first"


def test_query_range_respects_from_and_to(gateway_bin, short_run_db):
    expected = db_rows(short_run_db, "pump-1", "level")
    lo, hi = expected[len(expected) // 4]["ts"], expected[3 * len(expected) // 4]["ts"]
    got = json.loads(
        run_query(
            gateway_bin, short_run_db,
            "range", "--device", "pump-1", "--point", "level", "--from", str(lo), "--to", str(hi), "--limit", "100000",
        ).stdout
    )
    want = [r["seq"] for r in expected if lo <= r["ts"] < hi]
    assert [r["seq"] for r in got] == want, "--from is inclusive, --to exclusive"


@pytest.mark.parametrize("device,point", [("press-1", "temperature"), ("press-1", "strokes")])
def test_query_aggregate_1s_buckets_match_the_database(gateway_bin, short_run_db, device, point):
    rows = db_rows(short_run_db, device, point)
    buckets: OrderedDict[int, list] = OrderedDict()
    for row in rows:
        buckets.setdefault(row["ts"] // 1_000_000_000 * 1_000_000_000, []).append(row["value"])

    got = json.loads(
        run_query(
            gateway_bin, short_run_db,
            "aggregate", "--device", device, "--point", point, "--bucket", "1s", "--from", "0", "--to", "now",
        ).stdout
    )
    assert [b["start"] for b in got] == list(buckets), "bucket starts differ (1 s buckets from the epoch)"
    assert sum(b["count"] for b in got) == len(rows)
    for b in got:
        values = buckets[b["start"]]
        assert b["count"] == len(values)
        assert float(b["min"]) == float(min(values))
        assert float(b["max"]) == float(max(values))
        assert float(b["first"]) == float(values[0])
        assert float(b["last"]) == float(values[-1])
        assert b["avg"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert b["min"] <= b["avg"] <= b["max"]


def test_query_csv_has_a_header_and_the_same_rows(gateway_bin, short_run_db):
    got_json = json.loads(run_query(gateway_bin, short_run_db, "latest").stdout)
    csv = run_query(gateway_bin, short_run_db, "latest", fmt="csv").stdout.splitlines()
    header = csv[0].split(",")
    assert {"device", "point", "value", "seq"} <= set(header), f"header: {csv[0]}"
    assert len(csv) == 1 + len(got_json)
    seq_col = header.index("seq")
    assert sorted(int(line.split(",")[seq_col]) for line in csv[1:]) == sorted(g["seq"] for g in got_json)

    agg = run_query(
        gateway_bin, short_run_db,
        "aggregate", "--device", "pump-1", "--point", "flow", "--bucket", "1s", "--from", "0", "--to", "now",
        fmt="csv",
    ).stdout.splitlines()
    assert "count" in agg[0].split(","), f"header: {agg[0]}"
    assert len(agg) >= 2


def test_query_on_a_missing_database_fails_cleanly(gateway_bin, tmp_path):
    missing = tmp_path / "nothing.db"
    result = run_cli(gateway_bin, "query", "--db", missing, "latest")
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert_no_panic(result.stderr)
    assert not missing.exists(), "a query must not create a database"
