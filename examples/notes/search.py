"""The search cell: an inverted index fed by `notes.added` events."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from cellmono import Cell, handles, tool

from .contracts import Hit, NoteAdded, Query, Results

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class SearchCell(Cell):
    """Indexes every note it hears about; answers ranked full-text queries."""

    name = "search"

    def __init__(self) -> None:
        super().__init__()
        self.index: dict[str, Counter[int]] = defaultdict(Counter)
        self.titles: dict[int, str] = {}

    @handles("notes.added")
    async def on_note_added(self, event: NoteAdded) -> None:
        self.titles[event.id] = event.title
        for word in words(f"{event.title} {event.title} {event.body} {' '.join(event.tags)}"):
            self.index[word][event.id] += 1
        self.log.info("indexed note %d %r (%d words known)", event.id, event.title, len(self.index))

    @tool(requires="notes:read")
    async def query(self, request: Query) -> Results:
        """Find notes matching every word of the query, best first."""
        terms = words(request.text)
        scores: Counter[int] = Counter()
        for position, term in enumerate(terms):
            postings = self.index.get(term, Counter())
            scores = postings.copy() if position == 0 else Counter(
                {note: scores[note] + count for note, count in postings.items() if note in scores})
        best = scores.most_common(request.limit)
        return Results(query=request.text,
                       hits=tuple(Hit(id=note, title=self.titles[note], score=score) for note, score in best))
