"""The ledger checker catches what it is there to catch: a lost acknowledged command, a double effect, an
effect of a command never sent, a changed amount, a broken audit chain, and an effect without its audit
record. Worker folders are written here exactly as the worker writes them (`ledger.apply`)."""
from __future__ import annotations

import sqlite3

from ledger import ACCOUNTS, INITIAL, STORE_KEY, History, apply, check

from cellmono.security.audit import AuditLog
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.store import EncryptedStore


def transfer(key: str, amount: int = 5) -> dict:
    return {"key": key, "source": "acct-0", "target": "acct-1", "amount": amount}


def worker_folder(root, name: str, transfers: list[dict]):
    folder = root / name
    folder.mkdir(mode=0o700)
    with EncryptedStore(folder / "ledger.db", StaticKeyProvider(STORE_KEY)) as store, \
            AuditLog(folder / "audit.db") as audit:
        for item in transfers:
            apply(store.namespace("ledger"), audit, name, item)
    return folder


def history_of(*keys: str, acknowledged: tuple[str, ...] | None = None) -> History:
    history = History()
    for key in keys:
        history.sent[key] = transfer(key)
    history.acknowledged = set(keys if acknowledged is None else acknowledged)
    return history


def test_a_clean_run_is_ok(tmp_path) -> None:
    folders = [worker_folder(tmp_path, "w1", [transfer("a"), transfer("b")]), worker_folder(tmp_path, "w2", [transfer("c")])]
    verdict = check(history_of("a", "b", "c"), folders)
    assert verdict.ok, verdict.summary()
    assert verdict.balance_total == ACCOUNTS * INITIAL and verdict.effects == 3


def test_an_acknowledged_command_without_effect_is_lost(tmp_path) -> None:
    verdict = check(history_of("a", "b"), [worker_folder(tmp_path, "w1", [transfer("a")])])
    assert verdict.lost == ["b"] and not verdict.ok


def test_an_unacknowledged_command_may_or_may_not_have_an_effect(tmp_path) -> None:
    verdict = check(history_of("a", "b", acknowledged=("a",)), [worker_folder(tmp_path, "w1", [transfer("a")])])
    assert verdict.ok, verdict.summary()


def test_the_same_command_applied_by_two_workers_is_a_double_effect(tmp_path) -> None:
    folders = [worker_folder(tmp_path, "w1", [transfer("a")]), worker_folder(tmp_path, "w2", [transfer("a")])]
    verdict = check(history_of("a"), folders)
    assert verdict.double_effects == ["a"] and verdict.double_across_workers == ["a"] and not verdict.ok


def test_a_redelivery_applied_twice_by_one_worker_is_a_double_effect_within_it(tmp_path) -> None:
    verdict = check(history_of("a", "b"), [worker_folder(tmp_path, "w1", [transfer("a"), transfer("b"), transfer("a")])])
    assert verdict.double_effects == ["a"] and verdict.double_across_workers == [] and not verdict.ok


def test_an_effect_of_a_command_never_sent_or_with_another_amount_is_caught(tmp_path) -> None:
    folder = worker_folder(tmp_path, "w1", [transfer("a", amount=7), transfer("ghost")])
    verdict = check(history_of("a"), [folder])
    assert verdict.unknown_effects == ["ghost"] and verdict.mismatched == ["a"] and not verdict.ok


def test_an_edited_audit_record_breaks_the_chain(tmp_path) -> None:
    folder = worker_folder(tmp_path, "w1", [transfer("a"), transfer("b")])
    with sqlite3.connect(folder / "audit.db") as database:
        body = database.execute("SELECT body FROM audit WHERE seq = 2").fetchone()[0]
        database.execute("UPDATE audit SET body = ? WHERE seq = 2", (body.replace('"amount":5', '"amount":6'),))
    verdict = check(history_of("a", "b"), [folder])
    assert verdict.audit_problems and not verdict.ok, verdict.summary()


def test_an_effect_without_its_audit_record_is_caught(tmp_path) -> None:
    folder = worker_folder(tmp_path, "w1", [transfer("a")])
    with EncryptedStore(folder / "ledger.db", StaticKeyProvider(STORE_KEY)) as store:
        store.namespace("ledger").put_json("effect/w1-unaudited", transfer("b") | {"worker": "w1"})
    verdict = check(history_of("a", "b"), [folder])
    assert any("1 audited transfers for 2 effects" in problem for problem in verdict.audit_problems), verdict.summary()


def test_a_lost_command_comes_with_the_workers_dead_letter_lines(tmp_path) -> None:
    folder = worker_folder(tmp_path, "w1", [transfer("a")])
    (folder / "worker.log").write_text("connected\nWARNING dead-lettered led.dead.ledger.transfer after 5 deliveries: "
                                       "failed 5 times: EngineUnavailable: no answer\n")
    verdict = check(history_of("a", "b"), [folder])
    assert verdict.lost == ["b"] and len(verdict.dead_letters) == 1, verdict.summary()
    assert "dead_lettered=1" in verdict.summary() and "EngineUnavailable" in verdict.summary()
