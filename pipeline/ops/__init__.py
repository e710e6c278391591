"""SRE tooling behind `telex`: dead letters (dlq, dlq_decision), lag and health (health),
trace, and what they share (offsets, topic_reader, keyhash, display). Production workers never
import it."""
