"""On-chain anchoring end to end (issue #6): the gateway seals the sim
driver's readings into batches and anchors them with its own key on a real
local chain (anvil, from npm), through the contract compiled by solc-js.

- proofs of readings sampled across batches verify off-chain (`verify`) and
  on-chain (`eth_call` of the contract's verifyReading); one changed field
  fails both;
- a row changed directly in SQLite: `audit` names it and its proof fails;
- anvil stopped during ingest, the gateway restarted once in between:
  afterwards every batch is anchored, in order, none twice;
- a reorg (anvil snapshot/revert) that drops an anchor: the gateway re-sends;
- a transaction stuck in the pool (automine off) is replaced, same nonce,
  higher fees, and the batch is anchored once;
- a gateway whose address the contract does not authorize anchors nothing
  and says why.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from cdm import reading_struct
from chain import Anvil, anchor_contract
from conftest import Gateway, run_cli


def gateway_config(rpc: str, contract: str, *, batch: int = 200, age: str = "1s",
                   confirmations: int = 1, rate: float = 100) -> str:
    return f"""\
[store]
commit_max_delay = "20ms"

[store.retention]
max_size = "off"

[anchor]
batch_max_readings = {batch}
batch_max_age = "{age}"
backend = "evm"

[anchor.evm]
rpc = "{rpc}"
contract = "{contract}"
chain_id = 31337
confirmations = {confirmations}
poll_interval = "200ms"
resubmit_after = "5s"

[[drivers.sim.devices]]
id = "press-1"
points = [
  {{ name = "temp", waveform = "sine", rate = {rate}, min = 350, max = 650, period = 20 }},
  {{ name = "strokes", waveform = "counter", rate = {rate} }},
  {{ name = "running", waveform = "toggle", rate = 2 }},
]
"""


def db_rows(db: Path, sql: str, *args):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Setup:
    """anvil + the contract + a gateway key authorized by the owner."""

    def __init__(self, tmp_path: Path, binary: Path, anvil_args: list[str] | None = None):
        self.tmp = tmp_path
        self.bin = binary
        self.chain = Anvil(tmp_path / "anvil", extra_args=anvil_args)
        self.chain.start()
        self.contract = anchor_contract(self.chain)
        self.state = tmp_path / "state"
        self.state.mkdir()
        keygen = run_cli(self.bin, "keygen", "--out", str(self.state / "anchor.key"))
        assert keygen.returncode == 0, keygen.stderr
        self.address = keygen.stdout.strip().lower()
        assert (self.state / "anchor.key").stat().st_mode & 0o777 == 0o600
        # The gateway pays for its anchors: fund it from a dev account.
        self.chain.rpc("anvil_setBalance", self.address, hex(10**20))

    def authorize(self):
        self.contract.send("setGateway", self.address, True)

    def config(self, **kw) -> Path:
        path = self.tmp / "gateway.toml"
        path.write_text(gateway_config(self.chain.rpc_url, self.contract.address, **kw))
        return path

    def start(self, config: Path) -> Gateway:
        gw = Gateway(self.bin, config, self.state)
        gw.wait_ready(30)
        return gw

    @property
    def db(self) -> Path:
        return self.state / "gateway.db"

    def batches(self):
        return db_rows(self.db, "SELECT idx, first_seq, last_seq, hex(root), hex(hash), "
                       "hex(tx_hash), block_number FROM batches ORDER BY idx")

    def anchored(self):
        return [b for b in self.batches() if b[5]]  # hex(NULL) is empty

    def close(self):
        self.chain.close()


@pytest.fixture
def setup(tmp_path, gateway_bin):
    s = Setup(tmp_path, gateway_bin)
    yield s
    s.close()


def proof_of(s: Setup, seq: int, path: Path) -> tuple[int, dict]:
    out = run_cli(s.bin, "proof", "--state-dir", str(s.state), "--seq", str(seq), "--out", str(path))
    return out.returncode, json.loads(path.read_text())


def verify(s: Setup, path: Path) -> tuple[int, dict]:
    out = run_cli(s.bin, "verify", str(path), "--rpc", s.chain.rpc_url, "--json")
    return out.returncode, json.loads(out.stdout)


def onchain_verify(s: Setup, bundle: dict) -> bool:
    """The contract's own verifyReading, by eth_call."""
    proof = [bytes.fromhex(p[2:]) for p in bundle["proof"]]
    return s.contract.call("verifyReading", bundle["anchor"]["gateway"], bundle["batch"]["index"],
                           reading_struct(bundle["reading"]), proof)


def test_readings_are_anchored_and_proofs_verify_off_and_on_chain(setup: Setup, tmp_path):
    s = setup
    s.authorize()
    gw = s.start(s.config(batch=150, confirmations=1))
    try:
        wait_until(lambda: len(s.anchored()) >= 4, 60, "four anchored batches")
    finally:
        assert gw.stop() == 0
    batches = s.anchored()
    # In order, gapless, chained, each on-chain exactly as stored.
    for i, b in enumerate(batches, start=1):
        assert b[0] == i
        onchain = s.contract.call("batchOf", s.address, i)
        assert (onchain[0].hex().upper(), onchain[1].hex().upper()) == (b[3], b[4]), (i, s.address)
    assert s.contract.call("nextIndex", s.address) >= len(batches) + 1
    # Readings sampled across batches: first, last and random ones.
    rng = random.Random(6)
    seqs = {batches[0][1], batches[0][2], batches[-1][2]}
    seqs |= {rng.randint(batches[0][1], batches[-1][2]) for _ in range(8)}
    for seq in sorted(seqs):
        path = tmp_path / f"proof-{seq}.json"
        rc, bundle = proof_of(s, seq, path)
        assert rc == 0
        assert bundle["reading"]["seq"] == seq and bundle["anchor"]["chain_id"] == 31337
        assert bundle["anchor"]["gateway"].lower() == s.address
        rc, report = verify(s, path)
        assert rc == 0 and report["verified"], report
        assert {c["name"] for c in report["checks"]} >= {
            "merkle_path", "batch_hash", "contract_root", "contract_verify", "transaction",
            "confirmations"}
        assert onchain_verify(s, bundle)
        # One changed field fails both.
        for field, change in [("ts", 1), ("device", "press-2"), ("quality", None)]:
            forged = json.loads(json.dumps(bundle))
            if field == "quality":
                forged["reading"]["quality"] = "uncertain"
            else:
                forged["reading"][field] = (forged["reading"][field] + change
                                        if isinstance(change, int) else change)
            bad = tmp_path / "forged.json"
            bad.write_text(json.dumps(forged))
            rc, report = verify(s, bad)
            assert rc == 1 and not report["verified"]
            assert not onchain_verify(s, forged)
        forged = json.loads(json.dumps(bundle))
        kind, value = next(iter(forged["reading"]["value"].items()))
        forged["reading"]["value"] = {kind: (not value) if kind == "bool" else value + 1}
        bad = tmp_path / "forged.json"
        bad.write_text(json.dumps(forged))
        assert verify(s, bad)[0] == 1
        assert not onchain_verify(s, forged)


def test_a_row_changed_in_sqlite_is_named_by_audit_and_its_proof_fails(setup: Setup, tmp_path):
    s = setup
    s.authorize()
    gw = s.start(s.config(batch=100))
    try:
        wait_until(lambda: len(s.anchored()) >= 2, 60, "two anchored batches")
    finally:
        assert gw.stop() == 0
    clean = run_cli(s.bin, "audit", "--state-dir", str(s.state), "--rpc", s.chain.rpc_url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 finding(s)" in clean.stdout
    first, last = s.anchored()[1][1:3]
    victim = (first + last) // 2
    rc, before = proof_of(s, victim, tmp_path / "before.json")
    assert rc == 0 and verify(s, tmp_path / "before.json")[0] == 0
    conn = sqlite3.connect(s.db)
    conn.execute("UPDATE readings SET ts = ts + 1 WHERE seq = ?", (victim,))
    conn.execute("DELETE FROM readings WHERE seq = ?", (victim + 1,))
    conn.commit()
    conn.close()
    audit = run_cli(s.bin, "audit", "--state-dir", str(s.state), "--json")
    assert audit.returncode == 1
    findings = json.loads(audit.stdout)["findings"]
    assert [(f["kind"], f["seq"]) for f in findings] == [("altered", victim), ("removed", victim + 1)]
    rc, after = proof_of(s, victim, tmp_path / "after.json")
    assert rc == 1  # printed, but the stored reading is not what was sealed
    rc, report = verify(s, tmp_path / "after.json")
    assert rc == 1
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert "merkle_path" in failed and "contract_verify" in failed
    # The proof taken before the change still holds: the chain has the original.
    assert verify(s, tmp_path / "before.json")[0] == 0


def test_chain_outage_and_restart_delay_anchoring_but_lose_nothing(tmp_path, gateway_bin):
    s = Setup(tmp_path, gateway_bin, anvil_args=["--block-time", "1"])
    try:
        s.authorize()
        config = s.config(batch=100, confirmations=2, rate=200)
        gw = s.start(config)
        wait_until(lambda: len(s.anchored()) >= 2, 60, "the first anchors")
        s.chain.stop()  # the chain goes away (its state is kept)
        time.sleep(4)
        assert gw.stop() == 0  # the gateway restarts during the outage
        sealed_before = len(s.batches())
        gw = s.start(config)
        time.sleep(4)
        during = len(s.batches())
        assert during > sealed_before, "sealing goes on while the chain is away"
        s.chain.start()
        wait_until(lambda: (b := s.batches()) and all(x[5] for x in b[: during]), 90,
                   "every batch sealed during the outage anchored")
        assert gw.stop() == 0
        batches = s.anchored()
        indexes = [b[0] for b in batches]
        assert indexes == list(range(1, len(batches) + 1))
        # Each anchored once: one Anchored event per index, in order.
        logs = s.chain.rpc("eth_getLogs", {"address": s.contract.address, "fromBlock": "0x0",
                                           "toBlock": "latest"})
        events = s.contract.events({"logs": logs}, "Anchored")
        anchored_indexes = [e["index"] for e in events]
        assert anchored_indexes == sorted(set(anchored_indexes))
        assert anchored_indexes[: len(batches)] == indexes
        # The outage's readings verify like any others.
        mid = batches[len(batches) // 2]
        rc, _ = proof_of(s, mid[1], tmp_path / "outage.json")
        assert rc == 0 and verify(s, tmp_path / "outage.json")[0] == 0
    finally:
        s.close()


def test_a_reorged_anchor_is_sent_again(tmp_path, gateway_bin):
    s = Setup(tmp_path, gateway_bin, anvil_args=["--block-time", "1"])
    try:
        s.authorize()
        # Deep confirmations: anchors stay unconfirmed long enough to be reorged.
        config = s.config(batch=100, confirmations=6)
        snapshot = s.chain.rpc("evm_snapshot")
        gw = s.start(config)
        wait_until(lambda: s.contract.call("nextIndex", s.address) >= 2, 60, "an anchor on-chain")
        assert s.anchored() == []  # not final yet
        s.chain.rpc("evm_revert", snapshot)  # the blocks with the anchors are gone
        assert s.contract.call("nextIndex", s.address) == 1 or not s.contract.call(
            "authorized", s.address)
        if not s.contract.call("authorized", s.address):
            s.authorize()  # the revert also undid the authorization (it came after the snapshot)
        wait_until(lambda: len(s.anchored()) >= 2, 90, "the batches anchored again and confirmed")
        assert gw.stop() == 0
        for b in s.anchored():
            onchain = s.contract.call("batchOf", s.address, b[0])
            assert onchain[1].hex().upper() == b[4]
            assert onchain[5] == b[6]
    finally:
        s.close()


def test_an_unauthorized_gateway_anchors_nothing_and_says_why(setup: Setup):
    s = setup
    gw = s.start(s.config(batch=100))
    try:
        wait_until(lambda: len(s.batches()) >= 2, 30, "sealed batches")
        time.sleep(2)
        assert s.anchored() == []
        assert s.contract.call("nextIndex", s.address) == 1
        status = run_cli(s.bin, "devices", "--state-dir", str(s.state), "--json")
        assert status.returncode == 0, status.stderr
        chain = json.loads(status.stdout)["anchoring"]["chain"]
        assert "not authorized" in (chain["last_error"] or "")
        # The owner authorizes it: anchoring starts without a restart.
        s.authorize()
        wait_until(lambda: len(s.anchored()) >= 2, 60, "anchors after authorization")
    finally:
        assert gw.stop() == 0
    assert "not authorized" in gw.stderr()


def test_a_stuck_transaction_is_sent_again_with_higher_fees(tmp_path, gateway_bin):
    s = Setup(tmp_path, gateway_bin)
    try:
        s.authorize()
        # From now on no automatic mining: the anchor transaction waits in
        # anvil's pool until the test mines.
        s.chain.rpc("evm_setAutomine", False)
        gw = s.start(s.config(batch=100, confirmations=1))

        def chain_status():
            out = run_cli(s.bin, "devices", "--state-dir", str(s.state), "--json")
            return json.loads(out.stdout)["anchoring"]["chain"] if out.returncode == 0 else {}

        # resubmit_after is 5 s in the test config.
        wait_until(lambda: chain_status().get("resubmissions", 0) >= 1, 40, "a re-sent transaction")
        pending = s.chain.rpc("txpool_content")["pending"]
        ours = next(v for k, v in pending.items() if k.lower() == s.address)
        assert len(ours) == 1, "the replacement took the place of the first (same nonce)"
        tx = next(iter(ours.values()))
        assert int(tx["maxFeePerGas"], 16) > 0
        for _ in range(3):
            s.chain.rpc("evm_mine")
        wait_until(lambda: s.anchored(), 30, "the re-sent anchor mined and confirmed")
        assert gw.stop() == 0
        logs = s.chain.rpc("eth_getLogs", {"address": s.contract.address, "fromBlock": "0x0",
                                           "toBlock": "latest"})
        indexes = [e["index"] for e in s.contract.events({"logs": logs}, "Anchored")]
        assert indexes == sorted(set(indexes)), "no batch anchored twice"
    finally:
        s.close()
