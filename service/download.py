"""``daciavision download``: a version's model file from a server, checked before it lands.

The file streams into a temporary file beside the target and replaces the target only
once its SHA-256 matches the ``Repr-Digest`` the server sent (the checksum on the
version's card), so an interrupted or damaged download never leaves a file that looks
like a model. A target that holds the version already is left alone: a file named as the
target is offered to the server by its checksum (``If-None-Match``, answered 304), and a
folder's file of the name the server gives is compared once the headers are in.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from service.client import ServerError, api_client, raise_for_error
from trainer.errors import InvalidInputError
from trainer.files import sha256_of_file

# The name in `Content-Disposition: attachment; filename="digits-v3.keras"`, as sent.
_FILENAME = re.compile(r'filename="([^"/\\]+)"')
_SHA256_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):")


def download_command(arguments: argparse.Namespace) -> int:
    model_name = quote(arguments.model_name, safe="")
    path = f"/models/{model_name}/model.keras"
    if arguments.version:
        path = f"/models/{model_name}/versions/{quote(arguments.version, safe='')}/model.keras"
    output = Path(arguments.output or ".")
    if not (output.is_dir() or output.parent.is_dir()):
        raise InvalidInputError(f"--output {output}: neither it nor its folder exists")
    with api_client(arguments) as client:
        target, written = download(client, path, output)
    print(f"saved {target}" if written else f"{target} holds this version already; left as is")
    return 0


def download(client: httpx.Client, path: str, output: Path) -> tuple[Path, bool]:
    """Save the file at ``path`` as ``output``, or under its own name if that is a folder.

    Returns the target and whether it was written: not if it held the file already.
    """
    headers = {}
    if output.is_file():
        headers["If-None-Match"] = f'"{sha256_of_file(output)}"'
    try:
        with client.stream("GET", path, headers=headers) as response:
            if response.status_code == 304:
                return output, False
            if response.is_error:
                response.read()
                raise_for_error(response, "GET", path)
            target = output
            if output.is_dir():
                target = output / _attachment_name(response.headers, fallback=Path(path).name)
            expected = _sha256_of(response.headers.get("repr-digest", ""))
            if target.is_file() and sha256_of_file(target) == expected:
                return target, False  # closing the stream unread ends the transfer
            write_checked(response.iter_bytes(), target, expected)
            return target, True
    except httpx.TransportError as error:
        raise ServerError(f"cannot reach {client.base_url}: {error}") from error


def _attachment_name(headers: httpx.Headers, fallback: str) -> str:
    # Only a plain name: never a hidden file, a parent folder or a path elsewhere.
    match = _FILENAME.search(headers.get("content-disposition", ""))
    return match.group(1) if match and not match.group(1).startswith(".") else fallback


def _sha256_of(repr_digest: str) -> str:
    match = _SHA256_DIGEST.search(repr_digest)
    try:
        digest = base64.b64decode(match.group(1), validate=True) if match else b""
    except binascii.Error:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise ServerError(f"the server sent no SHA-256 to check the file by: {repr_digest!r}")
    return digest.hex()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_checked(chunks: Iterator[bytes], target: Path, expected: str) -> None:
    """Write ``chunks`` to ``target`` only if their SHA-256 is ``expected`` (hex)."""
    hasher = hashlib.sha256()
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); the saved model gets what the umask allows.
        os.chmod(partial, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            for chunk in chunks:
                hasher.update(chunk)
                file.write(chunk)
        if hasher.hexdigest() != expected:
            raise ServerError(
                f"the download's sha256 {hasher.hexdigest()} is not the version's {expected}; "
                "nothing was saved, try again"
            )
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
