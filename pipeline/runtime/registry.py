"""The one registry of stages: name, entry point, consumer group, inputs, stores, dead letters.

Everything that lists stages reads it: the worker CLI, the topic catalogue (dead-letter and
changelog topics), `telex lag`/`health`, the demo, the benchmarks and the fault suite.
Kept free of stage imports (entry points are ``module:attribute`` strings) so the catalogue can
read it without loading every stage.

Two kinds of stage:
- ``batch``: a :class:`~pipeline.runtime.stage.Stage` run by
  :class:`~pipeline.runtime.runner.StageRunner`; the entry point builds it from settings
  (``own_process``: the whole-topology worker runs it as a child process, not a thread);
- ``service``: a process with its own loop, consuming no topic (the status webhook receiver, an
  HTTP server); the entry point is ``run(settings) -> int``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.runtime.deadletter import dead_letter_topic
from pipeline.settings import Settings

__all__ = [
    "NAMES",
    "RESERVED_DEAD_LETTERS",
    "STAGES",
    "StageSpec",
    "changelogs",
    "consuming",
    "dead_letter_topics",
    "spec",
]

Kind = Literal["batch", "service"]


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage as operators and tools see it."""

    name: str
    kind: Kind
    entry: str  # "module:attribute"
    inputs: tuple[str, ...]  # catalogue short names
    stores: tuple[str, ...] = ()  # store names (changelog topic <stage>-<store>-changelog)
    needs: str | None = None  # a setting without which the stage is not started by `telex worker`
    optional: bool = False  # the pipeline delivers without it (health does not require it)
    description: str = ""
    #: a batch stage the whole-topology worker runs as a child process (see pipeline.cli.worker)
    own_process: bool = False
    #: (store, topic): a store whose changelog is a topic of the catalogue the stage writes
    #: itself (StoreSpec.changelog), instead of ``<stage>-<store>-changelog``
    own_changelogs: tuple[tuple[str, str], ...] = ()

    @property
    def dead_letter(self) -> str:
        """Catalogue short name of the stage's dead-letter topic (``dlq-<stage>``)."""
        return dead_letter_topic(self.name)

    def group(self, settings: Settings) -> str:
        """Consumer group of the stage (also its topic-prefixed identity)."""
        return settings.topic(self.name)

    def changelog(self, store: str) -> str:
        """Catalogue short name of a store's changelog topic."""
        return dict(self.own_changelogs).get(store, f"{self.name}-{store}-changelog")

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "batch", "pipeline.stages.ingest.stage:build", ("message-requested",),
              ("dedup",),
              description="validation and dedup by idempotency key"),
    StageSpec("ratelimit", "batch", "pipeline.stages.ratelimit.stage:build",
              ("message-accepted", "rl-route", "rl-sender"),
              ("account", "route", "sender"),
              description="account, route and sender buckets"),
    StageSpec("scheduler", "batch", "pipeline.runtime.scheduler:build",
              tuple(f"delay-t{i}" for i in range(10)),
              description="releases delayed records when due"),
    StageSpec("dispatch", "batch", "pipeline.stages.dispatch.stage:build", ("dispatch-ready",),
              ("journal",), needs="carriers_file", own_process=True,
              own_changelogs=(("journal", "dispatch-journal"),),
              description="submits to carriers through the connectors"),
    StageSpec("reconcile", "batch", "pipeline.stages.reconcile.stage:build", ("carrier-receipts",),
              ("match",),
              description="joins carrier receipts with submissions"),
    StageSpec("status", "batch", "pipeline.stages.status.stage:build", ("status-updates",),
              ("status",),
              description="the one owner of each message's status"),
    StageSpec("webhooks", "service", "pipeline.stages.webhooks:run", (),
              needs="carriers_file", description="receives carriers' status webhooks"),
    StageSpec("callbacks", "batch", "pipeline.stages.callbacks.stage:build",
              ("delivery-status",), ("callbacks",), needs="callback_secrets_file",
              optional=True, description="signed status callbacks to customers' URLs"),
    StageSpec("pgsink", "batch", "pipeline.stages.pgsink:build", ("delivery-status",),
              needs="database_url", optional=True,
              description="writes the status history to PostgreSQL"),
)

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def spec(name: str) -> StageSpec:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(NAMES)}")


def consuming() -> dict[str, tuple[str, ...]]:
    """Inputs of every stage the pipeline needs that consumes topics (for lag and health)."""
    return {s.name: s.inputs for s in STAGES if s.inputs and not s.optional}


def dead_letter_topics() -> tuple[str, ...]:
    """Every stage's dead-letter topic (short names), each once, plus those reserved for stages
    to come."""
    named = dict.fromkeys(s.dead_letter for s in STAGES)
    return tuple(named) + tuple(t for t in RESERVED_DEAD_LETTERS if t not in named)


#: Dead-letter topics of stages not built yet, created so their consumers can be set up first.
RESERVED_DEAD_LETTERS: tuple[str, ...] = ()


def changelogs() -> tuple[tuple[str, str], ...]:
    """(stage, store) of every store with a runtime changelog topic
    (``<stage>-<store>-changelog``, compacted); stores whose changelog is a topic the stage
    writes itself (dispatch's journal) are left out: the catalogue has that topic already."""
    return tuple((s.name, store) for s in STAGES for store in s.stores
                 if store not in dict(s.own_changelogs))
