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

A set of files (:func:`atomic_writes`, e.g. the sources of one input) is placed all or
nothing: when one cannot be placed, those placed before it are taken back (a file they
replaced kept under a hidden name until the set is complete, and restored).
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
    with atomic_writes([path], force=force) as (f,):
        yield f


@contextlib.contextmanager
def atomic_writes(paths, force=False):
    """Yield a list of binary file objects, one per path; on normal exit they all become
    their paths, or none of them does: when one cannot be put in place (a file or a folder
    appeared there, a write error), those already placed are taken back, the files they
    replaced (`force`) restored where the file system has hard links (without them, a
    replaced file that was already overwritten is lost). Checks and errors as for
    :func:`atomic_write`. Only a kill while they are being placed, one by one, can leave
    part of the set."""
    outputs = []
    try:
        for p in paths:
            outputs.append(_Output(p, force))
        yield [o.file for o in outputs]
        _place_all(outputs)
    finally:
        for o in outputs:
            o.close()


def _place_all(outputs):
    try:
        for i, o in enumerate(outputs):
            o.place(keep_old=i + 1 < len(outputs))  # the last one is never taken back
    except BaseException:
        for o in reversed(outputs):
            with contextlib.suppress(OSError):
                o.take_back()
        raise
    for folder in dict.fromkeys(o.folder for o in outputs):
        _fsync_dir(folder)


class _Output:
    """One file being written: unnamed (or under a hidden name) in its destination folder."""

    def __init__(self, path, force):
        self.path, self.force = os.fspath(path), force
        self.folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):  # --force cannot replace it either: refuse before any work
            raise IsADirectoryError(f"{self.path}: is a folder, not a file name")
        if os.path.exists(self.path) and not force:
            raise _exists_error(self.path)
        os.makedirs(self.folder, exist_ok=True)
        remove_stale_partials(self.folder)
        self.tmp = self.old = None  # hidden names: the fallback's file, the replaced file's copy
        self.placed = False
        fd = _open_unnamed(self.folder)
        if fd is None:
            fd, self.tmp = tempfile.mkstemp(prefix=_partial_prefix(), dir=self.folder)
        self.file = os.fdopen(fd, "w+b")

    def place(self, keep_old=False):
        """Give the finished file its name; `keep_old`: keep what it replaces for take_back."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.force and keep_old:
                self.old = _hidden_link(self.path, self.folder)
            if self.tmp is None:
                _link_into_place(self.file.fileno(), self.path, self.folder, self.force)
            elif self.force:
                os.replace(self.tmp, self.path)
            else:  # link(2) never overwrites, unlike rename(2): no check-then-replace race
                try:
                    os.link(self.tmp, self.path)
                except FileExistsError:
                    raise _exists_error(self.path) from None
        except OSError as exc:
            if exc.errno is not None and exc.filename is None:  # a failed flush or fsync: say which file
                exc.filename = self.path
            raise
        self.placed = True

    def take_back(self):
        """Undo place(): the replaced file back where it was kept, else ours removed (only if
        what is there now is still ours)."""
        if not self.placed:
            return
        self.placed = False
        if self.old is not None:
            os.replace(self.old, self.path)
            self.old = None
            return
        here, ours = os.lstat(self.path), os.fstat(self.file.fileno())
        if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(self.path)

    def close(self):
        """Close the file and drop the hidden names (the unnamed file vanishes by itself)."""
        with contextlib.suppress(OSError):  # after place() nothing is left to flush; on an error, nothing matters
            self.file.close()
        for name in (self.tmp, self.old):
            if name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)


def existing_ancestor(path):
    """The deepest folder above `path` that exists: where writing it would start making
    folders (a file there, or one not writable, stops the write)."""
    made = folders_to_make([path])
    return os.path.dirname(made[-1]) if made else os.path.dirname(os.path.abspath(path))


def unwritable_folder(path):
    """The existing folder above `path` that stops writing it -- a file where a folder goes,
    or a folder this process may not write in -- else None."""
    folder = existing_ancestor(path)
    return None if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK) else folder


def folders_to_make(paths):
    """The folders that writing `paths` would create, deepest first."""
    missing = set()
    for p in paths:
        folder = os.path.dirname(os.path.abspath(p))
        while not os.path.exists(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    return sorted(missing, key=lambda f: (-f.count(os.sep), f))


def remove_empty_folders(folders):
    """Remove those of `folders` (deepest first) that are empty. Only once no writer is
    left: an unnamed file being written (O_TMPFILE) is no entry, so its folder looks empty."""
    for f in folders:
        with contextlib.suppress(OSError):
            os.rmdir(f)


def _hidden_link(path, folder):
    """A hidden second name for the file at `path` (None when there is none, or the file
    system has no hard links): what a replaced file is restored from."""
    if not os.path.lexists(path):
        return None
    while True:
        name = os.path.join(folder, f"{_partial_prefix()}{os.urandom(6).hex()}")
        try:
            os.link(path, name, follow_symlinks=False)
            return name
        except FileExistsError:
            continue
        except OSError:
            return None


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
