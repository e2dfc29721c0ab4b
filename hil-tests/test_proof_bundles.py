"""Proof bundles for every verifier (issue #15, item 14): a JavaScript
verifier (Node's JSON.parse, BigInt, keccak256 from js-sha3) recomputes a
bundle's encoding, leaf and root. In format 1, `ts` (nanoseconds, about
1.8e18), `seq` and i64 values above 2^53 were JSON numbers, which
JSON.parse rounds, so the encoding it recomputed was wrong; format 2 writes
every integer as a decimal string, and the gateway still reads format 1.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import REPO, run_cli
from test_modbus_tcp import free_port, wait_until
from test_mqtt import pub

VERIFIER = REPO / "hil-tests" / "peers" / "verify_bundle.mjs"
BIG = 2**53 + 1  # 9007199254740993: a double cannot hold it


def node_verify(bundle: Path) -> dict:
    out = subprocess.run(["node", str(VERIFIER), str(bundle)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def as_format_1(bundle: dict) -> dict:
    """The same bundle as format 1 wrote it: integers as JSON numbers."""
    text = json.dumps(bundle)
    text = re.sub(r'"(-?\d+)"', r"\1", text)  # every all-digit string was an integer
    old = json.loads(text)
    old["format"] = "biota-proof/1"
    return old


def test_a_bundle_is_exact_for_a_javascript_verifier(gateway_bin, spawn, write_config, state_dir, tmp_path):
    port = free_port()
    config = write_config(
        f"""
[anchor]
batch_max_age = "1s"

[drivers.mqtt.broker]
listen = "127.0.0.1:{port}"

[[drivers.mqtt.rules]]
topic = "t/{{device}}/{{point}}"
format = "plain"
"""
    )
    gw = spawn(gateway_bin, config, state_dir)
    gw.wait_ready(timeout=30)
    assert pub(port, "t/meter-1/count", str(BIG)).returncode == 0
    bundle_path = tmp_path / "bundle.json"

    def sealed_proof():
        out = run_cli(gateway_bin, "proof", "--state-dir", str(state_dir), "--seq", "1", "--out", str(bundle_path))
        return out.returncode == 0 and bundle_path.exists()

    wait_until(sealed_proof, 30, "the reading sealed into a batch")
    bundle = json.loads(bundle_path.read_text())
    assert bundle["format"] == "biota-proof/2", bundle["format"]
    reading = bundle["reading"]
    assert reading["value"] == {"i64": str(BIG)}, reading
    assert isinstance(reading["ts"], str) and isinstance(reading["seq"], str), reading
    assert int(reading["ts"]) > 2**53

    result = node_verify(bundle_path)
    assert result == {"encoding": True, "leaf": True, "root": True, "ts": reading["ts"]}, result
    # The gateway's own verifier agrees.
    assert run_cli(gateway_bin, "verify", str(bundle_path)).returncode == 0

    # Format 1: JavaScript rounds what it reads and recomputes a wrong
    # encoding; the gateway still verifies it (its JSON reader is exact).
    old_path = tmp_path / "bundle-v1.json"
    old_path.write_text(json.dumps(as_format_1(bundle)))
    rounded = node_verify(old_path)
    assert rounded["encoding"] is False and rounded["ts"] != reading["ts"], rounded
    checked = run_cli(gateway_bin, "verify", str(old_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert gw.stop(timeout=30) == 0
