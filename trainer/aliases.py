"""Alias bookkeeping for the file model registry.

``{root}/{model_name}/aliases.json`` holds the current aliases (alias → version);
``alias-history.json`` the recent moves of each alias, so a move can be rolled back.
Read-modify-write happens under an flock on ``.aliases.lock`` (plus a shared lock across
hosts when one is configured), which ``FileModelRegistry`` also holds while it checks or
deletes versions. Whether a version exists is the registry's business: callers check it
and pass what they found. An unreadable file is a CorruptModelError, never a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import AliasNotFoundError, ConflictError, CorruptModelError, InvalidInputError
from trainer.files import utc_timestamp, write_json_atomically

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
ALIASES_FILE = "aliases.json"
HISTORY_FILE = "alias-history.json"
_ALIASES_LOCK_FILE = ".aliases.lock"
_ALIAS_RE = re.compile(ALIAS_PATTERN)


def joined(values: list[int] | list[str]) -> str:
    """Values as a comma-separated list for messages, or 'none'."""
    return ", ".join(str(value) for value in values) or "none"


def check_alias(alias: str, *, new: bool = False) -> str:
    """Return ``alias`` if it is a valid alias name, else raise InvalidInputError.

    A ``new`` alias may not be digits alone: a digit string names a version wherever
    an alias could go, so it could never be used. One made before that rule can still
    be moved, rolled back and deleted.
    """
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        message = f"alias {alias!r} is not allowed: use 1-64 lowercase letters, digits or '-', "
        message += f"starting with a letter or digit (pattern {ALIAS_PATTERN}), e.g. 'production'"
        raise InvalidInputError(message, alias=alias)
    if new and alias.isdigit():
        message = f"alias {alias!r} is not allowed: digits alone name a version, so the alias "
        message += "could never be used; include a letter, e.g. 'v" + alias + "'"
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


_CHANGE_FIELDS = {"alias", "from_version", "to_version", "changed_at"}


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias; ``to_version`` None means the alias was deleted."""

    alias: str
    from_version: int | None
    to_version: int | None
    changed_at: str


# Wraps the per-host flock with a lock every API host and worker shares (Redis, when
# configured): flock alone does not exclude a process on another host.
SharedLock = Callable[[str], contextlib.AbstractContextManager[object]]


class AliasStore:
    """Each model's current aliases (``aliases.json``) and their bounded history.

    The current aliases are what every request resolves, so they live in a small file of
    their own; the history (``alias-history.json``, at most ``history_limit`` entries per
    alias) is read only when asked for or changed. Release 0.1.0 kept both in
    aliases.json; such a file still reads, and the next change splits it.

    ``move``, ``remove`` and ``roll_back`` read, change and rewrite the files: call them
    while holding ``lock(model_name)``.
    """

    def __init__(
        self, root: Path, *, history_limit: int = 100, shared_lock: SharedLock | None = None
    ) -> None:
        if history_limit < 2:
            raise InvalidInputError(f"history_limit must be at least 2, got {history_limit}")
        self.root = root
        self.history_limit = history_limit
        self.shared_lock = shared_lock

    def current(self, model_name: str) -> dict[str, int]:
        """Current aliases of a model, alias → version, sorted by alias."""
        return dict(sorted(self._read_current(model_name).items()))

    def history(self, model_name: str, alias: str) -> list[AliasChange]:
        """Every recorded move of ``alias`` still kept, oldest first."""
        return [
            AliasChange(**entry)
            for entry in self._read_history(model_name)
            if entry["alias"] == alias
        ]

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
        """Hold the model's alias lock (and the shared one, if any) for the block."""
        with contextlib.ExitStack() as held:
            if self.shared_lock is not None:
                held.enter_context(self.shared_lock(model_name))
            # Serialises read-modify-write of the alias files (and deletes against moves).
            path = self.root / model_name / _ALIASES_LOCK_FILE
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT)
            held.callback(os.close, descriptor)  # closing the descriptor releases the lock
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield

    def move(self, model_name: str, alias: str, version: int) -> AliasChange:
        """Point ``alias`` at ``version``; only a real move is recorded. Hold the lock."""
        current = self._read_current(model_name)
        if current.get(alias) == version:
            # Not recorded: a no-op entry would make the next rollback a no-op too.
            return AliasChange(alias, version, version, utc_timestamp())
        return self._record_change(model_name, current, alias, version)

    def remove(self, model_name: str, alias: str) -> AliasChange:
        """Remove ``alias``, keeping the removal in its history. Hold the lock."""
        current = self._read_current(model_name)
        if alias not in current:
            message = f"model {model_name!r} has no alias {alias!r} to delete; aliases: "
            message += joined(sorted(current))
            raise AliasNotFoundError(message, model_name=model_name, alias=alias)
        return self._record_change(model_name, current, alias, None)

    def roll_back(self, model_name: str, alias: str, live_versions: list[int]) -> AliasChange:
        """Move ``alias`` back to its version before its last change. Hold the lock."""
        changes = self.history(model_name, alias)
        details = {"model_name": model_name, "alias": alias}
        if not changes:
            message = f"model {model_name!r} never had an alias {alias!r}; nothing to roll back"
            raise AliasNotFoundError(message, **details)
        previous = changes[-1].from_version
        if previous is None:
            message = f"alias {alias!r} of model {model_name!r} has no earlier version: its "
            message += f"last change created it at version {changes[-1].to_version}; "
            # Said in the API's words: the CLI and the dashboard show this message too.
            raise ConflictError(
                message + f"point it at a version with PUT /models/{model_name}/aliases/"
                f"{alias}, or remove it with DELETE on that path",
                **details,
            )
        if previous not in live_versions:
            message = f"cannot roll back alias {alias!r} of model {model_name!r} to version "
            message += f"{previous}: it was deleted; live versions: {joined(live_versions)}"
            raise ConflictError(message, version=previous, **details)
        return self._record_change(model_name, self._read_current(model_name), alias, previous)

    def _read_json(self, model_name: str, file_name: str) -> Any:
        # No lock needed to read: the files are only ever replaced whole.
        try:
            with (self.root / model_name / file_name).open(encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            message = f"model {model_name!r}: its {file_name} is unreadable "
            message += f"({type(error).__name__}); restore it from a backup (docs/operations.md)"
            raise CorruptModelError(message, model_name=model_name) from None

    def _read_current(self, model_name: str) -> dict[str, int]:
        state = self._read_json(model_name, ALIASES_FILE)
        if state is None:
            return {}
        aliases = state.get("aliases") if isinstance(state, dict) else None
        if not isinstance(aliases, dict) or not all(
            isinstance(version, int) and not isinstance(version, bool) and version >= 1
            for version in aliases.values()
        ):
            message = f"model {model_name!r}: its {ALIASES_FILE} does not map aliases to "
            message += "versions; restore it from a backup (docs/operations.md)"
            raise CorruptModelError(message, model_name=model_name)
        return {str(alias): int(version) for alias, version in aliases.items()}

    def _read_history(self, model_name: str) -> list[dict[str, Any]]:
        history = self._read_json(model_name, HISTORY_FILE)
        if history is None:  # 0.1.0 kept the history inside aliases.json
            legacy = self._read_json(model_name, ALIASES_FILE)
            history = legacy.get("history", []) if isinstance(legacy, dict) else []
        if not isinstance(history, list) or not all(
            isinstance(entry, dict) and set(entry) == _CHANGE_FIELDS for entry in history
        ):
            message = f"model {model_name!r}: its alias history is unreadable; "
            message += "restore it from a backup (docs/operations.md)"
            raise CorruptModelError(message, model_name=model_name)
        return history

    def _record_change(
        self, model_name: str, current: dict[str, int], alias: str, to_version: int | None
    ) -> AliasChange:
        change = AliasChange(alias, current.get(alias), to_version, utc_timestamp())
        if to_version is None:
            del current[alias]
        else:
            current[alias] = to_version
        history = [*self._read_history(model_name), dataclasses.asdict(change)]
        model_dir = self.root / model_name
        # History first: a crash between the writes leaves an extra history entry at
        # worst, never a move that its history does not show.
        write_json_atomically(model_dir / HISTORY_FILE, _bounded(history, self.history_limit))
        write_json_atomically(model_dir / ALIASES_FILE, {"aliases": dict(sorted(current.items()))})
        return change


def _bounded(history: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The history with at most ``limit`` most recent entries of each alias."""
    kept_per_alias: dict[str, int] = {}
    kept = []
    for entry in reversed(history):
        count = kept_per_alias.get(entry["alias"], 0)
        if count < limit:
            kept_per_alias[entry["alias"]] = count + 1
            kept.append(entry)
    return kept[::-1]
