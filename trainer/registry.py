"""A file-system model registry: numbered immutable versions and movable aliases.

Layout under ``root`` (the REGISTRY_DIR setting)::

    {root}/{model_name}/{version}/model.keras, card.json [, deleted.json]
    {root}/{model_name}/.reserved/{version}/   every number ever handed out, kept forever
    {root}/{model_name}/.staging/{uuid}/       versions being written, invisible to readers
    {root}/{model_name}/aliases.json           current aliases
    {root}/{model_name}/alias-history.json     the recent moves of each alias (bounded)

Free of TensorFlow: the API and the Celery main process import it, and TensorFlow
loaded before a worker forks hangs the child. ``write_model`` does the saving.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# AliasChange, ALIAS_PATTERN and ALIASES_FILE are re-exported: callers import them from here.
from trainer.aliases import ALIAS_PATTERN as ALIAS_PATTERN
from trainer.aliases import ALIASES_FILE as ALIASES_FILE
from trainer.aliases import AliasChange as AliasChange
from trainer.aliases import AliasStore, SharedLock, alias_target, check_alias, joined
from trainer.card import ModelCard, TrainingRecord, upgrade_card
from trainer.checksums import ChecksumMemo
from trainer.errors import (
    CorruptModelError,
    InvalidInputError,
    InvalidModelNameError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from trainer.files import (
    FileStamp,
    file_stamp,
    fsync_path,
    newest_change_ns,
    sha256_of_file,
    utc_timestamp,
    write_json_atomically,
)
from trainer.spec_base import validate_model_name

PRODUCTION_ALIAS = "production"
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
DELETED_MARKER = "deleted.json"
_STAGING_DIR = ".staging"
_RESERVED_DIR = ".reserved"
_VERSION_NAME_RE = re.compile(r"[1-9][0-9]*")
_DIGITS_RE = re.compile(r"[0-9]+")
# A resolution is remembered only once the files it read are this old: file times tick
# coarsely (milliseconds), so two changes within one tick could leave equal stamps.
RESOLVE_CACHE_SETTLE_NS = 100_000_000
_RESOLVE_CACHE_LIMIT = 4096
# What a resolution read, a stamp per path; None for a missing file.
_Stamp = tuple[FileStamp | None, ...]


@dataclass(frozen=True)
class ModelSummary:
    model_name: str
    versions: list[int]
    aliases: dict[str, int]
    latest_version: int | None


def _check_model_name(model_name: str) -> str:
    # The name becomes a directory: only validated names, so no '..', '/' or hidden entries.
    try:
        return validate_model_name(model_name)
    except (TypeError, ValueError) as error:
        raise InvalidModelNameError(str(error), model_name=model_name) from None


def _check_version(version: int) -> int:
    # bool is an int subclass; True must not silently mean version 1.
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(
            f"version must be a positive integer, got {version!r}", version=version
        )
    return version


class FileModelRegistry:
    """Model versions and aliases stored as plain files under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        alias_history_limit: int = 100,
        shared_lock: SharedLock | None = None,
        resolve_recheck_seconds: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._aliases = AliasStore(
            self.root, history_limit=alias_history_limit, shared_lock=shared_lock
        )
        # (model_name, reference) → (version, stamp, when last confirmed): see resolve_if_cached.
        self._resolved: dict[tuple[str, int | str | None], tuple[int, _Stamp, float]] = {}
        self._resolve_recheck_seconds = resolve_recheck_seconds
        self._root_text = os.fspath(self.root)
        self._checksums = ChecksumMemo()

    def register(
        self,
        model_name: str,
        write_model: Callable[[Path], object],
        record: TrainingRecord,
        before_publish: Callable[[], object] | None = None,
    ) -> int:
        """Save a new version through ``write_model``, publish it atomically, return its number.

        ``before_publish`` runs once everything is written, just before publication: an
        exception from it (a cancel that came meanwhile) publishes nothing.
        """
        model_dir = self.root / _check_model_name(model_name)
        if not isinstance(record, TrainingRecord):
            raise InvalidInputError(f"record must be a TrainingRecord, got {type(record).__name__}")
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
            fsync_path(model_file)
            card = ModelCard.model_validate(
                {
                    **record.model_dump(mode="json"),
                    "model_name": model_name,
                    "version": version,
                    "created_at": utc_timestamp(),
                    "checksum": {"algorithm": "sha256", "value": sha256_of_file(model_file)},
                    "model_file": MODEL_FILE,
                    "model_file_bytes": model_file.stat().st_size,
                }
            )
            write_json_atomically(staging / CARD_FILE, card.model_dump(mode="json"))
            if before_publish is not None:
                before_publish()
            # The rename is the moment of publication: readers see the whole directory or nothing.
            os.rename(staging, model_dir / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_path(model_dir)
        self._resolved.clear()
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
        # Stamped before reading: a change made meanwhile makes the stamp stale at once.
        model_stamp = self._model_stamp(_check_model_name(model_name))
        live_versions = self._require_model(model_name)
        key = (model_name, reference)
        if isinstance(reference, str) and _DIGITS_RE.fullmatch(reference):
            reference = int(reference)
        if reference is None:
            target = self.aliases(model_name).get(PRODUCTION_ALIAS, live_versions[-1])
        elif not isinstance(reference, str):
            target = reference
        else:
            target = alias_target(model_name, self.aliases(model_name), check_alias(reference))
        self._require_version(model_name, target)
        self._remember(key, target, model_stamp + self._version_stamp(model_name, target))
        return target

    def resolve_if_cached(self, model_name: str, reference: int | str | None = None) -> int | None:
        """What ``resolve`` answered before, if none of the files it read has changed since.

        A few ``stat`` calls and no reading: the model's folder (a new version adds a
        link to it), ``aliases.json`` (replaced whole on every move, so a new inode),
        the version's card and its deletion marker. None means: call ``resolve``.

        With ``resolve_recheck_seconds`` set, an answer confirmed that recently is
        given without even the ``stat`` calls, as TensorFlow Serving polls its model
        folder: a change made by another process (a worker registering a version,
        another API host moving an alias) shows within that time. Changes made through
        this object forget every answer at once.
        """
        key = (model_name, reference)
        entry = self._resolved.get(key)
        if entry is None:
            return None
        version, stamp, confirmed_at = entry
        now = time.monotonic()
        if now - confirmed_at < self._resolve_recheck_seconds:
            return version
        if self._model_stamp(model_name) + self._version_stamp(model_name, version) != stamp:
            self._resolved.pop(key, None)
            return None
        self._resolved[key] = (version, stamp, now)
        return version

    def get_card(self, model_name: str, version: int) -> ModelCard:
        """The card of a live version; CorruptModelError if card.json is missing or unreadable."""
        card_file = self._require_version(model_name, version) / CARD_FILE
        try:
            raw = json.loads(card_file.read_text(encoding="utf-8"))
            return ModelCard.model_validate(upgrade_card(raw))
        except (OSError, ValueError, KeyError, TypeError) as error:
            # ValueError covers bad JSON and pydantic's ValidationError alike.
            message = f"model {model_name!r} version {version}: its card.json is missing or "
            message += f"unreadable ({type(error).__name__}); register the model again"
            raise CorruptModelError(message, model_name=model_name, version=version) from None

    def version_of_job(self, model_name: str, job_id: str) -> int | None:
        """The live version training job ``job_id`` registered, if it registered one.

        How a job whose worker died after publishing (and before it could say so) is
        found done rather than trained again or failed.
        """
        try:
            versions = self.versions(model_name)
        except Exception:  # noqa: BLE001 - no such model (yet), or a name that cannot be one
            return None
        for version in reversed(versions):
            try:
                if self.get_card(model_name, version).job_id == job_id:
                    return version
            except CorruptModelError:
                continue  # not readable, so not ours to claim
        return None

    def model_path(self, model_name: str, version: int) -> Path:
        """Path of the model.keras file of a live version."""
        return self._require_version(model_name, version) / MODEL_FILE

    def verify_checksum(self, model_name: str, version: int) -> str:
        """The sha256 of model.keras (hex); CorruptModelError unless its card records it.

        The file is hashed again only if its status changed since it last was
        (``trainer.checksums``).
        """
        return self.verified_card(model_name, version).checksum.value

    def verified_card(self, model_name: str, version: int) -> ModelCard:
        """The card, once model.keras is checked against its checksum (as ``verify_checksum``).

        For a caller about to load the model: the card it needs next is the one read to
        check the file, not a second read that another process may have changed meanwhile.
        """
        card = self.get_card(model_name, version)
        expected = card.checksum.value
        model_file = self.model_path(model_name, version)
        actual = self._checksums.sha256(model_file) if model_file.is_file() else "missing"
        if actual != expected:
            message = f"model {model_name!r} version {version}: {MODEL_FILE} has sha256 {actual} "
            message += f"but its card records {expected}; it changed since, register it again"
            raise CorruptModelError(message, model_name=model_name, version=version)
        return card

    def aliases(self, model_name: str) -> dict[str, int]:
        """Current aliases of a model, alias → version, sorted by alias."""
        self._require_model(model_name)
        return self._aliases.current(model_name)

    def set_alias(self, model_name: str, alias: str, version: int) -> AliasChange:
        """Point ``alias`` at a live version; a real move is appended to the alias history."""
        check_alias(alias, new=alias not in self.aliases(model_name))
        self._require_version(model_name, version)
        with self._aliases.lock(model_name):
            # Checked again under the lock, which delete_version also holds.
            self._require_version(model_name, version)
            change = self._aliases.move(model_name, alias, version)
        self._resolved.clear()
        return change

    def delete_alias(self, model_name: str, alias: str) -> AliasChange:
        """Remove an alias; the removal is kept in its history so it can be rolled back."""
        check_alias(alias)
        self._require_model(model_name)
        with self._aliases.lock(model_name):
            change = self._aliases.remove(model_name, alias)
        self._resolved.clear()
        return change

    def alias_history(self, model_name: str, alias: str) -> list[AliasChange]:
        """Every recorded move of ``alias``, oldest first."""
        check_alias(alias)
        self._require_model(model_name)
        return self._aliases.history(model_name, alias)

    def rollback_alias(self, model_name: str, alias: str) -> AliasChange:
        """Move ``alias`` back to where it pointed before its last change."""
        check_alias(alias)
        live_versions = self._require_model(model_name)
        with self._aliases.lock(model_name):
            change = self._aliases.roll_back(model_name, alias, live_versions)
        self._resolved.clear()
        return change

    def delete_version(self, model_name: str, version: int) -> None:
        """Hide a version for good with a deleted.json marker; its number is never reused."""
        self._require_version(model_name, version)
        with self._aliases.lock(model_name):
            version_dir = self._require_version(model_name, version)
            self._aliases.require_unaliased(model_name, version)
            write_json_atomically(version_dir / DELETED_MARKER, {"deleted_at": utc_timestamp()})
        self._resolved.clear()

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

    # Paths joined as strings: pathlib's joins cost more than the stat calls themselves.
    def _model_stamp(self, model_name: str) -> _Stamp:
        model_dir = f"{self._root_text}/{model_name}"
        return (file_stamp(model_dir), file_stamp(f"{model_dir}/{ALIASES_FILE}"))

    def _version_stamp(self, model_name: str, version: int) -> _Stamp:
        version_dir = f"{self._root_text}/{model_name}/{version}"
        return (
            file_stamp(f"{version_dir}/{CARD_FILE}"),
            file_stamp(f"{version_dir}/{DELETED_MARKER}"),
        )

    def _remember(self, key: tuple[str, int | str | None], version: int, stamp: _Stamp) -> None:
        newest = max((newest_change_ns(entry) for entry in stamp if entry is not None), default=0)
        if time.time_ns() - newest < RESOLVE_CACHE_SETTLE_NS:
            return  # too fresh to tell a later change in the same clock tick apart
        if len(self._resolved) >= _RESOLVE_CACHE_LIMIT:
            self._resolved.clear()  # references are client input: keep the map bounded
        self._resolved[key] = (version, stamp, time.monotonic())

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
            fsync_path(reserved_root)
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
            message += "(GET /models or `daciavision models --url SERVER` lists them) or "
            message += "register a version first"
            raise ModelNotFoundError(message, model_name=model_name)
        return live_versions

    def _require_version(self, model_name: str, version: int) -> Path:
        _check_version(version)
        live_versions = self._require_model(model_name)
        version_dir = self.root / model_name / str(version)
        if version not in live_versions:
            deleted = " (it was deleted)" if (version_dir / DELETED_MARKER).exists() else ""
            message = f"model {model_name!r} has no version {version}{deleted}; "
            message += f"live versions: {joined(live_versions)}"
            raise VersionNotFoundError(message, model_name=model_name, version=version)
        return version_dir

    def _summary(self, model_name: str, live_versions: list[int]) -> ModelSummary:
        try:
            aliases = self._aliases.current(model_name)
        except CorruptModelError:
            # Listings stay usable; resolving an alias of this model says what is wrong.
            aliases = {}
        return ModelSummary(model_name, live_versions, aliases, live_versions[-1])
