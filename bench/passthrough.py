"""Baseline stage: a plain confluent-kafka consume→produce loop with Telex's commit discipline.

For each input it writes one record to each output topic (two, as ingest does: accepted +
status; one per hop in a chain), with the same producer settings as the stages; it commits
offsets only after the batch's outputs are acknowledged.
Usage: python -m bench.passthrough IN_TOPIC GROUP OUT_TOPIC [OUT_TOPIC ...]
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer, Producer

from pipeline.settings import get_settings


def main(argv: list[str]) -> int:
    in_topic, group, *outputs = argv
    settings = get_settings()
    consumer = Consumer({**settings.kafka_config(), "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 20})
    producer = Producer({**settings.producer_config()})
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    consumer.subscribe([in_topic])
    while running:
        batch = consumer.consume(500, 0.1)
        records = [m for m in batch if m.error() is None]
        for m in records:
            for topic in outputs:
                while True:
                    try:
                        producer.produce(topic, key=m.key(), value=m.value(),
                                         timestamp=m.timestamp()[1])
                        break
                    except BufferError:
                        producer.poll(0.01)
        if records:
            assert producer.flush(30) == 0
            consumer.commit(asynchronous=False)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
