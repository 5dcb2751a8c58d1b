"""Kafka ingest (``metaas serve --kafka-brokers``): a consumer group member
that stores a topic's ``metaas.v1.WriteRequest`` messages through the ingest
pipeline, each counted exactly once. See docs/architecture.md ("Kafka
ingest")."""

from metaas.server.kafka.consumer import KafkaIngest, PartitionStatus

__all__ = ["KafkaIngest", "PartitionStatus"]
