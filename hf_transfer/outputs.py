"""Where a run writes: the output folder is checked before any work, guarded by a lock, and replaced whole.

- :func:`check_output_location` runs right after the recipe is read, before any data or weights load. It refuses an
  ``output_dir`` that is a file, is not writable, or already holds something this recipe did not write (another
  export, a data folder, another run's checkpoints that ``save_total_limit`` would rotate away) unless
  ``overwrite_output_dir: true``; it refuses ``push_to_hub`` when the Hub cannot be reached; and it takes the folder's
  lock for the run, so a second concurrent writer fails at once instead of interleaving files.
- :func:`publish_folder` puts a staged export in place as one whole folder: the old folder is swapped out in a single
  ``renameat2(RENAME_EXCHANGE)`` (two renames where the filesystem lacks it, rolled back on the next run if a crash
  falls between them), then deleted. A reader, or a crash at any moment, sees either the complete old folder or the
  complete new one. What the run itself wrote into the folder while training (``checkpoint-*``, logs, method files)
  is carried into the new folder; files of an earlier export are not, so nothing stale is mixed in.

A small marker, ``.hf-transfer-run.json``, records a fingerprint of the recipe that owns the folder (one hash per
field, no values, so no path or secret is kept): rerunning the same recipe into its own folder needs no overwrite.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError, UserError

logger = logging.getLogger(__name__)

RUN_MARKER = ".hf-transfer-run.json"
# Recipe fields that do not change what a run produces, so they do not make a folder "another recipe's".
_NOT_FINGERPRINTED = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
                      "hub_token", "hub_private_repo", "hub_strategy", "report_to", "logging_steps", "disable_tqdm",
                      "run_name"}
_TRAINER_OUTPUTS = re.compile(r"^(checkpoint-\d+|runs)$")  # what the Trainer writes into output_dir while training


# ---------------------------------------------------------------------------------------------------------------
# Files written with the user's umask
# ---------------------------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (folder) under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader never sees half a file. The
    file gets the mode a plain ``open`` would give it (``mkstemp`` alone makes it 0600, unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# The lock: one writer per output folder
# ---------------------------------------------------------------------------------------------------------------


def lock_path(destination: Path) -> Path:
    """The lock file beside ``destination`` (not inside: the folder itself is swapped)."""
    return destination.parent / f".{destination.name}.lock"


@dataclass
class _Held:
    fd: int
    count: int = 1


_HELD: dict[str, _Held] = {}


@atexit.register
def _release_all() -> None:
    """A run that failed keeps its lock until the process ends (the next run in the same process takes it over);
    at exit the lock files go too."""
    for key in list(_HELD):
        release_lock(key, fully=True)


def _key(destination: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(destination)))


def acquire_lock(destination: str | os.PathLike) -> None:
    """Take the output folder's lock (re-entrant within this process), or fail with one line naming the process
    that holds it. An ``flock`` dies with its process, so a crashed run never leaves the folder locked; the pid in
    the file is only there to name the holder."""
    key = _key(destination)
    held = _HELD.get(key)
    if held is not None:
        held.count += 1
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: runs are not guarded against each other
        return
    path = lock_path(Path(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_pid(path)
            raise UserError(
                f"output_dir: {key!r} is being written by another hf-transfer run"
                f"{f' (pid {holder})' if holder else ''}; wait for it to finish or choose another output_dir"
            ) from None
        # The holder we waited on may have removed the file between our open and our lock: then we hold a lock on a
        # file nobody else can see. Try again on the file that is there now.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = _Held(fd)


def release_lock(destination: str | os.PathLike, *, fully: bool = False) -> None:
    """Give back one hold on the lock (all of them with ``fully``); the last one removes the lock file."""
    key = _key(destination)
    held = _HELD.get(key)
    if held is None:
        return
    held.count = 0 if fully else held.count - 1
    if held.count > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(Path(key)))  # while still locked, so nobody else is holding this inode
    os.close(held.fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------------------------
# Checking the output location before any work
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class OutputLocation:
    """What :func:`check_output_location` learnt: the folder, whether it is this recipe's own (or was empty), the
    recipe's fingerprint, and when each entry already there was last modified (to tell this run's files from older
    ones at publish time)."""

    path: Path
    own: bool
    fingerprint: dict[str, str]
    before: dict[str, float] = field(default_factory=dict)


_CHECKED: dict[str, OutputLocation] = {}


def recipe_fingerprint(recipe) -> dict[str, str]:
    """One short hash per recipe field (values are never stored), fields that do not change the result left out."""
    flat = recipe.to_dict()
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for k, v in sorted(flat.items()) if k not in _NOT_FINGERPRINTED
    }


def check_output_location(recipe) -> OutputLocation:
    """Refuse, before any data or model loads, an output location the run could not use or would spoil; take the
    folder's lock for the run (main process). Returns what :func:`publish_folder` needs to replace the folder whole.

    Raises :class:`~hf_transfer.errors.RecipeError` (one line naming the field) when ``output_dir`` is a file, is not
    writable, holds something this recipe did not write (without ``overwrite_output_dir: true``), or when
    ``push_to_hub`` is set and the Hub is offline or refuses the token.
    """
    args = recipe.training
    out = Path(os.path.expanduser(str(args.output_dir)))
    _check_writable(out)
    if args.push_to_hub:
        check_hub_reachable(args.hub_token, field_name="push_to_hub")
    overwrite = bool(getattr(recipe.model, "overwrite_output_dir", False))
    resume = str(args.resume_from_checkpoint).strip().lower() not in ("none", "", "false")
    fingerprint = recipe_fingerprint(recipe)
    main = args.process_index == 0
    if main:
        acquire_lock(out)
    try:
        if main:  # a crashed run's leftovers first: an interrupted swap may have to put the folder back
            _remove_leftovers(out, include_own_pid=True)
        entries = _entries(out)
        own = not entries or _read_marker(out) == fingerprint or (
            resume and _resumes_inside(args.resume_from_checkpoint, out))
        if not own and not overwrite:
            raise RecipeError(
                f"output_dir: {str(out)!r} already holds {_describe_owner(out, entries, fingerprint)}; choose a new "
                "output_dir, resume with resume_from_checkpoint, or set overwrite_output_dir: true to replace it"
            )
    except BaseException:
        if main:
            release_lock(out)
        raise
    if not own:
        logger.warning("output_dir %s holds %s; overwrite_output_dir: true, so the export will replace it whole",
                       out, _describe(out, entries))
    location = OutputLocation(out, own, fingerprint, {name: _newest_mtime(out / name) for name in entries})
    if main and own and out.is_dir():  # nothing is created before the data is checked; the export writes it too
        atomic_write_json(out / RUN_MARKER, fingerprint)
    _CHECKED[_key(out)] = location
    return location


def _describe_owner(out: Path, entries: list[str], fingerprint: dict[str, str]) -> str:
    recorded = _read_marker(out)
    if not recorded:
        return _describe(out, entries)
    changed = sorted(k for k in set(fingerprint) | set(recorded) if recorded.get(k) != fingerprint.get(k))
    return f"a run of another recipe ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} differ)"


def check_hub_reachable(token: str | None, *, field_name: str) -> None:
    """Refuse a push that cannot happen (offline, Hub unreachable, no or bad token) before any work is done."""
    import huggingface_hub

    if huggingface_hub.is_offline_mode():
        raise RecipeError(f"{field_name}: the Hub is offline (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to push, or "
                          "train without pushing and run `hf-transfer push` later")
    try:
        huggingface_hub.whoami(token=token)
    except Exception as err:  # network errors, a missing token (LocalTokenNotFoundError), a rejected token
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RecipeError(f"{field_name}: cannot push to the Hub ({why}); log in with `hf auth login` or set "
                          "hub_token, and check the network") from None


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output_dir: {str(out)!r} is a file; give a folder path")
    ancestor = out.resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RecipeError(f"output_dir: {str(ancestor)!r} (a parent of {str(out)!r}) is a file; give a folder path")
    # The folder is swapped in beside itself, so its parent must take new entries too.
    for folder in {ancestor, *([out] if out.is_dir() else [])}:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise RecipeError(f"output_dir: cannot write into {str(folder)!r} ({err.strerror or err}); choose a "
                              "writable folder") from None


def _entries(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != RUN_MARKER)


def _read_marker(out: Path) -> dict[str, str] | None:
    try:
        data = json.loads((out / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _resumes_inside(value: Any, out: Path) -> bool:
    text = str(value).strip()
    if text.lower() in ("latest", "last", "true"):
        return True
    return os.path.abspath(text).startswith(os.path.abspath(out) + os.sep)


def _describe(out: Path, entries: list[str]) -> str:
    if any(name in entries for name in ("config.json", "adapter_config.json")):
        kind = "a model export"
    elif any(_TRAINER_OUTPUTS.match(name) for name in entries):
        kind = "another run's checkpoints"
    else:
        kind = "files"
    shown = ", ".join(entries[:4]) + (" ..." if len(entries) > 4 else "")
    return f"{kind} ({shown})"


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything inside it (a checkpoint folder's files included)."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


# ---------------------------------------------------------------------------------------------------------------
# Publishing a staged folder whole
# ---------------------------------------------------------------------------------------------------------------


def staging_dir(destination: Path) -> Path:
    """A new, empty folder beside ``destination`` to build the export in (same filesystem, so it can be swapped in).
    Its name carries our pid, so a later run can tell a crashed run's leftovers from a live run's."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".staging-{destination.name}-{os.getpid()}-"))
    os.chmod(stage, default_mode(directory=True))  # mkdtemp makes 0700; the published folder must be readable
    return stage


def discard_stage(stage: Path) -> None:
    """Remove a staging folder after a failed export."""
    shutil.rmtree(stage, ignore_errors=True)


def publish_folder(staging: Path, destination: Path, *, keep_lock: bool = False) -> None:
    """Replace ``destination`` by ``staging`` as a whole (see the module docstring); carry into it what this run
    wrote into ``destination`` while training. Call on the main process only. Holds the folder's lock meanwhile and
    gives it back afterwards, unless ``keep_lock`` (then call :func:`release_lock` when done, e.g. after a push)."""
    staging, destination = Path(staging), Path(destination)
    acquire_lock(destination)
    try:
        _recover_interrupted_swap(destination)
        location = _CHECKED.get(_key(destination))
        _normalise_modes(staging)
        if destination.is_dir():
            for name in _to_carry(destination, staging, location):
                _link_tree(destination / name, staging / name)
        if location is not None:
            atomic_write_json(staging / RUN_MARKER, location.fingerprint)
        elif (destination / RUN_MARKER).is_file() and not (staging / RUN_MARKER).exists():
            _link_tree(destination / RUN_MARKER, staging / RUN_MARKER)
        _swap_in(staging, destination)
        _remove_leftovers(destination, include_own_pid=False)
        _CHECKED.pop(_key(destination), None)
    except BaseException:
        discard_stage(staging)
        raise
    finally:
        if not keep_lock:
            release_lock(destination, fully=True)


def _normalise_modes(folder: Path) -> None:
    """Give every staged file and folder the mode the umask asks for: some writers (``mkstemp``, transformers'
    weight files) create 0600 files, which a shared output folder could not be read from."""
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    os.chmod(folder, dir_mode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def _to_carry(destination: Path, staging: Path, location: OutputLocation | None) -> list[str]:
    """Entries of the old folder that belong in the new one: what this run wrote while training (new or changed
    since the check), and the recipe's own earlier checkpoints (a resumed run's history). Stale files of an earlier
    export, and whatever ``overwrite_output_dir`` replaces, stay behind."""
    carry = []
    for entry in destination.iterdir():
        name = entry.name
        if name == RUN_MARKER or (staging / name).exists():
            continue
        if location is None:  # not checked (a direct call): keep only what the Trainer writes
            keep = bool(_TRAINER_OUTPUTS.match(name))
        else:
            before = location.before.get(name)
            keep = (before is None or _newest_mtime(entry) > before
                    or (location.own and bool(_TRAINER_OUTPUTS.match(name))))
        if keep:
            carry.append(name)
    return carry


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link ``source`` (a file or a folder tree) at ``target``: instant and no extra space, and the old folder
    stays untouched until the swap. Copies where the filesystem has no hard links."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    else:
        link(str(source), str(target))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, destination: Path) -> None:
    if not destination.exists():
        os.rename(staging, destination)
        return
    if _exchange(staging, destination):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
        return
    # Two renames: a crash between them leaves the old folder as .old-*, which the next run puts back.
    old = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".old-{destination.name}-{os.getpid()}-"))
    os.rmdir(old)
    os.rename(destination, old)
    try:
        os.rename(staging, destination)
    except BaseException:
        os.rename(old, destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _leftovers(destination: Path, kind: str) -> list[tuple[Path, int]]:
    pattern = re.compile(rf"^\.{kind}-{re.escape(destination.name)}-(\d+)-")
    found = []
    if destination.parent.is_dir():
        for p in destination.parent.iterdir():
            m = pattern.match(p.name)
            if m:
                found.append((p, int(m.group(1))))
    return found


def _recover_interrupted_swap(destination: Path) -> None:
    """If a run died between the two renames of a swap, the old folder is still complete under ``.old-*``: put it
    back, so the folder is never missing."""
    if destination.exists():
        return
    olds = sorted((p for p, pid in _leftovers(destination, "old") if not _alive(pid) or pid == os.getpid()),
                  key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], destination)
        logger.warning("restored %s from an interrupted export (%s)", destination, olds[-1].name)


def _remove_leftovers(destination: Path, *, include_own_pid: bool) -> None:
    """Delete staging and old folders that crashed runs left beside ``destination`` (those of live runs stay)."""
    _recover_interrupted_swap(destination)
    for kind in ("staging", "old"):
        for path, pid in _leftovers(destination, kind):
            if not _alive(pid) or (include_own_pid and pid == os.getpid()):
                shutil.rmtree(path, ignore_errors=True)
