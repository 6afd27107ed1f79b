"""The example's message contracts, shared by its cells (cells share contracts, never code)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NewNote(Message):
    """A note to store."""

    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=100_000)
    tags: tuple[str, ...] = ()


class NoteRef(Message):
    """Which note."""

    id: int = Field(ge=1)


class Note(Message):
    """A stored note."""

    id: int
    title: str
    body: str
    tags: tuple[str, ...]


class NoteAdded(Message):
    """Event: a note was stored."""

    id: int
    title: str
    body: str
    tags: tuple[str, ...]


class Query(Message):
    """A full-text search."""

    text: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=5, ge=1, le=50)


class Hit(Message):
    id: int
    title: str
    score: int


class Results(Message):
    query: str
    hits: tuple[Hit, ...]


class Digest(Message):
    """What the knowledge base holds, at a glance."""

    notes: int
    top_tags: tuple[tuple[str, int], ...]
    latest: tuple[str, ...]
