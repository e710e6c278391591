"""Receipt chaos in the HTTP channel simulator: status webhooks early, duplicated, lost, out of
order and for unknown wamids, at their configured rates, deterministically per seed, and as
planned on the wire (checked with the real WhatsAppClient and a recording receiver)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors.base import SubmitRequest
from connectors.http_channel import WhatsAppClient, WhatsAppConfig
from connectors.simulators.http_channel import (
    HttpChannelConfig,
    HttpChannelSimulator,
    HttpFaults,
    StatusPlan,
)
from tests.fixtures.waiting import until

N = 2_000
CHAOS = HttpFaults(early_receipt_rate=0.10, duplicate_receipt_rate=0.05,
                   unknown_receipt_rate=0.02, lost_receipt_rate=0.01, out_of_order_rate=0.05)
MIX = {"delivered": 0.6, "read": 0.3, "failed": 0.1}


@dataclass(frozen=True)
class Arrival:
    wamid: str
    status: str
    opaque: str | None
    known_to_sender: bool  # the client had its send response when this arrived


@dataclass
class Recorder:
    """A status-webhook receiver that notes, per webhook, whether the sender knew the wamid."""

    url: str = ""
    seen: set[str] = field(default_factory=set)  # wamids the client has been answered with
    arrivals: list[Arrival] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops SYNs: 1 s retransmits


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            value = json.loads(raw)["entry"][0]["changes"][0]["value"]
            for status in value["statuses"]:
                rec.arrivals.append(Arrival(status["id"], status["status"],
                                            status.get("biz_opaque_callback_data"),
                                            status["id"] in rec.seen))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/wa"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def near(count: int, n: int, rate: float) -> bool:
    """``count`` of ``n`` trials is within four standard deviations of ``rate``."""
    return abs(count - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)) + 1


def calm(faults: HttpFaults) -> None:
    """Switch every rate off in place (the simulator reads the object on every send)."""
    for f in fields(faults):
        if f.name.endswith("_rate"):
            setattr(faults, f.name, 0.0)


async def send_all(sim: HttpChannelSimulator, rec: Recorder, count: int, *,
                   sentinel: bool = False) -> list[str]:
    """Send ``count`` messages; with ``sentinel``, switch chaos off and send one more whose last
    status, once arrived, proves every earlier webhook has arrived (same delay, earlier)."""
    config = WhatsAppConfig(sim.base_url, "106540352242922", "test-token", window=32,
                            trust_env=False)

    async def one(wa: WhatsAppClient, i: int) -> str:
        result = await wa.submit(SubmitRequest(f"TX{i}", "+15550001111", "+14155550123",
                                               f"hello {i}", channel="whatsapp"))
        rec.seen.add(result.carrier_message_id)
        return result.carrier_message_id

    async with WhatsAppClient(config) as wa:
        wamids = await asyncio.gather(*(one(wa, i) for i in range(count)))
        if sentinel:
            calm(sim.faults)
            last = await one(wa, count)
            final = sim.receipt_plans()[last].statuses[-1]
            await until(lambda: any(a.wamid == last and a.status == final
                                    for a in rec.arrivals), timeout_s=60, what="the sentinel")
    return list(wamids)


def simulator(rec: Recorder, seed: int, faults: HttpFaults, **config: Any) -> HttpChannelSimulator:
    return HttpChannelSimulator(HttpChannelConfig(callback_url=rec.url, seed=seed,
                                                  outcomes=config.pop("outcomes", MIX), **config),
                                faults)


async def test_chaos_over_2000_sends_matches_rates_and_plans(recorder: Recorder) -> None:
    """Each fault hits about its share of 2,000 sends, and every webhook arrives as planned:
    per wamid the planned statuses in order, early ones before the sender knew the wamid, one
    webhook per unknown wamid, none for lost ones."""
    with simulator(recorder, 21, replace(CHAOS)) as sim:
        wamids = await send_all(sim, recorder, N, sentinel=True)
        plans = sim.receipt_plans()
    chaos = [plans[w] for w in wamids]
    for flag, rate in [("early", 0.10), ("duplicate", 0.05), ("lost", 0.01),
                       ("out_of_order", 0.05)]:
        assert near(sum(getattr(plan, flag) for plan in chaos), N, rate), flag
    unknown = {plan.unknown_id for plan in chaos if plan.unknown_id}
    assert near(len(unknown), N, 0.02) and not unknown & set(plans)

    by_wamid: defaultdict[str, list[Arrival]] = defaultdict(list)
    for arrival in recorder.arrivals:
        by_wamid[arrival.wamid].append(arrival)
    for wamid in wamids:
        plan = plans[wamid]
        got = by_wamid.pop(wamid, [])
        assert tuple(a.status for a in got) == plan.statuses, plan
        if plan.early:
            assert not any(a.known_to_sender for a in got), plan
    by_wamid.pop(next(w for w in plans if w not in wamids))  # the sentinel
    assert set(by_wamid) == unknown
    assert all(len(v) == 1 and v[0].opaque is None for v in by_wamid.values())


async def test_early_statuses_arrive_before_the_send_is_answered(recorder: Recorder) -> None:
    """With early_receipt_rate=1 every status reaches the receiver before the client has the
    wamid, although other statuses wait status_delay_s."""
    faults = HttpFaults(early_receipt_rate=1.0)
    with simulator(recorder, 22, faults, outcomes={"read": 1.0}, status_delay_s=30) as sim:
        wamids = await send_all(sim, recorder, 20)
    assert [w.response_status for w in sim.webhooks] == [200] * 60
    assert len(recorder.arrivals) == 60 and {a.wamid for a in recorder.arrivals} == set(wamids)
    assert not any(a.known_to_sender for a in recorder.arrivals)
    assert all(w.early and w.response_status == 200 for w in sim.webhooks)


async def test_out_of_order_sends_the_final_status_then_sent(recorder: Recorder) -> None:
    """delivered → [delivered, sent]; failed → [failed, sent]; read → [read, sent, delivered]."""
    faults = HttpFaults(out_of_order_rate=1.0)
    with simulator(recorder, 23, faults) as sim:
        wamids = await send_all(sim, recorder, 30, sentinel=True)
        plans = sim.receipt_plans()
    expected = {"delivered": ("delivered", "sent"), "failed": ("failed", "sent"),
                "read": ("read", "sent", "delivered")}
    for wamid in wamids:
        got = tuple(a.status for a in recorder.arrivals if a.wamid == wamid)
        assert got == expected[plans[wamid].status] == plans[wamid].statuses
        assert plans[wamid].out_of_order


async def test_lost_and_unknown_statuses(recorder: Recorder) -> None:
    """A lost message gets no webhook; an unknown one names a wamid never issued, no opaque."""
    faults = HttpFaults(lost_receipt_rate=1.0, unknown_receipt_rate=1.0)
    with simulator(recorder, 24, faults, outcomes={"delivered": 1.0}) as sim:
        wamids = await send_all(sim, recorder, 10, sentinel=True)
        plans = sim.receipt_plans()
    unknown = [plans[w].unknown_id for w in wamids]
    assert all(plans[w] == StatusPlan(w, "delivered", (), lost=True, unknown_id=u)
               for w, u in zip(wamids, unknown, strict=True))
    names = [a.wamid for a in recorder.arrivals]
    assert not set(names) & set(wamids) and set(unknown) <= set(names)
    assert all(a.opaque is None and a.status == "delivered" for a in recorder.arrivals
               if a.wamid in unknown)


async def test_same_seed_same_chaos(recorder: Recorder) -> None:
    """Two runs with one seed make the same decisions (wamids aside, which are random)."""
    runs = []
    for _ in range(2):
        with simulator(recorder, 25, replace(CHAOS)) as sim:
            await send_all(sim, recorder, 200)
            runs.append([replace(r.receipts, wamid="",
                                 unknown_id="x" if r.receipts.unknown_id else None)
                         for r in sim.sends if r.receipts])
    assert runs[0] == runs[1] and any(plan.early for plan in runs[0])


def test_duplicate_status_rate_is_an_alias() -> None:
    """The former name still reads and sets duplicate_receipt_rate."""
    faults = HttpFaults(duplicate_receipt_rate=0.3)
    assert faults.duplicate_status_rate == 0.3
    faults.duplicate_status_rate = 0.5
    assert faults.duplicate_receipt_rate == 0.5
