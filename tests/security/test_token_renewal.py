"""Long-running services renew their own tokens: a `@background` loop that outlives `[security] token_ttl`
keeps making guarded bus requests, with a token the app mints again before the old one expires."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.bus import current_envelope
from cellmono.core.cell import Cell, background, handles
from cellmono.core.config import load_settings
from cellmono.topology.services import Runtime

pytestmark = pytest.mark.anyio

TTL = 0.6


class Count(BaseModel):
    n: int


class Counter(Cell):
    @handles("counter.bump", requires="counter:bump")
    async def bump(self, request: Count) -> Count:
        return Count(n=request.n + 1)


class Ticker(Cell):
    """Asks the counter every 50 ms, forever, as itself; records every outcome."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []
        self.tokens: set[str] = set()

    @background
    async def tick(self) -> None:
        n = 0
        while True:
            context = current_envelope.get()
            self.tokens.add(context.capability if context else "")
            try:
                n = (await self.bus.request("counter.bump", Count(n=n), response=Count, timeout=2)).n
                self.outcomes.append("ok")
            except Exception as error:  # the test reads what happened; the loop must not die
                self.outcomes.append(type(error).__name__)
            await asyncio.sleep(0.05)


def _runtime(tmp_path, ttl: float = TTL) -> tuple[object, Runtime]:
    (tmp_path / "settings.ini").write_text(
        "[security]\n"
        f"token_ttl = {ttl}\n"
        "role.ticker = counter:bump\n"
        "[cell.ticker]\nclass = x:Ticker\nroles = ticker\n"
        "[cell.counter]\nclass = x:Counter\n")
    settings = load_settings(tmp_path / "settings.ini", environ={})
    runtime = Runtime.from_settings(settings)
    runtime.verifier.leeway = 0.0  # expiry at the second, so a few TTLs are a short test
    return settings, runtime


async def test_background_loop_outlives_several_token_ttls(tmp_path) -> None:
    settings, runtime = _runtime(tmp_path)
    ticker = Ticker()
    async with App([Counter(), ticker], settings=settings, services=runtime):
        await asyncio.sleep(TTL * 5)  # five lifetimes of the first token
    assert len(ticker.outcomes) >= 30, ticker.outcomes
    assert set(ticker.outcomes) == {"ok"}, [o for o in ticker.outcomes if o != "ok"][:3]
    assert len(ticker.tokens) >= 5  # renewed, not one immortal token
    assert ticker.health().status != "unhealthy"


async def test_without_renewal_the_same_loop_is_refused_after_the_ttl(tmp_path) -> None:
    """The control: the defence is what keeps the loop alive (an expired token is refused as usual)."""
    settings, runtime = _runtime(tmp_path)

    class NoRenewal:  # the same services, minus renewal
        guard = runtime.guard
        renew_every = None
        attach, identity, close = runtime.attach, runtime.identity, runtime.close

    ticker = Ticker()
    async with App([Counter(), ticker], settings=settings, services=NoRenewal()):  # type: ignore[arg-type]
        await asyncio.sleep(TTL * 2.5)
    assert ticker.outcomes[0] == "ok"
    assert ticker.outcomes[-1] == "TokenExpired", ticker.outcomes[-3:]


async def test_renewal_keeps_an_identity_the_loop_chose(tmp_path) -> None:
    """A loop that acts as someone else (sets `current_envelope` itself) is not switched back to the cell."""
    settings, runtime = _runtime(tmp_path, ttl=0.15)
    seen: list[str | None] = []

    class Impersonal(Cell):
        name = "ticker"

        @background
        async def tick(self) -> None:
            current_envelope.set(current_envelope.get().model_copy(update={"principal": "other"}))
            for _ in range(10):
                seen.append(current_envelope.get().principal)
                await asyncio.sleep(0.05)

    async with App([Counter(), Impersonal()], settings=settings, services=runtime):
        await asyncio.sleep(0.6)
    assert seen and set(seen) == {"other"}
