"""Fast in-process checks of the audit chain (`cellmono.security.chain`) and records, exact to the message: the
mutation run (`mutmut`, README's development section) leans on them. Each names a tampering."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from cellmono.core.bus import current_envelope
from cellmono.core.envelope import Envelope
from cellmono.security.chain import (GENESIS, Anchor, AuditCorrupted, AuditEntry, AuditTampered, VerifyReport,
                                     check_macs, link_hash, read_anchor_file, record_body, record_mac, sign_anchor,
                                     verify_chain)
from cellmono.security.guard import Decision
from cellmono.security.records import AuditRecord, GatewayRecord, audit_record, from_decision, from_gateway
from cellmono.security.signing import SigningKeys

KEYS = SigningKeys()
PUBLIC = KEYS.public_keys()


def chain(count: int, actors: dict[int, str] | None = None) -> list[tuple[int, str, str]]:
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        actor = (actors or {}).get(seq, f"user{seq}")
        body = record_body(AuditRecord(actor=actor, action="tool.call", time=float(seq)), seq, prev)
        prev = link_hash(prev, body)
        rows.append((seq, body.decode(), prev))
    return rows


ROWS = chain(10)


def test_bodies_and_hashes_are_canonical() -> None:
    record = AuditRecord(actor="alice", action="tool.call", resource="notes.add", tenant="acme", decision="allow",
                         latency=0.5, correlation_id="c1", trace_id="t1", reason="why", details={"b": 1, "a": 2},
                         time=1.0)
    body = record_body(record, 3, "ab" * 32)
    assert body == (b'{"action":"tool.call","actor":"alice","correlation_id":"c1","decision":"allow","details":'
                    b'{"a":2,"b":1},"error":null,"latency":0.5,"outcome":"ok","prev":"' + b"ab" * 32 +
                    b'","reason":"why","resource":"notes.add","seq":3,"tenant":"acme","time":1.0,"trace_id":"t1"}')
    assert record_body(AuditRecord(actor="é", action="x", time=1.0), 1, GENESIS).count("é".encode()) == 1
    assert link_hash("p", b"body") == hashlib.sha256(b"p\nbody").hexdigest()
    assert GENESIS == "0" * 64
    entry = AuditEntry(2, "p", "h", {"actor": "a"})
    assert entry.to_json() == '{"actor":"a","hash":"h","prev":"p","seq":2}'
    assert AuditEntry(1, "p", "h", {"actor": "é"}).to_json().count("é") == 1


def test_macs_bind_key_log_position_and_hash() -> None:
    key = b"k" * 32
    expected = hmac.new(key, b"log1\x002\x00" + b"ab" * 32, hashlib.sha256).hexdigest()
    assert record_mac(key, "log1", 2, "ab" * 32) == expected
    found: list[str] = []
    kid = KEYS.active
    good = record_mac(KEYS.mac_key(kid) or b"", "log1", 1, "ab" * 32)
    check_macs([(1, "ab" * 32, f"{kid}:{good}"), (2, "cd" * 32, None), (3, "ef" * 32, "other:00"),
                (4, "ab" * 32, f"{kid}:{good}"), (5, "ab" * 32, ""), (6, "ab" * 32, f"{kid}:")], "log1",
               KEYS.mac_key, found)
    assert found == ["record 2 is not authenticated (no MAC: written without the audit key, or forged)",
                     "record 3 is authenticated with unknown key 'other'",
                     "record 4 fails authentication (forged, or the log's identity was changed)",
                     "record 5 is not authenticated (no MAC: written without the audit key, or forged)",
                     "record 6 is not authenticated (no MAC: written without the audit key, or forged)"]
    lookups: list[str] = []
    check_macs([(1, "ab" * 32, f"{kid}:{good}"), (1, "ab" * 32, f"{kid}:{good}")], "log1",
               lambda k: lookups.append(k) or KEYS.mac_key(k), found)
    assert lookups == [kid] and len(found) == 5  # one key lookup per key id; good MACs add nothing
    long_kid = "x" * 40
    found.clear()
    check_macs([(1, "ab", f"{long_kid}:00")], "log1", KEYS.mac_key, found)
    assert found == [f"record 1 is authenticated with unknown key {'x' * 32!r}"]


def test_anchors_sign_log_position_hash_and_time(tmp_path: Path) -> None:
    anchor = sign_anchor(KEYS, "log1", 3, "ab" * 32, at=7.0)
    assert (anchor.log_id, anchor.seq, anchor.hash, anchor.time, anchor.key_id) == ("log1", 3, "ab" * 32, 7.0,
                                                                                     KEYS.active)
    assert anchor.message() == b'{"hash":"' + b"ab" * 32 + b'","log_id":"log1","seq":3,"time":7.0}'
    KEYS.public_key(anchor.key_id).verify(bytes.fromhex(anchor.signature), anchor.message())
    assert sign_anchor(KEYS, "log1", 3, "ab" * 32).time > 1e9
    (tmp_path / "anchors.jsonl").write_text(anchor.model_dump_json() + "\n\n  \n" + anchor.model_dump_json() + "\n")
    assert read_anchor_file(tmp_path / "anchors.jsonl") == [anchor, anchor]
    assert read_anchor_file(str(tmp_path / "anchors.jsonl")) == [anchor, anchor]
    assert read_anchor_file(tmp_path / "absent.jsonl") == []
    (tmp_path / "bad.jsonl").write_text(anchor.model_dump_json() + "\nnot an anchor\n")
    with pytest.raises(AuditCorrupted) as caught:
        read_anchor_file(tmp_path / "bad.jsonl")
    assert str(caught.value).startswith(f"anchor file {str(tmp_path / 'bad.jsonl')!r} line 2 is not an anchor: ")


def test_a_clean_chain_verifies() -> None:
    report = verify_chain(ROWS)
    assert (report.ok, report.records, report.head_seq, report.head_hash, report.anchors_checked,
            report.problems) == (True, 10, 10, ROWS[-1][2], 0, [])
    assert report.summary().startswith("ok: 10 records")
    empty = verify_chain([])
    assert (empty.ok, empty.records, empty.head_seq, empty.head_hash) == (True, 0, 0, GENESIS)
    as_bytes = [(seq, body.encode(), digest.encode()) for seq, body, digest in ROWS]
    assert verify_chain(as_bytes).ok
    assert VerifyReport(problems=["x"]).ok is False


def test_modified_deleted_reordered_inserted_records_are_named() -> None:
    modified = [(seq, body.replace("user4", "user9"), digest) for seq, body, digest in ROWS]
    assert verify_chain(modified).problems == ["record 4 was modified (its hash does not match its content)"]
    assert verify_chain(ROWS[:4] + ROWS[5:]).problems == ["records 5..5 are missing (deleted)"]
    assert verify_chain(ROWS[2:]).problems == ["records 1..2 are missing (deleted)"]
    gap = verify_chain(ROWS[:4] + ROWS[6:])
    assert gap.problems == ["records 5..6 are missing (deleted)"] and gap.records == 8 and gap.head_seq == 10
    swapped = ROWS[:2] + [(3, ROWS[3][1], ROWS[3][2]), (4, ROWS[2][1], ROWS[2][2])] + ROWS[4:]
    assert "record 3 holds the body of record 4 (moved, inserted or reordered)" in verify_chain(swapped).problems
    forged = record_body(AuditRecord(actor="mallory", action="x"), 6, ROWS[4][2])
    inserted = ROWS[:5] + [(6, forged.decode(), link_hash(ROWS[4][2], forged))] + \
        [(seq + 1, body, digest) for seq, body, digest in ROWS[5:]]
    assert verify_chain(inserted).problems == [
        f"record {seq} holds the body of record {seq - 1} (moved, inserted or reordered)" for seq in range(7, 12)]
    rehashed = [(seq, body, "00" + digest[2:] if seq == 7 else digest) for seq, body, digest in ROWS]
    assert verify_chain(rehashed).problems == [
        "record 7 was modified (its hash does not match its content)",
        "record 8 does not follow record 7 (inserted, reordered, or the previous record's hash was changed)"]
    with pytest.raises(AuditTampered) as caught:
        verify_chain(rehashed, raise_on_failure=True)
    assert caught.value.problems == verify_chain(rehashed).problems
    assert str(caught.value).startswith("audit log failed verification (2 problems): record 7 was modified")
    for garbage in ("not json", '{"seq": 1}', "[1]"):
        assert verify_chain([(1, garbage, "00")]).problems == ["record 1 is unreadable (modified)"]
    assert verify_chain([(1, b"\xff\xfe", b"00")]).problems == ["record 1 is unreadable (modified)"]


def test_tampered_error_lists_at_most_five_problems() -> None:
    error = AuditTampered([f"p{index}" for index in range(7)])
    assert str(error) == "audit log failed verification (7 problems): p0; p1; p2; p3; p4; ..."
    assert str(AuditTampered(["a", "b"])) == "audit log failed verification (2 problems): a; b"
    assert error.problems == [f"p{index}" for index in range(7)]


def test_anchors_catch_truncation_rewrites_and_forgeries() -> None:
    head = sign_anchor(KEYS, "log1", 10, ROWS[-1][2])
    report = verify_chain(ROWS, [head], PUBLIC, log_id="log1")
    assert report.ok and report.anchors_checked == 1
    assert verify_chain(ROWS, [head.model_dump_json()], PUBLIC, log_id="log1").anchors_checked == 1
    assert verify_chain(ROWS, [head], PUBLIC).anchors_checked == 1  # no log_id: every anchor counts
    assert verify_chain(ROWS[:8], [head], PUBLIC).problems == ["log truncated: anchor at record 10 but the log ends at 8"]
    rewritten = chain(10, {4: "mallory"})
    assert verify_chain(rewritten, [sign_anchor(KEYS, "log1", 4, ROWS[3][2])], PUBLIC).problems == [
        "record 4 differs from its signed anchor (chain rewritten)"]
    genesis = sign_anchor(KEYS, "log1", 0, GENESIS)
    assert verify_chain(ROWS, [genesis], PUBLIC).ok and verify_chain([], [genesis], PUBLIC).ok
    assert verify_chain(ROWS, [head]).problems == [f"anchor at record 10 is signed by unknown key {KEYS.active!r}"]
    assert verify_chain(ROWS, [head.model_copy(update={"seq": 9})], PUBLIC).problems == [
        "anchor at record 9 has an invalid signature"]
    assert verify_chain(ROWS, [head.model_copy(update={"signature": "zz"})], PUBLIC).problems == [
        "anchor at record 10 has an invalid signature"]
    assert verify_chain(ROWS, ["{garbage"], PUBLIC).problems == ["a stored anchor is unreadable (modified)"]
    assert verify_chain(ROWS, [head], PUBLIC, log_id="another-log").anchors_checked == 0
    assert verify_chain(ROWS, [head], PUBLIC, log_id="another-log", require_anchor=True).problems == [
        "no signed anchor of log 'another-log' (anchors removed, or the log's identity changed)"]
    assert verify_chain(ROWS, [head], PUBLIC, log_id="log1", require_anchor=True).ok
    with pytest.raises(AuditTampered):
        verify_chain(ROWS[:8], [head], PUBLIC, raise_on_failure=True)
    verify_chain(ROWS, [head], PUBLIC, raise_on_failure=True)


def test_anchor_model_is_strict() -> None:
    with pytest.raises(ValueError):
        Anchor.model_validate_json(json.dumps({"log_id": "l", "seq": 1, "hash": "h", "time": 1.0, "key_id": "k",
                                               "signature": "s", "extra": 1}))


def test_every_anchor_is_counted_and_the_first_record_is_anchored_too() -> None:
    anchors = [sign_anchor(KEYS, "log1", seq, ROWS[seq - 1][2]) for seq in (1, 5, 10)]
    assert verify_chain(ROWS, ["{garbage", *anchors], PUBLIC, log_id="log1").anchors_checked == 3
    rewritten = chain(10, {1: "mallory"})
    assert verify_chain(rewritten, [anchors[0]], PUBLIC).problems == [
        "record 1 differs from its signed anchor (chain rewritten)"]


def test_report_texts() -> None:
    assert str(AuditTampered([f"p{index}" for index in range(5)])) == \
        "audit log failed verification (5 problems): p0; p1; p2; p3; p4"
    assert str(AuditTampered([f"p{index}" for index in range(6)])).endswith("p4; ...")
    report = verify_chain(ROWS)
    assert report.summary() == f"ok: 10 records, head 10 {ROWS[-1][2][:16]}, 0 anchors checked"
    failed = VerifyReport(problems=["first", "second"])
    assert failed.summary() == "FAILED: 2 problems; first: first"


# -- records: the one builder, field by field --------------------------------------------------

TRACE = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


def test_audit_record_defaults_and_every_field() -> None:
    bare = audit_record("alice", "x", at=1.0)
    assert bare.model_dump() == {"actor": "alice", "action": "x", "resource": "", "tenant": None, "decision": None,
                                 "outcome": "ok", "error": None, "reason": None, "latency": None,
                                 "correlation_id": None, "trace_id": None, "details": {}, "time": 1.0}
    full = audit_record("alice", "x", resource="r", tenant="t", decision="allow", latency=0.5, correlation_id="c",
                        details={"k": 1}, at=2.0, trace_id="t1", reason="why")
    assert (full.correlation_id, full.trace_id, full.reason, full.details) == ("c", "t1", "why", {"k": 1})
    failed = audit_record("alice", "x", error=ValueError("boom"), reason="kept")
    assert (failed.error, failed.reason, failed.outcome) == ("ValueError", "kept", "error")


def test_audit_record_takes_the_trace_of_the_message_being_handled() -> None:
    token = current_envelope.set(Envelope(subject="notes.add", trace=TRACE))
    try:
        assert audit_record("alice", "x").trace_id == "ab" * 16
        assert audit_record("alice", "x", trace_id="mine").trace_id == "mine"
    finally:
        current_envelope.reset(token)
    assert audit_record("alice", "x").trace_id is None


def test_from_decision_and_from_gateway_keep_every_fact() -> None:
    decision = Decision(actor="alice", tenant="t", action="deliver", resource="notes.add", allowed=True,
                        reason="granted", correlation_id="c", latency=0.1, requires=("tool:call:notes.add",),
                        token_id="tok", time=3.0)
    assert from_decision(decision).details == {"requires": ["tool:call:notes.add"], "token_id": "tok"}
    gateway = GatewayRecord(time=4.0, principal="bob", tenant="t", method="tools/call", tool="notes.add",
                            decision="deny", outcome="denied", status=403, latency=0.2, correlation_id="c2",
                            reason="no", transport="stdio", trace_id="tr", error="InsufficientScope")
    record = from_gateway(gateway)
    assert record.model_dump() == {
        "actor": "bob", "action": "gateway.tools/call", "resource": "notes.add", "tenant": "t", "decision": "deny",
        "outcome": "denied", "error": "InsufficientScope", "reason": "no", "latency": 0.2, "correlation_id": "c2",
        "trace_id": "tr", "details": {"status": 403, "transport": "stdio"}, "time": 4.0}
    listing = from_gateway(GatewayRecord(time=4.0, principal="bob", method="tools/list", decision="allow",
                                         outcome="ok"))
    assert (listing.resource, listing.trace_id, listing.outcome) == ("", None, "ok")


def test_from_gateway_keeps_an_outcome_other_than_the_derived_one() -> None:
    limited = GatewayRecord(time=5.0, principal="bob", method="tools/call", tool="notes.add", decision="deny",
                            outcome="rate_limited", status=429, error="RateLimited")
    assert from_gateway(limited).outcome == "rate_limited"  # not the "denied" a deny would otherwise give
