"""Receipt chaos in the SMSC simulator: early, duplicated, lost, out-of-order and unknown-id
receipts happen at their configured rates, deterministically per seed, and as planned on the
wire (checked with the real SmppClient and a raw SMPP peer)."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import fields, replace

from connectors.base import Receipt, SubmitRequest
from connectors.simulators.bench_smpp import smsc_process
from connectors.simulators.smsc_model import Faults, ReceiptPlan, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from connectors.smpp import SmppClient, SmppConfig
from connectors.smpp import pdu as p
from connectors.smpp.receipt import parse_receipt_text
from tests.connectors.simulators.test_smsc import RawEsme, raw
from tests.fixtures.waiting import until

N = 2_000
CHAOS = Faults(early_receipt_rate=0.10, duplicate_receipt_rate=0.05, unknown_receipt_rate=0.02,
               lost_receipt_rate=0.01, out_of_order_rate=0.05)
MIX = {"DELIVRD": 0.8, "UNDELIV": 0.2}


def near(count: int, n: int, rate: float) -> bool:
    """``count`` of ``n`` trials is within four standard deviations of ``rate``."""
    return abs(count - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)) + 1


def request(i: int) -> SubmitRequest:
    return SubmitRequest(f"TX{i}", "Telex", "+14155550123", f"message {i}")


async def submit_all(port: int, count: int, *, sentinel: ThreadedSmsc | None = None
                     ) -> tuple[list[str], list[Receipt]]:
    """Submit ``count`` messages; with ``sentinel``, switch chaos off and submit one more whose
    receipt, once read, proves every earlier receipt has been read too (same delay, earlier)."""
    received: list[Receipt] = []
    cfg = SmppConfig("127.0.0.1", port, "telex", "secret", window=50)
    async with SmppClient(cfg, on_receipt=received.append) as esme:
        results = await asyncio.gather(*(esme.submit(request(i)) for i in range(count)))
        ids = [r.carrier_message_id for r in results]
        if sentinel is not None:
            sentinel.call(lambda sim: calm(sim.faults))
            last = (await esme.submit(request(count))).carrier_message_id
            await until(lambda: any(r.carrier_message_id == last for r in received),
                        timeout_s=30, what="the sentinel's receipt")
    return ids, received


def calm(faults: Faults) -> None:
    """Switch every rate off in place (the simulator and its decider share the object)."""
    for f in fields(faults):
        if f.name.endswith("_rate"):
            setattr(faults, f.name, 0.0)


def hex_id(reported: str) -> str:
    return format(int(reported, 16), "x")


async def test_chaos_rates_over_2000_submits_match_the_configuration() -> None:
    """Each fault hits about its configured share of 2,000 submits (fixed seed)."""
    with ThreadedSmsc(SmscConfig(seed=11, outcomes=MIX), replace(CHAOS)) as smsc:
        await submit_all(smsc.port, N)
        plans = [smsc.receipt_plans()[r.message_id] for r in smsc.submits]
    assert len(plans) == N
    for flag, rate in [("early", 0.10), ("duplicate", 0.05), ("lost", 0.01),
                       ("out_of_order", 0.05)]:
        hits = sum(getattr(plan, flag) for plan in plans)
        assert near(hits, N, rate), (flag, hits)
    unknown = [plan.unknown_id for plan in plans if plan.unknown_id]
    assert near(len(unknown), N, 0.02), len(unknown)
    assert not set(unknown) & {r.message_id for r in smsc.submits}
    assert sum(plan.stat == "UNDELIV" for plan in plans) in range(300, 500)


async def test_receipts_on_the_wire_follow_the_plans() -> None:
    """Per issued id, the client reads exactly the planned stats in order; early ones before it
    knew the id; unknown ids once each; lost ones never."""
    with ThreadedSmsc(SmscConfig(seed=12, outcomes=MIX), replace(CHAOS)) as smsc:
        ids, received = await submit_all(smsc.port, N, sentinel=smsc)
        plans = {hex_id(k): v for k, v in smsc.receipt_plans().items()}
    by_id: defaultdict[str, list[Receipt]] = defaultdict(list)
    for receipt in received:
        by_id[receipt.carrier_message_id].append(receipt)
    for carrier_id in ids:
        plan = plans[carrier_id]
        got = by_id.pop(carrier_id, [])
        assert [r.carrier_status for r in got] == list(plan.stats), plan
        # The client names the message only once it has read the submit_sm_resp.
        assert all((r.message_id is None) == plan.early for r in got), plan
    sentinel = next(k for k, v in plans.items() if k not in ids)
    assert len(by_id.pop(sentinel)) == 1
    unknown = {hex_id(p.unknown_id) for p in plans.values() if p.unknown_id}
    assert set(by_id) == unknown and all(len(v) == 1 for v in by_id.values())
    assert all(r.message_id is None for v in by_id.values() for r in v)


def test_early_receipt_is_written_before_the_submit_response() -> None:
    """With early_receipt_rate=1 the deliver_sm for an id precedes the submit_sm_resp naming it."""
    with ThreadedSmsc(SmscConfig(seed=1), Faults(early_receipt_rate=1.0)) as smsc, \
            raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        first = esme.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                        short_message=b"x"))
        assert isinstance(first, p.DeliverSm)
        resp = esme.read()
    assert isinstance(resp, p.SubmitSmResp) and resp.status == 0
    assert f"id:{resp.message_id} " in first.short_message.decode()
    [sent] = smsc.receipts_sent
    assert sent.early and smsc.receipt_plans()[resp.message_id].early


def read_receipts(esme: RawEsme, count: int) -> list[p.DeliverSm]:
    """The next ``count`` deliver_sm, answering each (other PDUs are skipped)."""
    out: list[p.DeliverSm] = []
    while len(out) < count:
        pdu = esme.read()
        if isinstance(pdu, p.DeliverSm):
            esme.sock.sendall(p.encode(p.DeliverSmResp(sequence=pdu.sequence)))
            out.append(pdu)
    return out


def test_out_of_order_sends_the_final_stat_then_an_intermediate_one() -> None:
    """DELIVRD first, then ENROUTE (or the configured intermediate stat) for the same id."""
    faults = Faults(out_of_order_rate=1.0, intermediate_stat="ACCEPTD")
    with ThreadedSmsc(SmscConfig(seed=2), faults) as smsc, raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        resp = esme.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                       short_message=b"x"))
        pair = read_receipts(esme, 2)
    texts = [parse_receipt_text(d.short_message.decode()) for d in pair]
    assert [(t.id, t.stat) for t in texts] == [(resp.message_id, "DELIVRD"),
                                               (resp.message_id, "ACCEPTD")]
    assert smsc.receipt_plans()[resp.message_id].stats == ("DELIVRD", "ACCEPTD")


def test_unknown_receipt_names_an_id_never_issued() -> None:
    """Each submit is followed by its own receipt and one for an id no response carried."""
    with ThreadedSmsc(SmscConfig(seed=3), Faults(unknown_receipt_rate=1.0)) as smsc, \
            raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        issued = []
        for _ in range(3):
            resp = esme.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                           short_message=b"x"))
            assert isinstance(resp, p.SubmitSmResp)
            issued.append(resp.message_id)
            read_receipts(esme, 2)
    named = [r.message_id for r in smsc.receipts_sent]
    unknown = [r.message_id for r in smsc.receipts_sent if r.unknown]
    assert len(named) == 6 and len(unknown) == 3
    assert set(named) - set(unknown) == set(issued) and not set(unknown) & set(issued)
    assert unknown == [smsc.receipt_plans()[i].unknown_id for i in issued]


def test_lost_receipt_sends_nothing_for_that_submit() -> None:
    """A lost receipt never leaves; the next submit's receipt (chaos off) is the first read."""
    with ThreadedSmsc(SmscConfig(seed=4), Faults(lost_receipt_rate=1.0)) as smsc, \
            raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        lost = esme.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                       short_message=b"x"))
        smsc.call(lambda sim: setattr(sim.faults, "lost_receipt_rate", 0.0))
        kept = esme.request(p.SubmitSm(destination_addr="2", registered_delivery=1,
                                       short_message=b"y"))
        [first] = read_receipts(esme, 1)
    assert isinstance(lost, p.SubmitSmResp) and isinstance(kept, p.SubmitSmResp)
    assert f"id:{kept.message_id} " in first.short_message.decode()
    plan = smsc.receipt_plans()[lost.message_id]
    assert plan == ReceiptPlan(lost.message_id, "DELIVRD", (), lost=True)


async def test_same_seed_same_chaos() -> None:
    """Two runs with one seed make identical decisions, ids included."""
    runs = []
    for _ in range(2):
        with ThreadedSmsc(SmscConfig(seed=99, outcomes=MIX), replace(CHAOS)) as smsc:
            await submit_all(smsc.port, 300)
            runs.append([r.receipts for r in smsc.submits])
    assert runs[0] == runs[1] and any(plan and plan.early for plan in runs[0])


def test_chaos_is_off_by_default() -> None:
    """Default Faults: one receipt per submit with the outcome, no flags."""
    with ThreadedSmsc(SmscConfig(seed=5)) as smsc, raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        resp = esme.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                       short_message=b"x"))
        read_receipts(esme, 1)
    assert isinstance(resp, p.SubmitSmResp)
    assert smsc.receipt_plans()[resp.message_id] == ReceiptPlan(resp.message_id, "DELIVRD",
                                                                ("DELIVRD",))


def test_command_line_flags_reach_the_simulator() -> None:
    """``--early-receipt-rate 1 --seed 7``: the SmppClient reads the receipt before the id."""
    async def scenario(port: int) -> list[Receipt]:
        received: list[Receipt] = []
        async with SmppClient(SmppConfig("127.0.0.1", port, "telex", "secret"),
                              on_receipt=received.append) as esme:
            result = await esme.submit(request(1))
            await until(lambda: len(received) == 1, what="the receipt")
        assert received[0].carrier_message_id == result.carrier_message_id
        return received

    with smsc_process(["--early-receipt-rate", "1", "--seed", "7"]) as port:
        [receipt] = asyncio.run(scenario(port))
    assert receipt.message_id is None  # it came before the submit_sm_resp
