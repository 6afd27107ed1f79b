"""Bad input gets a typed error with a clear message, loses nothing, and the app keeps running."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellmono.core.app import App
from cellmono.core.cell import Empty
from cellmono.core.config import Settings
from cellmono.core.envelope import Envelope, decode, encode
from cellmono.core.errors import (BusClosed, CellmonoError, MalformedMessage, MessageTooLarge, NoResponders,
                             PayloadInvalid, RemoteError, RequestTimeout)
from examples.notes.contracts import Digest, NewNote, Note, NoteRef
from examples.notes.digest import DigestCell
from examples.notes.notes import NotesCell
from examples.notes.search import SearchCell

pytestmark = pytest.mark.anyio


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_fail_typed(data: bytes) -> None:
    try:
        decode(data, max_bytes=1000)
    except (MalformedMessage, MessageTooLarge) as error:
        assert str(error) and "Traceback" not in str(error)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
                    max_leaves=20))
def test_json_values_round_trip(payload: object) -> None:
    envelope = Envelope(subject="fuzz.payload", payload=payload)
    assert decode(encode(envelope)).payload == payload


@pytest.mark.parametrize("serialize", [False, True])
async def test_every_bad_request_is_typed_and_nothing_is_lost(serialize: bool) -> None:
    app = App([NotesCell(), SearchCell(), DigestCell()], settings=Settings(bus={"serialize": serialize}))
    async with app:
        bus = app.bus
        first = await bus.request("notes.add", NewNote(title="keep me"), response=Note)
        failures: list[tuple[object, type[CellmonoError], str]] = [
            (bus.request("notes.add", {"title": ""}), PayloadInvalid, "notes.add: payload is not a valid NewNote"),
            (bus.request("notes.add", {"title": "x", "extra": 1}), PayloadInvalid, "extra"),
            (bus.request("notes.add", "not an object"), PayloadInvalid, "NewNote"),
            (bus.request("notes.get", NoteRef(id=999)), CellmonoError, "no note with id 999"),
            (bus.request("notes.delete", NoteRef(id=1)), NoResponders, "no handler for 'notes.delete'"),
            (bus.request("digest.summary", Empty(), timeout=0.000001), RequestTimeout, "digest.summary"),
        ]
        for call, error_type, text in failures:
            with pytest.raises(error_type) as caught:
                await call
            assert text in str(caught.value), caught.value
        await asyncio.sleep(0.01)
        digest = await bus.request("digest.summary", Empty(), response=Digest)
        assert digest.notes == 1 and digest.latest == ("keep me",), "the good note survived every bad call"
        assert await bus.request("notes.get", NoteRef(id=first.id), response=Note) == first
        assert all(health.status == "healthy" for health in app.health().values())
    with pytest.raises(BusClosed):
        await app.bus.publish("notes.added", {"id": 1})


async def test_unknown_error_types_arrive_as_remote_errors() -> None:
    app = App([NotesCell()])
    async with app:
        app.cells["notes"].notes = None  # break the cell's state: the handler will raise AttributeError
        with pytest.raises(RemoteError) as caught:
            await app.bus.request("notes.get", NoteRef(id=1))
        assert caught.value.remote_type == "AttributeError" and "no attribute" in str(caught.value)
