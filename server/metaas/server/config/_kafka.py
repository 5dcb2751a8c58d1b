"""Kafka ingest: the topic a server consumes beside (or instead of) gRPC writes."""

from __future__ import annotations

from dataclasses import dataclass

from metaas.server.config._declaration import Accepts, setting, validate


def _is_broker_list(brokers: str | None) -> bool:
    if brokers is None:
        return True
    for broker in brokers.split(","):
        host, _, port = broker.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return False
    return True


def _is_topic(name: str) -> bool:
    # Kafka's own rule: 1-249 of [a-zA-Z0-9._-].
    return 0 < len(name) < 250 and all(c.isalnum() or c in "._-" for c in name) and name.isascii()


TOPIC = Accepts("a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)", _is_topic)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    brokers: str | None = setting(
        None,
        "--kafka-brokers",
        "METAAS_KAFKA_BROKERS",
        "Consume writes from Kafka: the bootstrap brokers, HOST:PORT[,HOST:PORT]. "
        "Off unless given.",
        accepts=Accepts("HOST:PORT[,HOST:PORT...]", _is_broker_list),
        parse=lambda text: text or None,
    )
    topic: str = setting(
        "metaas.observations",
        "--kafka-topic",
        "METAAS_KAFKA_TOPIC",
        "The topic of metaas.v1.WriteRequest messages to consume.",
        accepts=TOPIC,
    )
    group: str = setting(
        "metaas",
        "--kafka-group",
        "METAAS_KAFKA_GROUP",
        "The consumer group: its members share the topic's partitions.",
        accepts=Accepts("a non-empty group id", lambda v: bool(v.strip())),
    )
    dead_letter_topic: str = setting(
        "metaas.observations.dead-letter",
        "--kafka-dead-letter-topic",
        "METAAS_KAFKA_DEAD_LETTER_TOPIC",
        "Where invalid messages go, with the reason in their metaas-error header.",
        accepts=TOPIC,
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def enabled(self) -> bool:
        return self.brokers is not None
