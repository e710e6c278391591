"""The benchmark's load: a realistic message mix, and an open-loop generator process.

Mix (seeded, so every run and every worker count sees the same requests):

* 1,000 SMS senders (short codes 50000-50999) with a Zipf-like share each (weight 1/k^1.1: the
  top sender sends ~13 %, half of the senders under 0.03 % each), spread over 10 accounts;
* 90 % SMS, of which 10 % need two or three segments and 5 % are UCS-2 (one segment or more);
* 10 % WhatsApp, through the HTTP channel simulator and the webhook receiver stage.

Every body starts ``b <tag> <i> ``: the carrier simulators log it at arrival, and message ``i``
of a step was due at ``t0 + i / rate`` (``t0`` and ``rate`` are in the generator's report), so
latency is measured from the *intended* send time (open loop: a stalled generator cannot hide
latency).

``python -m bench.load --rate R --seconds S --tag T --report FILE`` (settings from the
environment, as a worker's): encodes every request first (Avro, as the SDK does), then
produces them on schedule in 5 ms ticks and reports ``{"t0", "rate", "sent", "cpu_s"}``, where
``cpu_s`` is this process's CPU (all threads, librdkafka's included) while sending only: the
encoding is done before ``t0``, when the pipeline is idle.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from pipeline.codec import AvroCodec
from pipeline.sdk import OutboundMessage
from pipeline.settings import Settings, get_settings

SMS_SENDERS = tuple(f"5{k:04d}" for k in range(1000))
WA_SENDER = "whatsapp:+14155550199"
ACCOUNTS = 10
_WEIGHTS = list(itertools.accumulate(1 / (k + 1) ** 1.1 for k in range(len(SMS_SENDERS))))
_FILLER = ("Your verification code is valid for ten minutes. Do not share it with anyone. "
           "If you did not ask for it, ignore this message and contact support. ")
_UCS2 = "Ваш код подтверждения ✓ "


def senders_registry() -> list[dict[str, str]]:
    """The sender registry of the run (TELEX_SENDERS_FILE)."""
    return ([{"address": a, "channel": "sms", "kind": "short_code"} for a in SMS_SENDERS]
            + [{"address": WA_SENDER, "channel": "whatsapp", "kind": "whatsapp"}])


def limits() -> dict[str, Any]:
    """Rate limits far above any offered load: the benchmark measures the machinery."""
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    return {"sender_kinds": {"short_code": huge, "whatsapp": huge}, "account_default": huge,
            "route_default": huge}


def message(i: int, tag: str, rng: random.Random) -> OutboundMessage:
    """Request ``i`` of step ``tag``; ``rng`` draws its sender, kind and recipient."""
    prefix = f"b {tag} {i} "
    key = f"{tag}-{i}"
    roll = rng.random()  # NANP: an exchange never starts with 0 or 1 (ingest rejects those)
    if roll < 0.10:
        return OutboundMessage(
            account_id=f"acct-{i % ACCOUNTS}", channel="whatsapp", sender=WA_SENDER,
            recipient=f"whatsapp:+1415{rng.randrange(2_000_000, 10_000_000):07d}",
            body=prefix + "Your order has shipped", idempotency_key=key)
    k = bisect.bisect(_WEIGHTS, rng.random() * _WEIGHTS[-1])
    sms = rng.random()
    if sms < 0.10:  # multi-segment GSM: 2 or 3 parts
        body = prefix + _FILLER * (2 if sms < 0.05 else 3)
    elif sms < 0.15:  # UCS-2, one segment (or two when long)
        body = prefix + _UCS2 * (1 if sms < 0.14 else 4)
    else:
        body = prefix + "Your code is 123456"
    return OutboundMessage(
        account_id=f"acct-{k % ACCOUNTS}", channel="sms", sender=SMS_SENDERS[k],
        recipient=f"+1415{rng.randrange(2_000_000, 10_000_000):07d}", body=body,
        idempotency_key=key)


def messages(tag: str, count: int, seed: int = 1) -> Iterator[OutboundMessage]:
    rng = random.Random(f"{seed}-{tag}")
    return (message(i, tag, rng) for i in range(count))


def encoded(settings: Settings, tag: str, count: int) -> list[tuple[str, bytes]]:
    """(key, value) of every request, encoded as :class:`pipeline.sdk.TelexProducer` would."""
    codec = AvroCodec.from_settings(settings)
    now_ms = int(time.time() * 1000)
    out = []
    for m in messages(tag, count):
        request = m.to_request(now_ms)
        out.append((request["message_id"], codec.encode("message_requested", request)))
    return out


def intended_index(text: str, tag: str) -> int | None:
    """``i`` of a carrier-logged text of step ``tag`` (its first segment), else None."""
    parts = text.split(" ", 3)
    if len(parts) >= 3 and parts[0] == "b" and parts[1] == tag and parts[2].isdigit():
        return int(parts[2])
    return None


def send(settings: Settings, records: list[tuple[str, bytes]], rate: float
         ) -> dict[str, float]:
    """Open loop: record i is produced at t0 + i/rate whatever happened to earlier ones."""
    producer = Producer({**settings.producer_config(), "message.timeout.ms": 60_000})
    topic = settings.topic("message-requested")
    n = len(records)
    cpu0 = time.process_time()
    t0 = time.time() + 0.05
    i = 0
    while i < n:
        now = time.time()
        upto = min(n, int((now - t0) * rate) + 1)
        if upto <= i:
            time.sleep(min(0.005, t0 + i / rate - now))  # pacing to the next due record
            continue
        for key, value in records[i:upto]:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.005)
        producer.poll(0)
        i = upto
    remaining = producer.flush(60)
    cpu = time.process_time() - cpu0
    return {"t0": t0, "rate": rate, "sent": n - remaining, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--report", type=Path, required=True)
    a = ap.parse_args(argv)
    settings = get_settings()
    records = encoded(settings, a.tag, int(a.rate * a.seconds))
    a.report.write_text(json.dumps(send(settings, records, a.rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
