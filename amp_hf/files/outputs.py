"""Output folders: checked before any compute, written atomically, replaced only when amp-hf wrote them.

Every command that writes a folder calls ``prepare_output`` before loading a model, then writes through
``atomic_directory``: a hidden staging folder beside the target (``.NAME.partial-<pid>-…``) renamed into
place at the end, so a crash never leaves a half-written output. Each finished folder holds a small marker
(``.amp-hf-output.json``) listing the entries amp-hf wrote; ``overwrite`` replaces only such a folder (or one
of amp-hf's known artifacts written before the marker existed), never one holding other files, and never
one that contains or lies inside an input of the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .._version import __version__
from ..errors import LinkOutsideError, OutputError, UsageError
from .artifacts import (
    CONFIG_FILE,
    DEMO_SUMMARY_FILE,
    EXPORT_METADATA_FILE,
    OUTPUT_MARKER,
    PROCESSOR_FILES,
    PRUNE_REPORT_FILE,
    REFERENCE_RECORD_FILE,
    SCORES_META_FILE,
    TOKENIZER_FILES,
)

MARKER = OUTPUT_MARKER
DEFAULT_FLAG = "overwrite=true (--overwrite)"
# Artifacts that identify an output folder amp-hf wrote before it left a marker.
_LEGACY_ARTIFACTS = (PRUNE_REPORT_FILE, EXPORT_METADATA_FILE, SCORES_META_FILE, REFERENCE_RECORD_FILE)
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[^/]*$")


def expand(path: str | os.PathLike) -> Path:
    """``~`` expanded, as every path a user passes to amp-hf is."""
    return Path(os.path.expanduser(os.fspath(path)))


def expand_user(path: str | None) -> str | None:
    """``~`` expanded in a config string that may be a path (aliases and ids pass through unchanged)."""
    return os.path.expanduser(path) if isinstance(path, str) else path


def prepare_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    flag: str = DEFAULT_FLAG,
) -> Path:
    """Check that the folder ``path`` may be written, before any compute; creates and deletes nothing.

    Raises ``OutputError`` (one line naming the fix) when ``path`` is a file, exists without ``overwrite``,
    is not amp-hf's to replace, overlaps an input, or when its parent is a file or not writable.
    Returns the path with ``~`` expanded.
    """
    target = expand(path)
    _check_parent(target)
    _check_inputs(target, inputs, overwrite)
    if target.exists() or target.is_symlink():
        _check_replaceable(target, overwrite, flag)
    return target


def _check_parent(target: Path) -> None:
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create {target}: {ancestor} is a file, not a folder; choose another output path")
    if not _writable(ancestor):
        raise OutputError(f"cannot write into {ancestor} (read-only): choose an output path in a writable folder")


def _writable(folder: Path) -> bool:
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return False
    # root may write anywhere; a folder nobody may write to was still made read-only on purpose
    return not (os.geteuid() == 0 and not folder.stat().st_mode & 0o222)


def _resolved(path: Path) -> Path:
    return path.resolve(strict=False)


def _check_inputs(target: Path, inputs: Iterable, overwrite: bool) -> None:
    resolved = _resolved(target)
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = expand(item)
        if not source.exists():  # an alias ("minilm", "digits") or a Hub id, not a local path
            continue
        source = _resolved(source)
        if source == resolved or resolved in source.parents:
            raise OutputError(
                f"output {target} {'is' if source == resolved else 'contains'} the input {item}: writing it "
                "would destroy the input; choose an output path outside it"
            )
        if overwrite and source in resolved.parents and resolved.exists():
            raise OutputError(
                f"output {target} lies inside the input {item}, so overwrite will not replace it: choose an "
                "output path outside the input, or remove that folder yourself"
            )


def _check_replaceable(target: Path, overwrite: bool, flag: str) -> None:
    if target.is_symlink():  # replacing it would swap the link for a folder, never touch what it points to
        raise OutputError(
            f"output {target} is a symlink (to {os.readlink(target)}): amp-hf does not write through or replace "
            "links; give the folder it points to as the output, or choose another output path"
        )
    if not target.is_dir():
        raise OutputError(f"output {target} exists and is not a folder: choose another output path")
    if not overwrite:
        raise OutputError(f"{target} already exists: choose another output path, or pass {flag} to replace it")
    entries = sorted(entry.name for entry in target.iterdir())
    if not entries:
        return  # an empty folder: nothing to lose
    written = written_entries(target)
    if written is None:
        raise OutputError(
            f"{target} was not written by amp-hf, so overwrite will not delete it: choose another output path, "
            "or remove the folder yourself"
        )
    foreign = [name for name in entries if name not in written and name != MARKER]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"{target} holds files amp-hf did not write ({shown}), so overwrite will not delete it: move them "
            "out or choose another output path"
        )


def marker_lists(folder: str | os.PathLike, name: str) -> bool:
    """True when ``folder``'s marker says amp-hf wrote its entry ``name`` (a file amp-hf may write over)."""
    try:
        return name in json.loads((Path(folder) / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def written_entries(folder: Path) -> set[str] | None:
    """The top-level entries amp-hf wrote into ``folder``, or None when amp-hf did not write it."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            values = json.loads(marker.read_text())
            return set(values["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if _legacy_output(folder):
        return {entry.name for entry in folder.iterdir()}
    return None


def _legacy_output(folder: Path) -> bool:
    if any((folder / name).is_file() for name in _LEGACY_ARTIFACTS):
        return True
    if (folder / DEMO_SUMMARY_FILE).is_file() and (folder / "checkpoint").is_dir():  # amp-hf demo
        return True
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and str(config.get("model_type", "")).startswith("amp_")


def record_written(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (entries amp-hf just wrote into an existing amp-hf output folder) to its marker."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return
    try:
        values = json.loads(marker.read_text())
        values["files"] = sorted(set(values.get("files", [])) | set(names))
    except (OSError, ValueError, TypeError, AttributeError):
        return
    _write_marker(Path(folder), values)


def _write_marker(folder: Path, values: dict) -> None:
    handle, staging = tempfile.mkstemp(prefix=f"{MARKER}.", dir=folder)
    with os.fdopen(handle, "w") as file:
        json.dump(values, file, indent=1)
    os.chmod(staging, default_mode(directory=False))
    os.replace(staging, folder / MARKER)


def default_mode(directory: bool = True) -> int:
    """The mode ``mkdir`` / ``open`` give under the current umask (mkdtemp and mkstemp use 0700 / 0600)."""
    mask = _umask()
    return (0o777 if directory else 0o666) & ~mask


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Give every file the mode a plain ``open`` would (some writers use mkstemp's 0600), keeping exec bits."""
    file_mode = default_mode(directory=False)
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if not os.path.islink(path):
                os.chmod(path, file_mode | (mode & 0o111 & default_mode()))


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove staging / trash folders of ``target`` left by runs that were killed (their process is gone)."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = _STAGING.match(entry.name)
        if not match or match["name"] != target.name or not entry.is_dir() or _alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    flag: str = DEFAULT_FLAG,
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on error it vanishes.

    ``target`` is checked as ``prepare_output`` does, on entry and again just before it is replaced.
    """
    inputs = list(inputs)
    target = prepare_output(target, overwrite=overwrite, inputs=inputs, flag=flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    os.chmod(staging, default_mode())
    try:
        yield staging
        _write_marker(staging, {"written_by": "amp-hf", "version": __version__,
                                "files": sorted(entry.name for entry in staging.iterdir())})  # fmt: skip
        _apply_umask(staging)
        if target.exists() or target.is_symlink():
            prepare_output(target, overwrite=overwrite, inputs=inputs, flag=flag)  # still ours to replace?
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException as error:
        full = disk_full_error(error, staging)  # judged before the cleanup frees the space again
        shutil.rmtree(staging, ignore_errors=True)
        if full is not None:  # named by the output asked for, not the staging folder just removed
            raise OSError(full.errno, full.strerror, str(target)) from error
        raise
    record_written(target.parent, [target.name])


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


# safetensors (Rust) reports an I/O failure as its own SafetensorError, keeping only the OS error text
_DISK_FULL_TEXT = re.compile(r"\(os error (?:28|122)\)|No space left on device|Disk quota exceeded")
# torch.save's zip writer reports a short write without the cause ("unexpected pos N vs M")
_FREE_AFTER_FAILURE = 64 * 1024


def disk_full_error(error: BaseException, folder: str | os.PathLike | None = None) -> OSError | None:
    """``error`` (raised while writing into ``folder``) as an ``OSError(ENOSPC)``, or None if the disk was not full.

    Recognised: an ENOSPC / EDQUOT OSError, any error whose text (or cause's) carries the OS message, and a
    writer's error raised while ``folder``'s file system has (next to) no space left."""
    seen = error
    while seen is not None:
        if is_disk_full(seen):
            return seen if seen is error else OSError(seen.errno, seen.strerror, seen.filename or folder)
        if _DISK_FULL_TEXT.search(str(seen)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder) if folder else None)
        seen = seen.__cause__ or seen.__context__
    if folder is not None and not isinstance(error, (KeyboardInterrupt, SystemExit, UsageError)):
        with contextlib.suppress(OSError):
            existing = next(p for p in (Path(folder), *Path(folder).parents) if p.exists())
            if shutil.disk_usage(existing).free < _FREE_AFTER_FAILURE:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


def check_free_space(folder: str | os.PathLike, needed: int, what: str, keep: str = "") -> None:
    """Refuse (``OutputError``) to start writing ``needed`` bytes of ``what`` into ``folder`` when its file system
    has less free space."""
    existing = next(p for p in (expand(folder), *expand(folder).parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputError(
            f"not enough free space for {what} in {folder}: it needs about {needed / 2**20:,.1f} MiB and "
            f"{free / 2**20:,.1f} MiB are free{keep}; free some space or choose another output"
        )


# -- folders amp-hf sends or copies -----------------------------------------------------------------------


def _link_roots(root: Path) -> list[Path]:
    """Where links in ``root`` may point: inside it, and for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<rev>``, whose files are links into ``../../blobs``) that repo's blobs."""
    roots = [root]
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        roots.append((root.parent.parent / "blobs").resolve())
    return roots


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _refuse_link(link: Path, target: Path, folder: Path) -> None:
    shown = os.readlink(link)
    where = shown if os.path.isabs(shown) else f"{shown} ({target})"
    if not target.exists():
        raise LinkOutsideError(f"{link} is a symlink to {where}, which does not exist: remove the link or restore "
                               "its target")
    raise LinkOutsideError(
        f"{link} is a symlink to {where}, outside {folder}: amp-hf sends and copies only what lies inside the "
        "folder; replace the link by a copy of what it points to, or remove it"
    )


def folder_files(folder: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 skip: Callable[[tuple[str, ...]], bool] = lambda parts: False) -> list[tuple[str, Path]]:
    """Every file under ``folder`` as ``(relative posix path, path)``, sorted; the one way amp-hf lists a folder
    it uploads (``push``, ``demo --push``) or copies.

    Symlinks (to files or folders) are followed when their target lies inside ``root`` (default: ``folder``);
    any other link raises ``LinkOutsideError`` naming it and its target, before anything is read: a link
    would otherwise send or copy a file the user never put in the folder. ``skip(parts)`` drops entries (and
    whole sub-folders) by their relative path parts, before they are checked.
    """
    folder = Path(folder)
    boundary = Path(root) if root is not None else folder
    roots = _link_roots(boundary.resolve())
    found: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: tuple[str, ...], visiting: frozenset[Path]) -> None:
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            parts = (*prefix, entry.name)
            if skip(parts):
                continue
            if entry.is_symlink():
                target = entry.resolve(strict=False)
                if not target.exists() or not _inside(target, roots):
                    _refuse_link(entry, target, boundary)
            else:
                target = entry
            if target.is_dir():
                resolved = target.resolve()
                if resolved not in visiting:  # a link back to a folder being walked would never end
                    walk(entry, parts, visiting | {resolved})
            elif target.is_file():
                found.append(("/".join(parts), entry))

    walk(folder, (), frozenset({folder.resolve()}))
    return found


def check_link_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (a file of the folder ``root``), refused as ``folder_files`` refuses a link out of ``root``."""
    path = Path(path)
    if path.is_symlink():
        resolved = path.resolve(strict=False)
        if not resolved.exists() or not _inside(resolved, _link_roots(Path(root).resolve())):
            _refuse_link(path, resolved, Path(root))
    return path


def copy_file_from(root: str | os.PathLike, source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy one file of the folder ``root``, refusing a link out of it as ``folder_files`` does."""
    shutil.copy2(check_link_inside(root, source), target)


def copy_processor_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy the processor / tokenizer files of the model folder ``source`` into ``target`` as they are (links out
    of ``source`` refused); returns the names copied."""
    source, copied = Path(source), []
    for name in (*PROCESSOR_FILES, *TOKENIZER_FILES):
        if (source / name).is_file():
            copy_file_from(source, source / name, Path(target) / name)
            copied.append(name)
    return copied
