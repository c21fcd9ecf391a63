#!/usr/bin/env python
"""Download, verify and extract PASCAL VOC 2007/2012 for p2s.

Usage::

    python data_scripts/download_voc.py --root data
    python data_scripts/download_voc.py --root data --sets 2007-trainval 2007-test
    python data_scripts/download_voc.py --root data --mirror https://my.mirror/voc

Result: ``ROOT/VOCdevkit/VOC2007`` (trainval + test) and ``ROOT/VOCdevkit/VOC2012``,
the layout ``p2s_lib.data.VOCDataset`` and ``torchvision.datasets.VOCDetection`` expect.

What it does, per archive:

1. skip it if ``ROOT/VOCdevkit/VOC20xx/.p2s_complete_<archive>`` exists;
2. otherwise use ``ROOT/<archive>`` if it is already there (placed by hand), or download it
   into ``ROOT/<archive>.part`` with a progress bar, resuming a partial ``.part`` file with an
   HTTP Range request (a server that ignores Range makes it start over);
3. check the MD5 (a bad file is moved to ``ROOT/<archive>.corrupt`` and the run fails);
4. extract into a temporary sibling directory ``ROOT/.p2s_extract_<archive>`` with tarfile's
   ``"data"`` filter (no absolute paths, no ``..``, no links out of the tree), move the
   ``VOC20xx`` folder into ``ROOT/VOCdevkit`` (``ImageSets`` last) and write the marker file last.

An interrupted run therefore never leaves a tree with a marker that is not complete, and
rerunning resumes where it stopped. Standard library + tqdm only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Mapping, Sequence

from tqdm import tqdm

__all__ = [
    "Archive",
    "ARCHIVES",
    "DEFAULT_SETS",
    "DownloadError",
    "ChecksumError",
    "UnsafeArchiveError",
    "archive_urls",
    "md5sum",
    "verify_md5",
    "download_file",
    "safe_extract",
    "extract_archive",
    "marker_path",
    "is_complete",
    "prepare_voc",
    "main",
]

CHUNK_SIZE = 1 << 20  # 1 MiB
USER_AGENT = "p2s-download-voc/1.0 (Python urllib)"
MARKER_PREFIX = ".p2s_complete_"
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4 / 3.10.12 / 3.9.17 / 3.8.17


# --------------------------------------------------------------------------- archive table


@dataclass(frozen=True)
class Archive:
    """One VOC archive: where to get it, its MD5, and which ``VOCdevkit/VOC20xx`` it fills."""

    key: str
    filename: str
    md5: str
    urls: tuple[str, ...]
    year_dir: str


_THOR = "https://thor.robots.ox.ac.uk/pascal/VOC"  # current host, used by torchvision
_HOST = "http://host.robots.ox.ac.uk/pascal/VOC"  # the original host, tried second


def _official(year: str, filename: str) -> tuple[str, ...]:
    return tuple(f"{base}/voc{year}/{filename}" for base in (_THOR, _HOST))


# MD5 values as published in torchvision.datasets.voc.DATASET_YEAR_DICT.
ARCHIVES: dict[str, Archive] = {
    "2007-trainval": Archive(
        "2007-trainval",
        "VOCtrainval_06-Nov-2007.tar",
        "c52e279531787c972589f7e41ab4ae64",
        _official("2007", "VOCtrainval_06-Nov-2007.tar"),
        "VOC2007",
    ),
    "2007-test": Archive(
        "2007-test",
        "VOCtest_06-Nov-2007.tar",
        "b6e924de25625d8de591ea690078ad9f",
        _official("2007", "VOCtest_06-Nov-2007.tar"),
        "VOC2007",
    ),
    "2012-trainval": Archive(
        "2012-trainval",
        "VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        _official("2012", "VOCtrainval_11-May-2012.tar"),
        "VOC2012",
    ),
}
DEFAULT_SETS: tuple[str, ...] = ("2007-trainval", "2007-test", "2012-trainval")


# --------------------------------------------------------------------------- errors


class DownloadError(RuntimeError):
    """An expected failure (network, checksum, bad archive); ``main`` prints it without a traceback."""


class ChecksumError(DownloadError):
    """A file's MD5 differs from the published one."""


class UnsafeArchiveError(DownloadError):
    """A tar member would be written outside the target directory (or is a device/link)."""


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(msg, flush=True)


def archive_urls(archive: Archive, mirror: str | None = None) -> list[str]:
    """URLs to try for ``archive``: the official ones, or ``MIRROR/<filename>`` if a mirror is given."""
    if mirror:
        return [f"{mirror.rstrip('/')}/{archive.filename}"]
    return list(archive.urls)


def marker_path(root: str | os.PathLike, archive: Archive) -> Path:
    """The marker file written after ``archive`` was fully extracted under ``root``."""
    return Path(root) / "VOCdevkit" / archive.year_dir / f"{MARKER_PREFIX}{archive.filename}"


def is_complete(root: str | os.PathLike, archive: Archive) -> bool:
    """True if ``archive`` was fully extracted under ``root`` by an earlier run."""
    return marker_path(root, archive).is_file()


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _corrupt_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".corrupt")


def _reason(exc: BaseException) -> str:
    """A short human reason for a network exception."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- checksum


def md5sum(path: str | os.PathLike, *, progress: bool = False, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex MD5 of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.md5()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"md5 {path.name}", disable=not progress, leave=False,
    ) as bar:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_md5(
    path: str | os.PathLike,
    expected: str,
    *,
    move_bad_to: str | os.PathLike | None = None,
    progress: bool = False,
) -> str:
    """Check ``path``'s MD5 against ``expected``; return it, or raise ``ChecksumError``.

    On a mismatch the file is moved to ``move_bad_to`` (if given) so that a rerun starts afresh.
    """
    path = Path(path)
    actual = md5sum(path, progress=progress)
    if actual == expected.lower():
        return actual
    where = ""
    if move_bad_to is not None:
        os.replace(path, move_bad_to)
        where = f" The bad file was moved to {move_bad_to}; delete it when done."
    raise ChecksumError(
        f"MD5 mismatch for {path.name}: expected {expected}, got {actual}.{where}"
        " Rerun to download it again, or place a good copy by hand."
    )


# --------------------------------------------------------------------------- download


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``'bytes 10-99/100'`` -> (10, 100); ``'bytes */100'`` -> (None, 100); unknown parts -> None."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    rng, _, total = spec.partition("/")
    start = rng.split("-", 1)[0].strip()
    return (
        int(start) if start.isdigit() else None,
        int(total) if total.strip().isdigit() else None,
    )


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open ``url``, asking for bytes from ``offset`` on when ``offset > 0``."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _stream(
    resp: BinaryIO, part: Path, *, offset: int, total: int | None, url: str,
    chunk_size: int, progress: bool,
) -> None:
    """Append ``resp``'s body to ``part`` (truncating it first when ``offset == 0``)."""
    written = offset
    mode = "ab" if offset else "wb"
    try:
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f"download of {url} broke off after {written} bytes ({_reason(e)}); "
            f"rerun to resume from {part}"
        ) from None
    if total is not None and written != total:
        raise DownloadError(
            f"download of {url} ended after {written} of {total} bytes; rerun to resume from {part}"
        )


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    *,
    timeout: float = 30.0,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` file.

    A server that answers a Range request with the whole file (200) makes the download restart;
    a stale ``.part`` that the server cannot continue (416 / wrong offset) is discarded.
    With ``md5`` the result is verified before it is renamed to ``dest`` (a bad file goes to
    ``dest.corrupt``). Raises ``DownloadError`` (or ``ChecksumError``) on failure.
    """
    dest = Path(dest)
    part = _part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):  # a second try only after throwing away an unusable .part
        offset = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset > 0:
                _, total = _parse_content_range(e.headers.get("Content-Range"))
                if total == offset:
                    break  # the .part file is already complete
                _log(f"{part.name}: server cannot resume from byte {offset}; starting over")
                part.unlink()
                continue
            raise DownloadError(f"HTTP error {e.code} ({e.reason}) for {url}") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise DownloadError(f"could not reach {url}: {_reason(e)}") from None
        with resp:
            status = resp.getcode() or 200  # file:// URLs have no status
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if offset and status == 206 and start != offset:
                _log(f"{part.name}: server resumed at byte {start}, not {offset}; starting over")
                part.unlink()
                continue
            if offset and status != 206:
                _log(f"{part.name}: server ignored the Range request; starting over")
                offset = 0
            if status != 206:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            elif offset:
                _log(f"{part.name}: resuming at byte {offset}")
            _stream(resp, part, offset=offset, total=total, url=url,
                    chunk_size=chunk_size, progress=progress)
        break
    else:  # pragma: no cover - both attempts discarded the partial file
        raise DownloadError(f"could not download {url}: the server kept refusing the request")
    if md5 is not None:
        verify_md5(part, md5, move_bad_to=_corrupt_path(dest), progress=progress)
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- extraction


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse absolute paths, ``..`` components, devices, and links that leave the tree."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"refusing tar member with an absolute path: {member.name!r}")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"refusing tar member that leaves the target directory: {member.name!r}")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchiveError(f"refusing special file (device/fifo) in tar: {member.name!r}")
    if member.issym() or member.islnk():
        if not _HAS_DATA_FILTER:
            raise UnsafeArchiveError(f"refusing link in tar (this Python has no tarfile filter): {member.name!r}")
        target = member.linkname.replace("\\", "/")
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"refusing link that points outside the target directory: {member.name!r} -> {member.linkname!r}"
            )


def _checked_members(tar: tarfile.TarFile, bar: tqdm) -> Iterator[tarfile.TarInfo]:
    """Stream the members of ``tar``, checking each before it is extracted."""
    for member in tar:
        _check_member(member)
        bar.update(1)
        yield member


def safe_extract(tar_path: str | os.PathLike, dest: str | os.PathLike, *, progress: bool = False) -> None:
    """Extract ``tar_path`` into ``dest`` without writing anything outside ``dest``.

    Every member is checked before extraction (``UnsafeArchiveError`` names the offending one)
    and, where available, tarfile's ``filter="data"`` is applied as a second guard.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kwargs = {"filter": "data"} if _HAS_DATA_FILTER else {}
    try:
        with tarfile.open(tar_path, mode="r:*") as tar, tqdm(
            unit=" files", desc=f"extract {tar_path.name}", disable=not progress
        ) as bar:
            tar.extractall(dest, members=_checked_members(tar, bar), **kwargs)
    except getattr(tarfile, "FilterError", ()) as e:
        raise UnsafeArchiveError(f"refusing unsafe member in {tar_path.name}: {e}") from None
    except tarfile.TarError as e:
        raise DownloadError(f"cannot read {tar_path}: {e}") from None


def _merge_tree(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; if ``dst`` exists, merge into it (files replace, ``ImageSets`` last)."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)  # atomic: the whole folder appears at once
        return
    for entry in sorted(src.iterdir(), key=lambda p: (p.name == "ImageSets", p.name)):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_tree(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def _write_marker(root: Path, archive: Archive) -> None:
    """Write the completion marker atomically (temporary file, then rename)."""
    marker = marker_path(root, archive)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(f"{archive.md5}  {archive.filename}\n")
    os.replace(tmp, marker)


def extract_archive(
    archive: Archive, tar_path: str | os.PathLike, root: str | os.PathLike, *, progress: bool = True
) -> Path:
    """Extract ``tar_path`` into ``root/VOCdevkit/<year_dir>`` via a temporary sibling directory.

    The marker file is written only after everything is in place. Returns the VOC year folder.
    """
    root, tar_path = Path(root), Path(tar_path)
    tmp = root / f".p2s_extract_{archive.filename}"
    dst = root / "VOCdevkit" / archive.year_dir
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run
    try:
        safe_extract(tar_path, tmp, progress=progress)
        src = tmp / "VOCdevkit" / archive.year_dir
        if not src.is_dir():
            raise DownloadError(
                f"{tar_path.name} does not contain VOCdevkit/{archive.year_dir}; is it the right archive?"
            )
        if dst.is_dir() and not any(dst.glob(f"{MARKER_PREFIX}*")) and any(dst.iterdir()):
            _log(f"note: merging into existing {dst}, which this script did not create")
        _merge_tree(src, dst)
        _write_marker(root, archive)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


# --------------------------------------------------------------------------- whole pipeline


def _offline_help(archive: Archive, root: Path, failures: list[str]) -> str:
    lines = [f"could not download {archive.filename}:"]
    lines += [f"  {f}" for f in failures]
    part = _part_path(root / archive.filename)
    if part.exists():
        lines.append(f"A partial download is kept in {part}; a rerun resumes it.")
    lines += [
        "What you can do:",
        f"  * use a mirror that serves the same file names: --mirror BASE_URL (fetches BASE_URL/{archive.filename})",
        f"  * or get the archive some other way and place it at {root / archive.filename};"
        f" rerunning verifies its MD5 ({archive.md5}) and extracts it",
        f"  * or work offline with a synthetic dataset: python data_scripts/make_synthetic_voc.py --root {root}",
    ]
    return "\n".join(lines)


def _fetch(
    archive: Archive, dest: Path, mirror: str | None, *, timeout: float, progress: bool
) -> None:
    """Download ``archive`` to ``dest`` from the first URL that works."""
    failures = []
    for url in archive_urls(archive, mirror):
        _log(f"downloading {url}")
        try:
            download_file(url, dest, archive.md5, timeout=timeout, progress=progress)
            return
        except ChecksumError:
            raise
        except DownloadError as e:
            failures.append(str(e))
    raise DownloadError(_offline_help(archive, dest.parent, failures))


def _resolve_sets(sets: Sequence[str], table: Mapping[str, Archive]) -> list[Archive]:
    """Map set names to archives (in order, without duplicates); unknown names raise."""
    if isinstance(sets, str):
        sets = [sets]
    unknown = [s for s in sets if s not in table]
    if unknown:
        raise DownloadError(f"unknown VOC set(s) {unknown}; choose from {sorted(table)}")
    return [table[s] for s in dict.fromkeys(sets)]


def prepare_voc(
    root: str | os.PathLike,
    sets: Sequence[str] = DEFAULT_SETS,
    mirror: str | None = None,
    *,
    archives: Mapping[str, Archive] | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    delete_archives: bool = False,
) -> Path:
    """Make ``root/VOCdevkit/VOC20xx`` for each of ``sets``; return ``root/VOCdevkit``.

    Completed archives are skipped; an archive already at ``root/<filename>`` is verified and
    used instead of downloading. ``archives`` replaces the built-in table (used by the tests).
    """
    root = Path(root)
    table = ARCHIVES if archives is None else archives
    todo = _resolve_sets(sets, table)
    root.mkdir(parents=True, exist_ok=True)
    for archive in todo:
        if is_complete(root, archive):
            _log(f"{archive.key}: already extracted ({marker_path(root, archive)}), skipping")
            continue
        tar_path = root / archive.filename
        if tar_path.exists():
            _log(f"{archive.key}: found {tar_path}, checking MD5")
            verify_md5(tar_path, archive.md5, move_bad_to=_corrupt_path(tar_path), progress=progress)
        else:
            _fetch(archive, tar_path, mirror, timeout=timeout, progress=progress)
        _log(f"{archive.key}: extracting {tar_path.name}")
        voc_dir = extract_archive(archive, tar_path, root, progress=progress)
        if delete_archives:
            tar_path.unlink()
        _log(f"{archive.key}: done -> {voc_dir}")
    return root / "VOCdevkit"


# --------------------------------------------------------------------------- CLI


def _parser(table: Mapping[str, Archive]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Download, verify (MD5) and safely extract PASCAL VOC into ROOT/VOCdevkit.",
    )
    p.add_argument("--root", required=True, type=Path, help="folder that will hold VOCdevkit/ (and the .tar files)")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), choices=sorted(table),
                   metavar="SET", help=f"archives to fetch (default: {' '.join(DEFAULT_SETS)})")
    p.add_argument("--mirror", default=None, metavar="BASE_URL",
                   help="fetch BASE_URL/<archive name> instead of the official hosts")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--delete-archives", action="store_true", help="delete each .tar after extracting it")
    return p


def main(argv: Sequence[str] | None = None, *, archives: Mapping[str, Archive] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 1 expected failure, 130 interrupted)."""
    table = ARCHIVES if archives is None else archives
    args = _parser(table).parse_args(argv)
    try:
        voc = prepare_voc(args.root, args.sets, args.mirror, archives=table, timeout=args.timeout,
                          progress=not args.no_progress, delete_archives=args.delete_archives)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"VOC is ready in {voc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
