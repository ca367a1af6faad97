"""Files that appear complete or not at all.

A result is written to an unnamed file in its destination folder (Linux ``O_TMPFILE``)
and linked into place once complete, so a run that is killed, even with SIGKILL, leaves
nothing behind. Where ``O_TMPFILE`` is unsupported, a hidden temporary file in the same
folder is renamed into place, and removed on any error.
"""
import contextlib
import ctypes
import os
import tempfile

_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400


class OutputExistsError(FileExistsError):
    pass


@contextlib.contextmanager
def atomic_write(path, force=False):
    """Yield a binary file object; on normal exit, it becomes `path` (fsynced).

    An existing `path` is replaced only with `force=True`; otherwise OutputExistsError
    is raised before anything is written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not force:
        raise OutputExistsError(f"{path}: exists (use --force to overwrite)")
    os.makedirs(folder, exist_ok=True)
    fd = _open_unnamed(folder)
    if fd is not None:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            _link_into_place(f.fileno(), path, folder, force)
        _fsync_dir(folder)
        return
    fd, tmp = tempfile.mkstemp(prefix=".chimera-partial-", dir=folder)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not force and os.path.exists(path):
            raise OutputExistsError(f"{path}: exists (use --force to overwrite)")
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _open_unnamed(folder):
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        fd = os.open(folder, flag | os.O_RDWR, 0o644)
    except OSError:
        return None
    if not os.path.exists(f"/proc/self/fd/{fd}"):  # no procfs: cannot name it later
        os.close(fd)
        return None
    return fd


def _linkat(fd, path):
    """Give the unnamed file `fd` the name `path` (linkat with AT_SYMLINK_FOLLOW on
    /proc/self/fd, which unprivileged users may do; os.link does not follow there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _link_into_place(fd, path, folder, force):
    if not force:
        try:
            _linkat(fd, path)
            return
        except FileExistsError:
            raise OutputExistsError(f"{path}: exists (use --force to overwrite)") from None
    # link under a fresh hidden name, then rename over the old file: atomic replacement
    while True:
        tmp = os.path.join(folder, f".chimera-partial-{os.urandom(6).hex()}")
        try:
            _linkat(fd, tmp)
            break
        except FileExistsError:
            continue
    os.replace(tmp, path)


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
