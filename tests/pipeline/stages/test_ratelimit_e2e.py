"""Rate limiting end to end on the real broker: ingest → rate limit → delay tiers → dispatch-ready.

Release times are the Kafka timestamps of ``dispatch-ready`` records, which the stage and the
scheduler set when they produce them (the recording sink of the issue). A message released twice
after a crash keeps its message id and dispatch submits it once, so windows count each message
id at its first release.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pipeline.codec import AvroCodec
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all

CODEC = AvroCodec()
BACKLOG = "+14155550100"  # 50 segments/s, burst 5, 500 queued at once: 10 s of capacity
QUICK = "+14155550101"  # 10/s, burst 2
TOLL_FREE = "+18445550100"  # 5/s, burst 1
LIMITS = {"senders": {f"sms:{BACKLOG}": {"rate": 50, "burst": 5},
                      f"sms:{QUICK}": {"rate": 10, "burst": 2},
                      f"sms:{TOLL_FREE}": {"rate": 5, "burst": 1}}}
COUNTS = {BACKLOG: 500, QUICK: 30, TOLL_FREE: 15}


def configured(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(LIMITS))
    return settings.model_copy(update={"limits_file": str(path)})


def publish(settings: Settings, half: int | None = None) -> None:
    """Publish COUNTS per sender, or only the first (0) or second (1) half of them."""
    def wanted(i: int, count: int) -> bool:
        return half is None or (i < count // 2) == (half == 0)

    messages = [
        OutboundMessage(account_id="acct-1", channel="sms", sender=sender,
                        recipient=f"+1415200{i:04d}", body=f"code {i}",
                        idempotency_key=f"{sender}-{i}")
        for sender, count in COUNTS.items() for i in range(count) if wanted(i, count)
    ]
    with TelexProducer(settings) as producer:
        producer.send_batch(messages)


def first_releases(settings: Settings, timeout: float) -> dict[str, list[float]]:
    """Release time (ms) of each message id's first copy on dispatch-ready, by sender."""
    total = sum(COUNTS.values())

    def done(records) -> bool:  # type: ignore[no-untyped-def]
        return len({m.key() for m in records}) >= total

    first: dict[str, tuple[float, str]] = {}
    for m in read_all(settings, "dispatch-ready", until=done, timeout=timeout):
        mid = m.key().decode()
        if mid not in first:
            first[mid] = (m.timestamp()[1], CODEC.decode(m.value())["sender"])
    by_sender: dict[str, list[float]] = defaultdict(list)
    for ts, sender in first.values():
        by_sender[sender].append(ts)
    return {s: sorted(v) for s, v in by_sender.items()}


def max_per_window(times: list[float], window_ms: float = 1000) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_ms:
            j += 1
        best = max(best, i - j + 1)
    return best


def assert_within_limits(releases: dict[str, list[float]]) -> None:
    for sender, times in releases.items():
        limit = LIMITS["senders"][f"sms:{sender}"]
        assert len(times) == COUNTS[sender]
        worst = max_per_window(times)
        assert worst <= limit["rate"] + limit["burst"], (sender, worst)


def start_pipeline(settings: Settings, worker: Callable[[str, Settings], Worker],
                   ratelimit_workers: int = 1) -> list[Worker]:
    workers = [worker("ingest", settings), worker("scheduler", settings)]
    workers += [worker("ratelimit", settings) for _ in range(ratelimit_workers)]
    return workers


def test_buckets_hold_their_limits_without_head_of_line_blocking(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path
):
    """Three senders with different limits, one with a 10 s backlog: no 1 s window above
    rate + burst for any sender, ≥ 95 % of the backlog sender's capacity booked (the slots the
    limiter gave, from ratelimit-deferrals: how late a starved scheduler releases them is not
    the limiter's capacity), and the other senders finish long before the backlog drains."""
    settings = configured(topics, tmp_path)
    workers = start_pipeline(settings, worker)
    publish(settings)
    releases = first_releases(settings, timeout=120)
    for w in workers:
        w.assert_alive()
    assert_within_limits(releases)

    booked = sorted({(CODEC.decode(m.value())["message_id"],
                      CODEC.decode(m.value())["expected_release_ms"])
                     for m in read_all(settings, "ratelimit-deferrals")
                     if CODEC.decode(m.value())["bucket"] == f"sender:sms:{BACKLOG}"},
                    key=lambda r: r[1])
    slots = [at for _, at in booked]
    achieved = (len(slots) - 1) / ((slots[-1] - slots[0]) / 1000)
    assert len(slots) >= COUNTS[BACKLOG] - 5 - 1  # all but the burst were deferred
    assert achieved >= 0.95 * 50, f"backlog sender booked {achieved:.1f}/s of 50/s"
    backlog = releases[BACKLOG]
    # No head-of-line blocking: the others drain at their own pace, not after the backlog.
    assert releases[QUICK][-1] < backlog[-1] - 5000
    assert releases[TOLL_FREE][-1] < backlog[-1] - 5000


def test_two_workers_share_partitions_and_limits_hold(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path
):
    """Two rate-limit processes share the partitions; each bucket still keeps its limit."""
    settings = configured(topics, tmp_path)
    start_pipeline(settings, worker, ratelimit_workers=2)
    publish(settings)
    assert_within_limits(first_releases(settings, timeout=120))


def test_sigkill_of_ratelimit_worker_never_bursts_a_bucket(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path
):
    """The rate-limit worker is killed while its buckets are booked ahead; messages arriving
    while it is down and after its restart are booked after the recovered slots, so no bucket
    goes above its limit."""
    settings = configured(topics, tmp_path)
    workers = start_pipeline(settings, worker)
    publish(settings, half=0)
    read_all(settings, "dispatch-ready", until=lambda r: len(r) >= 100, timeout=120,
             isolation="read_uncommitted")
    workers[-1].kill()
    publish(settings, half=1)
    worker("ratelimit", settings)
    assert_within_limits(first_releases(settings, timeout=180))
