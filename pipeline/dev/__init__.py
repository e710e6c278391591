"""Development tooling: the local Kafka broker (broker) and PostgreSQL (postgres) from public
packages, the demo, the schema compatibility check and an independent status-history reader.
Production workers never import it."""
