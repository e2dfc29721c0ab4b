"""The web console in a real browser: `biota-dev demo` (release build)
serves it, and headless Chromium (Debian's package) driven by playwright-core
(npm, hil-tests/package.json) signs in with the token the demo prints, sees
the demo's devices update live, opens a point's chart and visits every page
(browser/console.mjs). Screenshots go to <repo>/test-artifacts/console/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import REPO, run_cli, start_demo, stop_demo

HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "test-artifacts" / "console"


def test_console_in_chromium(release_bin: Path, dev_bin: Path, tmp_path: Path) -> None:
    node_modules = HERE / "node_modules" / "playwright-core"
    assert node_modules.is_dir(), "playwright-core is missing: scripts/test runs npm ci in hil-tests/"
    assert Path("/usr/bin/chromium").exists(), "Debian's chromium is missing: scripts/test installs it"
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    demo, url, token = start_demo(dev_bin, tmp_path / "demo")
    try:
        run = subprocess.run(
            ["node", str(HERE / "browser" / "console.mjs"), url, token, str(ARTIFACTS)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
        )
        # The proof the console downloaded verifies on the demo's chain,
        # checked by the CLI while that chain still runs.
        assert demo.anvil_rpc, "the demo started no local chain (anvil is installed by scripts/test)"
        proof = ARTIFACTS / "proof.json"
        verified = run_cli(release_bin, "verify", str(proof), "--rpc", demo.anvil_rpc) if proof.is_file() else None
    finally:
        stop_demo(demo)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    assert lines, f"no findings from the browser script:\n{run.stdout}\n{run.stderr}"
    findings = json.loads(lines[-1])
    assert findings["ok"], f"{findings.get('error')}\npage: {findings.get('page_text')}\n{run.stderr}"
    assert run.returncode == 0
    assert findings["live_value_changed"]
    assert findings["foreign_requests"] == []
    assert "anchored: block" in findings["anchoring"]
    assert verified is not None and verified.returncode == 0, verified and verified.stdout + verified.stderr
    assert verified.stdout.strip().endswith("verified") and "NOT" not in verified.stdout
    for name in ["login", "overview", "devices", "device", "point", "anchoring"]:
        shot = ARTIFACTS / f"{name}.png"
        assert shot.is_file() and shot.stat().st_size > 5_000, f"screenshot {shot}"
