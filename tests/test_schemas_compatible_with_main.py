"""Every schema in the work tree parses, follows the conventions, and can read main's data.

Records outlive deploys (retry topics, dead letters, compacted status topics), so a schema may only
change in ways that let the new version read what the version on ``main`` wrote. The base branch
is ``main``; CI checkouts that only have the remote branch set ``TELEX_SCHEMA_BASE=origin/main``.
A repository without that commit, or a schema that is new there, passes as new; a missing ``git``
fails, since then nothing was checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest

from pipeline.codec import SCHEMA_DIR
from pipeline.dev.schema_compat import check_backward

REPO = SCHEMA_DIR.parent
BASE_REF = os.environ.get("TELEX_SCHEMA_BASE", "main")
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))
_ids = [p.stem for p in SCHEMA_FILES]


def _git(repo: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is not installed: cannot compare schemas with the base branch")
    return subprocess.run(
        [git, *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _base_version(path: Path, repo: Path = REPO) -> dict[str, Any] | None:
    """The schema as committed on BASE_REF, or None when it does not exist there yet."""
    inside = _git(repo, "rev-parse", "--is-inside-work-tree")
    if inside.returncode != 0:
        pytest.fail(f"{repo} is not a git work tree: {inside.stderr.strip()}")
    if _git(repo, "rev-parse", "--verify", "--quiet", f"{BASE_REF}^{{commit}}").returncode != 0:
        return None  # no commit on the base branch yet: every schema is new
    spec = f"{BASE_REF}:{path.relative_to(repo).as_posix()}"
    if _git(repo, "cat-file", "-e", spec).returncode != 0:
        return None  # the schema is new on this branch
    shown = _git(repo, "show", spec)
    if shown.returncode != 0:
        pytest.fail(f"git show {spec} failed: {shown.stderr.strip()}")
    loaded: dict[str, Any] = json.loads(shown.stdout)
    return loaded


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_schema_reads_data_written_with_the_base_branch_version(path: Path) -> None:
    """check_backward(base version, work-tree version) finds no problem."""
    old = _base_version(path)
    if old is None:
        return  # new schema: nothing was written with an older version
    assert check_backward(old, json.loads(path.read_text())) == []


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_changed_schema_keeps_base_version_readable(path: Path) -> None:
    """A schema that changed since the base branch keeps that version in schemas/previous/, so
    single-object records written before the deploy still decode instead of dead-lettering."""
    old = _base_version(path)
    if old is None:
        return
    old_fp = fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(old)), "CRC-64-AVRO")
    new_fp = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(
        fastavro.parse_schema(json.loads(path.read_text()))), "CRC-64-AVRO")
    if old_fp == new_fp:
        return
    kept = [json.loads(p.read_text()) for p in (SCHEMA_DIR / "previous").glob("*.avsc")]
    assert any(
        fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(
            fastavro.parse_schema(k)), "CRC-64-AVRO") == old_fp for k in kept
    ), f"copy the {BASE_REF} version of {path.name} to schemas/previous/{path.stem}.{old_fp}.avsc"


def _commit_on_main(repo: Path, files: dict[str, str]) -> None:
    """Commit ``files`` (under schemas/) as main's only commit, with plumbing commands only."""
    entries = "".join(
        f"100644 blob {_git(repo, 'hash-object', '-w', '--stdin', stdin=text).stdout.strip()}"
        f"\t{name}\n"
        for name, text in files.items()
    )
    schemas = _git(repo, "mktree", stdin=entries).stdout.strip()
    root = _git(repo, "mktree", stdin=f"040000 tree {schemas}\tschemas\n").stdout.strip()
    commit = _git(repo, "commit-tree", root, "-m", "base").stdout.strip()
    assert _git(repo, "update-ref", f"refs/heads/{BASE_REF}", commit).returncode == 0


def test_base_version_lookup_finds_old_schemas_and_treats_others_as_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty repository: new; committed schema: returned as on main; uncommitted one: new."""
    for var, value in {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }.items():
        monkeypatch.setenv(var, value)
    assert _git(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "schemas").mkdir()
    old = {"type": "record", "name": "Event", "fields": [{"name": "count", "type": "long"}]}
    (tmp_path / "schemas" / "event.avsc").write_text(json.dumps(old))
    (tmp_path / "schemas" / "fresh.avsc").write_text(json.dumps(old))
    assert _base_version(tmp_path / "schemas" / "event.avsc", tmp_path) is None

    _commit_on_main(tmp_path, {"event.avsc": json.dumps(old)})
    assert _base_version(tmp_path / "schemas" / "event.avsc", tmp_path) == old
    assert _base_version(tmp_path / "schemas" / "fresh.avsc", tmp_path) is None


# --- every schema parses and follows the conventions ------------------------------------------


def _fields(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every field of every record in ``schema``, with the record's name."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += _fields(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                found.append((schema["name"], f))
                found += _fields(f["type"])
        for key in ("items", "values"):
            found += _fields(schema.get(key))
        if isinstance(schema.get("type"), dict | list):
            found += _fields(schema["type"])
    return found


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_schema_directory_is_not_empty() -> None:
    """The checks below would pass vacuously without schemas."""
    assert SCHEMA_FILES


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_schema_parses_and_is_named_after_its_file(path: Path) -> None:
    """fastavro accepts it; message_accepted.avsc holds the record telex.v1.MessageAccepted."""
    schema = _load(path)
    fastavro.parse_schema(schema)
    assert (schema["type"], schema.get("namespace")) == ("record", "telex.v1")
    assert schema["name"].lower() == path.stem.replace("_", ""), "record named after its file"
    assert schema.get("doc"), "the record itself is documented"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_every_field_has_a_doc(path: Path) -> None:
    """Every field, nested ones included, says what it means."""
    undocumented = [f"{rec}.{f['name']}" for rec, f in _fields(_load(path)) if not f.get("doc")]
    assert undocumented == []


def _timestamp(type_: Any) -> bool:
    return isinstance(type_, dict) and type_ == {"type": "long", "logicalType": "timestamp-millis"}


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_field_conventions(path: Path) -> None:
    """*_ms are timestamp-millis longs; optionals are ["null", T] = null; lists [] and maps {}."""
    problems = []
    for rec, f in _fields(_load(path)):
        name, type_ = f"{rec}.{f['name']}", f["type"]
        branches = type_ if isinstance(type_, list) else [type_]
        if f["name"].endswith("_ms") != any(_timestamp(b) for b in branches):
            problems.append(f"{name}: *_ms fields, and only they, are timestamp-millis longs")
        optional = isinstance(type_, list) and "null" in type_
        if optional and (type_[0] != "null" or f.get("default", "absent") is not None):
            problems.append(f"{name}: optional fields are ['null', T] with default null")
        kind = type_.get("type") if isinstance(type_, dict) else None
        if kind in ("array", "map") and f.get("default") != ([] if kind == "array" else {}):
            problems.append(f"{name}: {kind} fields default to empty")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", f["name"]):
            problems.append(f"{name}: field names are snake_case")
    assert problems == []
