"""The server's scratch folder: owned through an flock, swept at start of what a killed server left there.

A job downloads its dataset and builds its bundle in `<work dir>/<job_id>/`; a server killed with
SIGKILL (or by the OOM killer) leaves that behind, a full copy of the dataset. So the folder is owned:

- WORK_DIR set: the server takes an exclusive, non-blocking flock on `WORK_DIR/.train_svc.lock` (a second
  live server on the same WORK_DIR fails its start with ConfigError), then removes every entry whose name
  is a job id (`check_job_id`); a symlink is removed as a link, never followed.
- WORK_DIR unset: a fresh `train_svc-*` folder under the system temp dir, locked the same way; first,
  every other `train_svc-*` folder of this user whose lock nobody holds (its server is gone) is removed,
  and one whose lock is held (a live server) is left alone.

The kernel drops an flock when its holder dies, however it dies, so a held lock means a live server.
Every deletion goes through `sentiment.names.remove_tree`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import tempfile
from pathlib import Path

from sentiment.errors import ConfigError, InvalidInput
from sentiment.names import check_job_id, remove_tree

log = logging.getLogger(__name__)

LOCK_FILE = ".train_svc.lock"
TEMP_PREFIX = "train_svc-"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def try_lock(path: Path, flags: int = _OPEN_FLAGS) -> int | None:
    """An open descriptor of `path` holding an exclusive flock, or None when another process holds it.

    The descriptor is not inherited by children (the trainer must not keep a dead server's lock).
    """
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class WorkDir:
    """An owned scratch folder; `path` is where job folders go. `close()` releases it (safe twice)."""

    def __init__(self, path: Path, lock_fd: int, temporary: bool) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._temporary = temporary

    @classmethod
    def open(cls, work_dir: str) -> WorkDir:
        """Own `work_dir` (created if missing), or a new temp folder when it is ""; sweep as described above.

        ConfigError when another live server holds `work_dir`.
        """
        if not work_dir:
            return cls._open_temporary()
        path = Path(work_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = try_lock(path / LOCK_FILE)
        except OSError as exc:
            raise ConfigError(f"WORK_DIR={work_dir} cannot be used: {exc}") from exc
        if fd is None:
            raise ConfigError(
                f"WORK_DIR={work_dir} is in use by another running train_svc (it holds {path / LOCK_FILE}); "
                "give each server its own WORK_DIR"
            )
        try:
            remove_stale_jobs(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, temporary=False)

    @classmethod
    def _open_temporary(cls) -> WorkDir:
        root = Path(tempfile.gettempdir())
        remove_stale_temp_dirs(root)
        path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        # Locked under another name, then renamed: a sweeping server never sees this lock file unlocked.
        fd = try_lock(path / (LOCK_FILE + ".new"), _OPEN_FLAGS | os.O_EXCL)
        assert fd is not None, "a lock file just created exclusively cannot be held by anyone else"
        os.rename(path / (LOCK_FILE + ".new"), path / LOCK_FILE)
        return cls(path, fd, temporary=True)

    def close(self) -> None:
        """Release the lock; a temp folder is deleted first (an error is logged, not raised)."""
        if self._lock_fd is None:
            return
        if self._temporary:
            try:
                remove_tree(self.path.parent, self.path)
            except (OSError, ValueError):
                log.exception("could not remove the scratch folder %s", self.path)
        os.close(self._lock_fd)
        self._lock_fd = None


def remove_stale_jobs(work_dir: Path) -> None:
    """Remove every entry of `work_dir` named like a job id: a folder a killed server's job left."""
    for entry in sorted(work_dir.iterdir()):
        try:
            check_job_id(entry.name)
        except InvalidInput:
            continue
        try:
            remove_tree(work_dir, entry)
        except (OSError, ValueError):
            log.exception("could not remove stale job scratch %s", entry, extra={"job_id": entry.name})
            continue
        log.warning("removed stale job scratch %s", entry, extra={"job_id": entry.name})


def remove_stale_temp_dirs(temp_root: Path) -> None:
    """Remove this user's `train_svc-*` folders in `temp_root` whose lock file is there and not held.

    A folder with no lock file is left alone: it may belong to a server that is starting right now.
    """
    for entry in sorted(temp_root.glob(TEMP_PREFIX + "*")):
        try:
            info = entry.lstat()
            lock = (entry / LOCK_FILE).lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or not stat.S_ISREG(lock.st_mode):
            continue
        try:
            fd = try_lock(entry / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile, by its server or by another one sweeping
        if fd is None:
            log.debug("leaving %s: its server is running", entry)
            continue
        try:
            remove_tree(temp_root, entry)
            log.warning("removed stale scratch folder %s (its server is gone)", entry)
        except (OSError, ValueError):
            log.exception("could not remove stale scratch folder %s", entry)
        finally:
            os.close(fd)
