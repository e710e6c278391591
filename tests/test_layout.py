"""The package's dependency rule, checked on the source: what a production worker runs (the
contracts, the runtime, the stages, the connectors) never imports the SRE tooling
(``pipeline.ops``) or the development tooling (``pipeline.dev``); stages never import each
other. Only the ``telex`` command (``pipeline.cli``) composes everything."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLING = ("pipeline.ops", "pipeline.dev")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _sources() -> list[Path]:
    return sorted([*REPO.glob("pipeline/**/*.py"), *REPO.glob("connectors/**/*.py")])


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_production_code_never_imports_the_tooling():
    """Nothing outside pipeline.ops, pipeline.dev and pipeline.cli imports them."""
    offenders = []
    for path in _sources():
        module = _module(path)
        if any(_is(module, p) for p in (*TOOLING, "pipeline.cli")):
            continue
        offenders += [(module, name) for name in sorted(_imports(path))
                      if any(_is(name, t) for t in TOOLING)]
    assert offenders == []


def test_stages_never_import_each_other():
    """A stage imports contracts (pipeline.records, headers, errors, ...), not another stage;
    the one exception is the carriers file, dispatch's configuration, which the webhook
    receiver reads for its connectors' secrets."""
    stages = REPO / "pipeline" / "stages"
    allowed = {"pipeline.stages.dispatch.carriers"}
    offenders = []
    for path in sorted(stages.rglob("*.py")):
        own = _module(path).split(".")[2] if len(_module(path).split(".")) > 2 else ""
        for name in sorted(_imports(path)):
            parts = name.split(".")
            if (len(parts) > 2 and parts[:2] == ["pipeline", "stages"] and parts[2] != own
                    and not any(_is(name, a) for a in allowed)):
                offenders.append((_module(path), name))
    assert offenders == []


PUBLIC = ("pipeline", "pipeline.sdk", "pipeline.settings", "pipeline.errors", "pipeline.codec",
          "pipeline.records", "pipeline.headers", "pipeline.topics", "pipeline.observability",
          "pipeline.segments", "pipeline.senders", "pipeline.producing", "pipeline.broker_retry",
          "pipeline.gcra", "pipeline.breaker",
          "pipeline.runtime.stage", "pipeline.runtime.store", "pipeline.runtime.runner",
          "pipeline.runtime.registry", "connectors.base")


def test_public_modules_declare_and_define_their_exports():
    """Every public module has ``__all__``, and every name in it exists."""
    import importlib

    for name in PUBLIC:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        assert [n for n in exported if not hasattr(module, n)] == [], name
