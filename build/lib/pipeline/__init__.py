"""Telex: the producer SDK is the public surface of this package."""

import warnings

# confluent-kafka's schema-registry client imports authlib's deprecated httpx integration, and
# authlib forces its warning to "always". Importing it once here with the warning recorded away
# keeps worker logs and filterwarnings=error clean without installing a global filter.
with warnings.catch_warnings(record=True):
    import confluent_kafka.schema_registry  # noqa: F401

from pipeline.sdk import (
    OutboundMessage,
    PublishError,
    RequestRejected,
    TelexProducer,
    message_id_for,
)

__all__ = ["OutboundMessage", "PublishError", "RequestRejected", "TelexProducer", "message_id_for"]
