"""The notes cell: stores notes and announces each one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cellmono import Cell, CellmonoError, tool

from .contracts import NewNote, Note, NoteAdded, NoteRef


class NoteNotFound(CellmonoError, LookupError):
    """No note has that id."""


class NotesFull(CellmonoError):
    """The cell holds `max_notes` notes already."""


class NotesCell(Cell):
    """Stores notes in memory and publishes `notes.added` for every new one."""

    name = "notes"
    publishes = ("notes.added",)

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        max_notes: int = Field(default=10_000, ge=1)

    def __init__(self) -> None:
        super().__init__()
        self.notes: dict[int, Note] = {}

    @tool(requires="notes:write")
    async def add(self, request: NewNote) -> Note:
        """Store a note and return it with its id."""
        if len(self.notes) >= self.settings.max_notes:
            raise NotesFull(f"the notes cell holds its maximum of {self.settings.max_notes} notes")
        note = Note(id=len(self.notes) + 1, title=request.title, body=request.body, tags=request.tags)
        self.notes[note.id] = note
        await self.bus.publish("notes.added", NoteAdded(**note.model_dump()))
        return note

    @tool(requires="notes:read")
    async def get(self, request: NoteRef) -> Note:
        """Return one note by id."""
        note = self.notes.get(request.id)
        if note is None:
            raise NoteNotFound(f"no note with id {request.id}")
        return note
