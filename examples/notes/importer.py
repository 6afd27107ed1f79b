"""The importer cell: loads a folder of markdown notes through the bus, then asks questions of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cellmono import Cell, Empty, background

from .contracts import Digest, NewNote, Note, Query, Results

DATA = Path(__file__).parent / "data"


def parse(path: Path) -> NewNote:
    """A markdown file as a note: first line `# Title`, an optional `tags: a, b` line, then the body."""
    lines = path.read_text(encoding="utf-8").splitlines()
    title = lines[0].lstrip("# ").strip() if lines else path.stem
    tags: tuple[str, ...] = ()
    body = lines[1:]
    if body and body[0].lower().startswith("tags:"):
        tags = tuple(tag.strip() for tag in body[0][5:].split(",") if tag.strip())
        body = body[1:]
    return NewNote(title=title, body="\n".join(body).strip(), tags=tags)


class ImporterCell(Cell):
    """On start, imports every `*.md` note in its folder, then runs its sample questions and logs the answers."""

    name = "importer"
    requests = ("notes.add", "search.query", "digest.summary")

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        folder: Path = DATA
        questions: str = "message bus, sandbox, promotion"

    async def caught_up(self, notes: int, seconds: float = 5.0) -> None:
        """Wait until the digest has heard of `notes` notes: search and digest learn from events, eventually."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds
        while (await self.bus.request("digest.summary", Empty(), response=Digest)).notes < notes:
            if loop.time() > give_up:
                self.log.warning("search and digest have not caught up after %.0f s", seconds)
                return
            await asyncio.sleep(0.01)

    @background
    async def import_and_ask(self) -> None:
        files = sorted(self.settings.folder.glob("*.md"))
        for path in files:
            note = await self.bus.request("notes.add", parse(path), response=Note)
            self.log.info("imported note %d: %s", note.id, note.title)
        self.log.info("imported %d notes from %s", len(files), self.settings.folder)
        await self.caught_up(len(files))
        for question in (part.strip() for part in self.settings.questions.split(",") if part.strip()):
            results = await self.bus.request("search.query", Query(text=question), response=Results)
            found = "; ".join(f"{hit.title} (score {hit.score})" for hit in results.hits) or "nothing"
            self.log.info("search %r -> %s", question, found)
        digest = await self.bus.request("digest.summary", Empty(), response=Digest)
        self.log.info("digest: %d notes, top tags %s, latest %s", digest.notes,
                      ", ".join(f"{tag}={count}" for tag, count in digest.top_tags), ", ".join(digest.latest))
