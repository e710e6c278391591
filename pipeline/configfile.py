"""Reading the JSON configuration files (senders, limits, carriers, routes, callback secrets).

One reader, so every file fails the same way: a :class:`~pipeline.errors.ConfigError` naming
what the file is and where, with the parser's reason (never the file's contents: some hold
secrets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["read_json"]


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON of ``path``; ``what`` names the file in errors ("carriers file")."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"cannot read {what} {path}: not valid JSON ({exc})") from None
