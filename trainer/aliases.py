"""Alias bookkeeping for the file model registry: ``{root}/{model_name}/aliases.json``.

The file holds the current aliases (alias → version) and every move of each alias, so a
move can be rolled back. Read-modify-write happens under an flock on ``.aliases.lock``,
which ``FileModelRegistry`` also holds while it checks or deletes versions. Whether a
version exists is the registry's business: callers check it and pass what they found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import AliasNotFoundError, ConflictError, InvalidInputError
from trainer.files import utc_timestamp, write_json_atomically

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
ALIASES_FILE = "aliases.json"
_ALIASES_LOCK_FILE = ".aliases.lock"
_ALIAS_RE = re.compile(ALIAS_PATTERN)


def joined(values: list[int] | list[str]) -> str:
    """Values as a comma-separated list for messages, or 'none'."""
    return ", ".join(str(value) for value in values) or "none"


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise InvalidInputError."""
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        message = f"alias {alias!r} is not allowed: use 1-64 lowercase letters, digits or '-', "
        message += f"starting with a letter or digit (pattern {ALIAS_PATTERN}), e.g. 'production'"
        raise InvalidInputError(message, alias=alias)
    return alias


def alias_target(model_name: str, aliases: dict[str, int], alias: str) -> int:
    """The version ``alias`` points at in ``aliases``, else raise AliasNotFoundError."""
    if alias not in aliases:
        message = f"model {model_name!r} has no alias {alias!r}; aliases: "
        raise AliasNotFoundError(
            message + joined(sorted(aliases)), model_name=model_name, alias=alias
        )
    return aliases[alias]


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias; ``to_version`` None means the alias was deleted."""

    alias: str
    from_version: int | None
    to_version: int | None
    changed_at: str


class AliasStore:
    """The aliases.json of each model under ``root``; names are validated by the caller.

    ``move``, ``remove`` and ``roll_back`` read, change and rewrite the file: call them
    while holding ``lock(model_name)``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def current(self, model_name: str) -> dict[str, int]:
        """Current aliases of a model, alias → version, sorted by alias."""
        return dict(sorted(self._read_state(model_name)["aliases"].items()))

    def history(self, model_name: str, alias: str) -> list[AliasChange]:
        """Every recorded move of ``alias``, oldest first."""
        history = self._read_state(model_name)["history"]
        return [AliasChange(**entry) for entry in history if entry["alias"] == alias]

    def require_unaliased(self, model_name: str, version: int) -> None:
        """Raise ConflictError if any alias points at ``version``. Hold the lock."""
        aliases = self.current(model_name)
        pointing = sorted(alias for alias, target in aliases.items() if target == version)
        if pointing:
            message = f"version {version} of model {model_name!r} is the target of alias(es) "
            message += f"{', '.join(pointing)}; move or delete them first"
            raise ConflictError(message, model_name=model_name, version=version, aliases=pointing)

    @contextlib.contextmanager
    def lock(self, model_name: str) -> Iterator[None]:
        """Hold the model's alias lock for the duration of the block."""
        # Serialises read-modify-write of aliases.json (and deletes against alias moves).
        descriptor = os.open(self.root / model_name / _ALIASES_LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing the descriptor releases the lock

    def move(self, model_name: str, alias: str, version: int) -> AliasChange:
        """Point ``alias`` at ``version``; only a real move is recorded. Hold the lock."""
        state = self._read_state(model_name)
        if state["aliases"].get(alias) == version:
            # Not recorded: a no-op entry would make the next rollback a no-op too.
            return AliasChange(alias, version, version, utc_timestamp())
        return self._record_change(model_name, state, alias, version)

    def remove(self, model_name: str, alias: str) -> AliasChange:
        """Remove ``alias``, keeping the removal in its history. Hold the lock."""
        state = self._read_state(model_name)
        if alias not in state["aliases"]:
            message = f"model {model_name!r} has no alias {alias!r} to delete; aliases: "
            message += joined(sorted(state["aliases"]))
            raise AliasNotFoundError(message, model_name=model_name, alias=alias)
        return self._record_change(model_name, state, alias, None)

    def roll_back(self, model_name: str, alias: str, live_versions: list[int]) -> AliasChange:
        """Move ``alias`` back to its version before its last change. Hold the lock."""
        state = self._read_state(model_name)
        changes = [entry for entry in state["history"] if entry["alias"] == alias]
        details = {"model_name": model_name, "alias": alias}
        if not changes:
            message = f"model {model_name!r} never had an alias {alias!r}; nothing to roll back"
            raise AliasNotFoundError(message, **details)
        previous = changes[-1]["from_version"]
        if previous is None:
            message = f"alias {alias!r} of model {model_name!r} has no earlier version: its "
            message += f"last change created it at version {changes[-1]['to_version']}; "
            raise ConflictError(message + "use set_alias or delete_alias instead", **details)
        if previous not in live_versions:
            message = f"cannot roll back alias {alias!r} of model {model_name!r} to version "
            message += f"{previous}: it was deleted; live versions: {joined(live_versions)}"
            raise ConflictError(message, version=previous, **details)
        return self._record_change(model_name, state, alias, previous)

    def _read_state(self, model_name: str) -> dict[str, Any]:
        # No lock needed to read: aliases.json is only ever replaced whole.
        try:
            with (self.root / model_name / ALIASES_FILE).open(encoding="utf-8") as handle:
                state: dict[str, Any] = json.load(handle)
        except FileNotFoundError:
            return {"aliases": {}, "history": []}
        return state

    def _record_change(
        self, model_name: str, state: dict[str, Any], alias: str, to_version: int | None
    ) -> AliasChange:
        change = AliasChange(alias, state["aliases"].get(alias), to_version, utc_timestamp())
        if to_version is None:
            del state["aliases"][alias]
        else:
            state["aliases"][alias] = to_version
        state["history"].append(dataclasses.asdict(change))
        write_json_atomically(self.root / model_name / ALIASES_FILE, state)
        return change
