"""A file-system model registry: numbered immutable versions and movable aliases.

Layout under ``root`` (the REGISTRY_DIR setting)::

    {root}/{model_name}/{version}/model.keras, card.json [, deleted.json]
    {root}/{model_name}/.reserved/{version}/   every number ever handed out, kept forever
    {root}/{model_name}/.staging/{uuid}/       versions being written, invisible to readers
    {root}/{model_name}/aliases.json           current aliases and their history

Free of TensorFlow: the API and the Celery main process import it, and TensorFlow
loaded before a worker forks hangs the child. ``write_model`` does the saving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.errors import (
    AliasNotFoundError,
    ConflictError,
    CorruptModelError,
    InvalidInputError,
    InvalidModelNameError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from trainer.spec import validate_model_name

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
PRODUCTION_ALIAS = "production"
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
DELETED_MARKER = "deleted.json"
ALIASES_FILE = "aliases.json"
_ALIASES_LOCK_FILE = ".aliases.lock"
_STAGING_DIR = ".staging"
_RESERVED_DIR = ".reserved"
_ALIAS_RE = re.compile(ALIAS_PATTERN)
_VERSION_NAME_RE = re.compile(r"[1-9][0-9]*")
_DIGITS_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias; ``to_version`` None means the alias was deleted."""

    alias: str
    from_version: int | None
    to_version: int | None
    changed_at: str


@dataclass(frozen=True)
class ModelSummary:
    model_name: str
    versions: list[int]
    aliases: dict[str, int]
    latest_version: int | None


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _fsync_path(path: Path) -> None:
    # Directories too: a new entry or a rename survives a power cut only once its parent is synced.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_json_atomically(path: Path, data: Any) -> None:
    # Write-temp + fsync + replace: a reader sees the old file or the new one, never half of one.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_model_name(model_name: str) -> str:
    # The name becomes a directory: only validated names, so no '..', '/' or hidden entries.
    try:
        return validate_model_name(model_name)
    except (TypeError, ValueError) as error:
        raise InvalidModelNameError(str(error), model_name=model_name) from None


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        message = f"alias {alias!r} is not allowed: use 1-64 lowercase letters, digits or '-', "
        message += f"starting with a letter or digit (pattern {ALIAS_PATTERN}), e.g. 'production'"
        raise InvalidInputError(message, alias=alias)
    return alias


def _check_version(version: int) -> int:
    # bool is an int subclass; True must not silently mean version 1.
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(
            f"version must be a positive integer, got {version!r}", version=version
        )
    return version


def _joined(values: list[int] | list[str]) -> str:
    return ", ".join(str(value) for value in values) or "none"


class FileModelRegistry:
    """Model versions and aliases stored as plain files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def register(
        self, model_name: str, write_model: Callable[[Path], None], card: dict[str, Any]
    ) -> int:
        """Save a new version through ``write_model``, publish it atomically, return its number."""
        model_dir = self.root / _check_model_name(model_name)
        if not isinstance(card, dict):
            raise InvalidInputError(f"card must be a dict, got {type(card).__name__}")
        staging_root = model_dir / _STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        version = self._reserve_version(model_dir)
        staging = staging_root / uuid.uuid4().hex
        staging.mkdir()
        try:
            model_file = staging / MODEL_FILE
            write_model(model_file)
            if not model_file.is_file():
                message = f"write_model did not create {model_file}; it must save the model there"
                raise InvalidInputError(message, model_name=model_name, version=version)
            _fsync_path(model_file)
            full_card = {
                **card,
                "model_name": model_name,
                "version": version,
                "created_at": _utc_now(),
                "checksum": {"algorithm": "sha256", "value": _sha256(model_file)},
                "model_file": MODEL_FILE,
            }
            _write_json_atomically(staging / CARD_FILE, full_card)
            # The rename is the moment of publication: readers see the whole directory or nothing.
            os.rename(staging, model_dir / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_path(model_dir)
        return version

    def list_models(self) -> list[ModelSummary]:
        """Every model with at least one live version, sorted by name."""
        summaries = []
        for name in sorted(os.listdir(self.root)):
            # Hidden and other non-model entries (probe files, editors' junk) are not models.
            with contextlib.suppress(InvalidModelNameError):
                if versions := self._live_versions(name):
                    summaries.append(self._summary(name, versions))
        return summaries

    def get_model(self, model_name: str) -> ModelSummary:
        """Summary of one model; ModelNotFoundError if it has no live version."""
        return self._summary(model_name, self._require_model(model_name))

    def versions(self, model_name: str) -> list[int]:
        """Live (registered, not deleted) versions, ascending."""
        return self._require_model(model_name)

    def resolve(self, model_name: str, reference: int | str | None = None) -> int:
        """Version for a number, digit string, alias, or None (production, else latest)."""
        live_versions = self._require_model(model_name)
        if isinstance(reference, str) and _DIGITS_RE.fullmatch(reference):
            reference = int(reference)
        if reference is None:
            target = self.aliases(model_name).get(PRODUCTION_ALIAS, live_versions[-1])
        elif not isinstance(reference, str):
            target = reference
        else:
            aliases = self.aliases(model_name)
            if _check_alias(reference) not in aliases:
                message = f"model {model_name!r} has no alias {reference!r}; aliases: "
                raise AliasNotFoundError(
                    message + _joined(sorted(aliases)), model_name=model_name, alias=reference
                )
            target = aliases[reference]
        self._require_version(model_name, target)
        return target

    def get_card(self, model_name: str, version: int) -> dict[str, Any]:
        """The card.json of a live version."""
        card_file = self._require_version(model_name, version) / CARD_FILE
        card: dict[str, Any] = json.loads(card_file.read_text(encoding="utf-8"))
        return card

    def model_path(self, model_name: str, version: int) -> Path:
        """Path of the model.keras file of a live version."""
        return self._require_version(model_name, version) / MODEL_FILE

    def verify_checksum(self, model_name: str, version: int) -> None:
        """Raise CorruptModelError unless model.keras still has the sha256 its card records."""
        expected = self.get_card(model_name, version).get("checksum", {}).get("value")
        model_file = self.model_path(model_name, version)
        actual = _sha256(model_file) if model_file.is_file() else "missing"
        if actual != expected:
            message = f"model {model_name!r} version {version}: {model_file} has sha256 {actual} "
            message += f"but its card records {expected}; it changed since, register it again"
            raise CorruptModelError(message, model_name=model_name, version=version)

    def aliases(self, model_name: str) -> dict[str, int]:
        """Current aliases of a model, alias → version, sorted by alias."""
        self._require_model(model_name)
        return dict(sorted(self._read_alias_state(model_name)["aliases"].items()))

    def set_alias(self, model_name: str, alias: str, version: int) -> AliasChange:
        """Point ``alias`` at a live version; a real move is appended to the alias history."""
        _check_alias(alias)
        self._require_version(model_name, version)
        with self._alias_lock(model_name):
            # Checked again under the lock, which delete_version also holds.
            self._require_version(model_name, version)
            state = self._read_alias_state(model_name)
            if state["aliases"].get(alias) == version:
                # Not recorded: a no-op entry would make the next rollback a no-op too.
                return AliasChange(alias, version, version, _utc_now())
            return self._record_change(model_name, state, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> AliasChange:
        """Remove an alias; the removal is kept in its history so it can be rolled back."""
        _check_alias(alias)
        self._require_model(model_name)
        with self._alias_lock(model_name):
            state = self._read_alias_state(model_name)
            if alias not in state["aliases"]:
                message = f"model {model_name!r} has no alias {alias!r} to delete; aliases: "
                message += _joined(sorted(state["aliases"]))
                raise AliasNotFoundError(message, model_name=model_name, alias=alias)
            return self._record_change(model_name, state, alias, None)

    def alias_history(self, model_name: str, alias: str) -> list[AliasChange]:
        """Every recorded move of ``alias``, oldest first."""
        _check_alias(alias)
        self._require_model(model_name)
        history = self._read_alias_state(model_name)["history"]
        return [AliasChange(**entry) for entry in history if entry["alias"] == alias]

    def rollback_alias(self, model_name: str, alias: str) -> AliasChange:
        """Move ``alias`` back to where it pointed before its last change."""
        _check_alias(alias)
        live_versions = self._require_model(model_name)
        with self._alias_lock(model_name):
            state = self._read_alias_state(model_name)
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
                message += f"{previous}: it was deleted; live versions: {_joined(live_versions)}"
                raise ConflictError(message, version=previous, **details)
            return self._record_change(model_name, state, alias, previous)

    def delete_version(self, model_name: str, version: int) -> None:
        """Hide a version for good with a deleted.json marker; its number is never reused."""
        self._require_version(model_name, version)
        with self._alias_lock(model_name):
            version_dir = self._require_version(model_name, version)
            aliases = self._read_alias_state(model_name)["aliases"]
            pointing = sorted(alias for alias, target in aliases.items() if target == version)
            if pointing:
                message = f"version {version} of model {model_name!r} is the target of alias(es) "
                message += f"{', '.join(pointing)}; move or delete them first"
                raise ConflictError(
                    message, model_name=model_name, version=version, aliases=pointing
                )
            _write_json_atomically(version_dir / DELETED_MARKER, {"deleted_at": _utc_now()})

    def ping(self) -> None:
        """Raise OSError unless the root can be listed, written and cleaned."""
        os.listdir(self.root)
        probe = self.root / f".ping-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def cleanup_staging(self, older_than_seconds: float = 3600) -> int:
        """Remove staging dirs of crashed registrations idle that long; return how many."""
        if older_than_seconds < 0:
            raise InvalidInputError(f"older_than_seconds must be >= 0, got {older_than_seconds}")
        cutoff = time.time() - older_than_seconds
        removed = 0
        for staging in self.root.glob(f"*/{_STAGING_DIR}/*"):
            try:
                # The newest mtime inside, so a slow but live write is not taken for a crash.
                touched = [staging.stat().st_mtime] + [p.stat().st_mtime for p in staging.iterdir()]
                if max(touched) <= cutoff:
                    shutil.rmtree(staging)
                    removed += 1
            except FileNotFoundError:  # its registration finished or failed meanwhile
                continue
        return removed

    def _reserve_version(self, model_dir: Path) -> int:
        # os.mkdir creates or fails atomically, also on shared volumes where flock may be a
        # no-op, so two registrations never get the same number. Reservations are never removed:
        # that is what keeps numbers of deleted versions and crashed writes from coming back.
        reserved_root = model_dir / _RESERVED_DIR
        reserved_root.mkdir(parents=True, exist_ok=True)
        names = os.listdir(reserved_root) + os.listdir(model_dir)
        candidate = max((int(n) for n in names if _VERSION_NAME_RE.fullmatch(n)), default=0) + 1
        while True:
            try:
                os.mkdir(reserved_root / str(candidate))
            except FileExistsError:
                candidate += 1
                continue
            _fsync_path(reserved_root)
            return candidate

    def _live_versions(self, model_name: str) -> list[int]:
        model_dir = self.root / _check_model_name(model_name)
        try:
            with os.scandir(model_dir) as entries:
                return sorted(
                    int(entry.name)
                    for entry in entries
                    if _VERSION_NAME_RE.fullmatch(entry.name)
                    and entry.is_dir()
                    and not os.path.exists(os.path.join(entry.path, DELETED_MARKER))
                )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _require_model(self, model_name: str) -> list[int]:
        live_versions = self._live_versions(model_name)
        if not live_versions:
            message = f"model {model_name!r} has no registered versions; check the name "
            message += (
                "(GET /models or `daciavision models` lists them) or register a version first"
            )
            raise ModelNotFoundError(message, model_name=model_name)
        return live_versions

    def _require_version(self, model_name: str, version: int) -> Path:
        _check_version(version)
        live_versions = self._require_model(model_name)
        version_dir = self.root / model_name / str(version)
        if version not in live_versions:
            deleted = " (it was deleted)" if (version_dir / DELETED_MARKER).exists() else ""
            message = f"model {model_name!r} has no version {version}{deleted}; "
            message += f"live versions: {_joined(live_versions)}"
            raise VersionNotFoundError(message, model_name=model_name, version=version)
        return version_dir

    def _summary(self, model_name: str, live_versions: list[int]) -> ModelSummary:
        aliases = dict(sorted(self._read_alias_state(model_name)["aliases"].items()))
        return ModelSummary(model_name, live_versions, aliases, live_versions[-1])

    def _read_alias_state(self, model_name: str) -> dict[str, Any]:
        # No lock needed to read: aliases.json is only ever replaced whole.
        try:
            with (self.root / model_name / ALIASES_FILE).open(encoding="utf-8") as handle:
                state: dict[str, Any] = json.load(handle)
        except FileNotFoundError:
            return {"aliases": {}, "history": []}
        return state

    @contextlib.contextmanager
    def _alias_lock(self, model_name: str) -> Iterator[None]:
        # Serialises read-modify-write of aliases.json (and deletes against alias moves).
        descriptor = os.open(self.root / model_name / _ALIASES_LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing the descriptor releases the lock

    def _record_change(
        self, model_name: str, state: dict[str, Any], alias: str, to_version: int | None
    ) -> AliasChange:
        change = AliasChange(alias, state["aliases"].get(alias), to_version, _utc_now())
        if to_version is None:
            del state["aliases"][alias]
        else:
            state["aliases"][alias] = to_version
        state["history"].append(dataclasses.asdict(change))
        _write_json_atomically(self.root / model_name / ALIASES_FILE, state)
        return change
