"""schemathesis against the API of a running release gateway (the demo,
whose `plc-1` takes writes), with the read+write token the demo prints:
every operation of the OpenAPI document the gateway serves is called with
generated valid and invalid input; no answer may be a 5xx, and every answer
must match the document (status codes, content types, schemas).

The live stream is left out (an endless body). The anchoring routes
(batches, proofs) are checked like every other: the demo seals (and, with
anvil installed, anchors) batches every 2 s.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import base_env, start_demo, stop_demo

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def schemathesis(url: str, token: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{url}v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--generation-deterministic",
            "--request-timeout",
            "30",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        cwd=workdir,  # its cache (.schemathesis/) stays out of the work tree
        env=base_env({"SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}),
    )


def test_the_api_matches_its_openapi_document(dev_bin: Path, tmp_path: Path) -> None:
    demo, url, token = start_demo(dev_bin, tmp_path / "demo", duration="15m")
    try:
        run = schemathesis(url, token, tmp_path, "--checks", CHECKS, "--exclude-path", "/v1/stream")
    finally:
        stop_demo(demo)
    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    assert "Tested:" in run.stdout, run.stdout[-5000:]
