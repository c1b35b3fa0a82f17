"""The key that signs and verifies control records (used by the worker, the CLI and replays).

``control.key``, else the file ``control.key_file``, else ``<worker.data_dir>/control.key``,
made on first use (mode 0600): a worker and the CLI of the same configuration on one machine
then share a key with no setup. A fleet configures one key (or key file) everywhere.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from streams import masking
from streams.config import ConfigError, Settings, resolve_path

KEY_FILE = "control.key"


def default_key_path(settings: Settings) -> Path:
    return resolve_path(settings.worker.data_dir) / KEY_FILE


def control_key(settings: Settings) -> bytes:
    """The control key's bytes; ``ConfigError`` naming the setting when the key file named in
    ``control.key_file`` is missing, unreadable or empty."""
    configured = settings.control.key.get_secret_value().strip()
    if configured:
        return configured.encode("utf-8")
    if settings.control.key_file:
        return _read_key(resolve_path(settings.control.key_file), "control.key_file")
    path = default_key_path(settings)
    if not path.exists():
        _create_key_file(path)
    return _read_key(path, f"the default key file (control.key unset, worker.data_dir = {settings.worker.data_dir})")


def _read_key(path: Path, setting: str) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError([f"{setting}: cannot read {path}: {exc.strerror or exc}"]) from None
    if len(key) < 16:
        raise ConfigError([f"{setting}: {path} must hold a key of at least 16 characters"])
    masking.add_secret(key.decode("utf-8", "replace"))  # the file may be newer than this process's masking
    return key


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` unless another process does first: the key is written
    whole to a private file, then linked into place, so no reader ever sees a partial key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            os.link(draft, path)
        except FileExistsError:  # another worker or CLI made it first: use theirs
            pass
    finally:
        draft.unlink(missing_ok=True)
