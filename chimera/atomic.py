"""Files that appear complete or not at all.

A result is written to an unnamed file in its destination folder (Linux ``O_TMPFILE``)
and linked into place once complete, so a run that is killed, even with SIGKILL, leaves
nothing behind. Where ``O_TMPFILE`` is unsupported, a hidden temporary file in the same
folder is renamed into place, and removed on any error.

Replacing an existing file (``force=True``) needs a name for the finished file before the
atomic rename over the old one, so a SIGKILL between those two steps (or during the
write, in the fallback) can leave a hidden partial file. Partial files carry the host and
process id of their writer, and every write removes the ones in its folder whose writer
on this host is gone: a partial file outlives its writer only until the next write there.
"""
import contextlib
import ctypes
import os
import socket
import tempfile

_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400
PARTIAL_PREFIX = ".chimera-partial-"


class OutputExistsError(FileExistsError):
    pass


def _exists_error(path):
    return OutputExistsError(f"{path}: exists (use --force to overwrite)")


@contextlib.contextmanager
def atomic_write(path, force=False):
    """Yield a binary file object; on normal exit, it becomes `path` (fsynced).

    A folder at `path` is refused (IsADirectoryError) before anything is written. An
    existing `path` is replaced only with `force=True`; otherwise OutputExistsError is
    raised, before anything is written when `path` exists already, and at the end (the
    written data discarded, the other file kept) when it appeared during the write."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):  # --force cannot replace it either: refuse before any work
        raise IsADirectoryError(f"{path}: is a folder, not a file name")
    if os.path.exists(path) and not force:
        raise _exists_error(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_partials(folder)
    fd = _open_unnamed(folder)
    if fd is not None:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            _link_into_place(f.fileno(), path, folder, force)
        _fsync_dir(folder)
        return
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(), dir=folder)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:  # link(2) never overwrites, unlike rename(2): no check-then-replace race
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _exists_error(path) from None
            os.unlink(tmp)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _partial_prefix():
    return f"{PARTIAL_PREFIX}{socket.gethostname()}.{os.getpid()}."


def _writer_gone(name):
    """True for a partial file written on this host by a process that no longer exists."""
    host, _, pid = name[len(PARTIAL_PREFIX):].rpartition(".")[0].rpartition(".")  # host.pid.random
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's (its pids mean nothing here), or not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_partials(folder):
    """Remove the partial files in `folder` whose writer died (see the module docstring)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            if name.startswith(PARTIAL_PREFIX) and _writer_gone(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))


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
            raise _exists_error(path) from None
    # link under a fresh hidden name, then rename over the old file: atomic replacement
    while True:
        tmp = os.path.join(folder, f"{_partial_prefix()}{os.urandom(6).hex()}")
        try:
            _linkat(fd, tmp)
            break
        except FileExistsError:
            continue
    try:
        os.replace(tmp, path)
    except BaseException:  # e.g. a folder appeared at `path`: the named copy must not stay
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
