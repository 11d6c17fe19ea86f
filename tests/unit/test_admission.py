"""Admission control: the queue count stays exact through every way a wait ends, and the check
the server makes before reading a request counts the requests already let through this turn
of the event loop."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.errors import CapacityError
from shipyard.resilience.admission import Admission


def test_queued_is_exact_whether_a_wait_is_granted_times_out_or_is_cancelled() -> None:
    async def scenario() -> None:
        admission = Admission("The gateway", max_in_flight=1, max_queue=2, max_queue_ms=50)
        await admission.acquire()
        assert (admission.in_flight, admission.queued, admission.full()) == (1, 0, False)

        # A wait that times out leaves the queue.
        with pytest.raises(CapacityError, match="waited 50 ms in the queue"):
            await admission.acquire()
        assert admission.queued == 0

        # A wait whose caller goes away leaves the queue.
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.queued == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.queued == 0

        # Two waits fill the queue; a third is refused at once; a release grants the first.
        first = asyncio.ensure_future(admission.acquire())
        second = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert (admission.queued, admission.full()) == (2, True)
        with pytest.raises(CapacityError, match="1 requests in flight, 2 queued"):
            await admission.acquire()
        admission.release()
        await first
        assert (admission.in_flight, admission.queued, admission.shed) == (1, 1, 2)
        admission.release()
        await second
        admission.release()
        assert (admission.in_flight, admission.queued) == (0, 0)

    asyncio.run(scenario())


def test_full_counts_the_requests_let_through_this_turn() -> None:
    async def scenario() -> None:
        admission = Admission("The gateway", max_in_flight=1, max_queue=1)
        # Room for two: a slot and a queue place. Three requests parsed in one turn: the
        # third is refused before any of them has reached `acquire`.
        assert not admission.full()
        admission.expect()
        assert not admission.full()
        admission.expect()
        assert admission.full()
        await asyncio.sleep(0)  # the next turn: they have taken their places, or not
        assert not admission.full()
        await admission.acquire()
        assert not admission.full()  # the queue place is still free
        admission.expect()
        assert admission.full()

    asyncio.run(scenario())


def test_no_limit_is_never_full() -> None:
    assert not Admission("The gateway", max_in_flight=None).full()
