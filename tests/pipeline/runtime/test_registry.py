"""The stage registry agrees with the stages and the topic catalogue."""

from __future__ import annotations

import pytest

from pipeline.runtime import registry
from pipeline.runtime.stage import Record, Stage
from pipeline.settings import load_settings
from pipeline.stages.pgsink import StatusSink
from pipeline.topics import catalogue

SETTINGS = load_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.")


def _stage(spec: registry.StageSpec) -> Stage:
    if spec.name == "pgsink":  # building it connects to PostgreSQL; its inputs are static
        return StatusSink.__new__(StatusSink)
    if spec.name == "dispatch":  # needs a carriers file; an empty one builds it
        from pipeline.stages.dispatch.carriers import Carriers
        from pipeline.stages.dispatch.routing import RouteTable
        from pipeline.stages.dispatch.stage import DispatchStage

        return DispatchStage(SETTINGS, Carriers({}, RouteTable([])))
    if spec.name == "callbacks":  # needs signing secrets; none are used here
        from pipeline.stages.callbacks.signing import SecretBook
        from pipeline.stages.callbacks.stage import CallbacksStage

        return CallbacksStage(SETTINGS, SecretBook({}))
    return spec.load()(SETTINGS)  # type: ignore[no-any-return]


@pytest.mark.parametrize("spec", [s for s in registry.STAGES if s.kind == "batch"],
                         ids=lambda s: s.name)
def test_a_batch_stage_has_the_inputs_and_stores_the_registry_names(spec: registry.StageSpec):
    """What operators read in the registry (inputs, stores, dead letters) is what runs."""
    stage = _stage(spec)
    assert stage.name == spec.name
    assert tuple(i.topic for i in stage.inputs) == spec.inputs
    assert tuple(i.store.name for i in stage.inputs if i.store) == spec.stores
    dead = stage.dead_letter(Record("in", 0, 0, "k", b"", None, 0), ValueError("x"), 0)
    assert dead.topic == spec.dead_letter == f"dlq-{spec.name}"


def test_every_topic_the_registry_names_is_in_the_catalogue():
    """Inputs, dead-letter topics and every store's changelog exist in the catalogue."""
    names = {t.name.removeprefix("t.") for t in catalogue(SETTINGS)}
    for spec in registry.STAGES:
        assert set(spec.inputs) <= names, spec.name
        assert spec.dead_letter in names, spec.name
        for store in spec.stores:
            assert spec.changelog(store) in names


def test_service_entry_points_resolve():
    """Every service stage's entry point is a callable ``run(settings)``."""
    for spec in registry.STAGES:
        if spec.kind == "service":
            assert callable(spec.load()), spec.name


def test_unknown_stage_names_the_known_ones():
    """A mistyped stage name fails with the list of stages."""
    with pytest.raises(KeyError, match="ingest"):
        registry.spec("ingset")
