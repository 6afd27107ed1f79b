"""The digest cell: keeps running statistics of the knowledge base."""

from __future__ import annotations

from collections import Counter, deque

from cellmono import Cell, Empty, handles, tool

from .contracts import Digest, NoteAdded, Note, NoteRef


class DigestCell(Cell):
    """Counts notes and tags from events; on request, summarises, reading the latest notes from the notes cell."""

    name = "digest"
    requests = ("notes.get",)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.tags: Counter[str] = Counter()
        self.recent: deque[int] = deque(maxlen=3)

    @handles("notes.added")
    async def on_note_added(self, event: NoteAdded) -> None:
        self.count += 1
        self.tags.update(event.tags)
        self.recent.append(event.id)

    @tool(requires="notes:read")
    async def summary(self, request: Empty) -> Digest:
        """How many notes, the most used tags and the latest titles."""
        latest = [await self.bus.request("notes.get", NoteRef(id=note), response=Note) for note in self.recent]
        return Digest(notes=self.count, top_tags=tuple(self.tags.most_common(3)),
                      latest=tuple(note.title for note in reversed(latest)))
