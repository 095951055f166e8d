"""Directory artifacts: walking a source tree safely, and the manifest that describes it.

A directory is stored as its files' objects plus one manifest, written last::

    {"format": "dflow-async/manifest/1",
     "files": {"a/b.dat": {"digest": "sha256:<hex>", "size": 12, "mode": 420}, ...},
     "dirs":  ["a", "a/empty"],              # every directory, so empty ones survive
     "links": {"latest": "a/b.dat"}}         # relative symlinks that stay inside the tree

``mode`` is 0o644 or 0o755: only the execute bit is kept, as in git, so that a tree whose files
became read-only when they were committed still hashes the same when it is committed again.
The manifest bytes are canonical (sorted keys, no spaces, UTF-8), so the same tree always has the
same digest whatever its name or where it was walked from.

Everything read back from a manifest is validated before it touches the local filesystem: paths
are relative, have no ``.``/``..``/empty parts, and link targets resolve inside the tree.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "MANIFEST_FORMAT",
    "FileEntry",
    "Manifest",
    "ManifestFile",
    "Tree",
    "TreeError",
    "manifest_bytes",
    "parse_manifest",
    "safe_relpath",
    "scan_tree",
]

MANIFEST_FORMAT = "dflow-async/manifest/1"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # with fullmatch: "$" would let a "\n" end it


class TreeError(ValueError):
    """A source tree or a manifest is unsafe or malformed; the store adds artifact context."""


class FileEntry(NamedTuple):
    rel: str  # posix path relative to the tree root
    path: str  # where it is on disk now; stat'ed by the store when it commits the file


@dataclass(slots=True)
class Tree:
    files: list[FileEntry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)


class ManifestFile(NamedTuple):  # a tuple: a thousand of them are built per directory
    hexdigest: str
    size: int
    mode: int


@dataclass(frozen=True, slots=True)
class Manifest:
    files: dict[str, ManifestFile]
    dirs: list[str]
    links: dict[str, str]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())


def safe_relpath(rel: object) -> str:
    """``rel`` if it is a clean relative posix path inside the tree, else TreeError."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise TreeError(f"bad path {rel!r} in the artifact tree")
    # An absolute path, or an empty, "." or ".." part, without splitting: with a slash added
    # at both ends, every part is enclosed in slashes ("/a/b/"), so "//", "/./" or "/../"
    # appear exactly when such a part does.
    enclosed = f"/{rel}/"
    if "//" in enclosed or "/./" in enclosed or "/../" in enclosed:
        raise TreeError(f"path {rel!r} is not a plain relative path inside the artifact")
    return rel


def _link_target_inside(rel: str, target: str) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    return resolved != ".." and not resolved.startswith("../") and resolved != "."


# -- walking a source directory -------------------------------------------------------------


def scan_tree(root: Path, skip: frozenset[str] = frozenset()) -> Tree:
    """Every file, directory and symlink under ``root``, without following symlinks, but for
    the top-level names in ``skip``.

    Files are not stat'ed here (the directory entry says what kind they are): the store stats
    each one just before it hashes it, by which time other threads are already hashing (see
    ``triage_map``), rather than all of them before any hashing starts.

    Symlinks are kept as links when they resolve inside ``root`` and refused otherwise: storing
    the target's bytes would leak whatever the link points at (``/etc/passwd``, a secret in
    ``$HOME``) into a store other people read.
    """
    real_root = os.path.realpath(root)
    tree = Tree()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(real_root, rel_dir) if rel_dir else real_root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel_dir and entry.name in skip:
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            safe_relpath(rel)  # names with a backslash or NUL are refused, not mangled
            if entry.is_symlink():
                tree.links[rel] = _inside_link(real_root, rel, entry.path)
            elif entry.is_dir(follow_symlinks=False):
                tree.dirs.append(rel)
                stack.append(rel)
            elif entry.is_file(follow_symlinks=False):
                tree.files.append(FileEntry(rel, entry.path))
            else:
                kind = _kind(entry.stat(follow_symlinks=False).st_mode)
                raise TreeError(f"{rel!r} is a {kind}, not a regular file or directory")
    tree.files.sort(key=lambda f: f.rel)
    tree.dirs.sort()
    return tree


def _inside_link(real_root: str, rel: str, path: str) -> str:
    """The link's target rewritten relative to its own directory, if it stays in the tree."""
    resolved = os.path.realpath(path)
    if os.path.commonpath([real_root, resolved]) != real_root or resolved == real_root:
        raise TreeError(
            f"symlink {rel!r} points outside the artifact directory "
            f"(to {os.readlink(path)!r}); copy the file in, or point the link inside"
        )
    target = os.path.relpath(resolved, os.path.join(real_root, posixpath.dirname(rel)))
    return target.replace(os.sep, "/")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device file"


# -- the manifest ---------------------------------------------------------------------------


def manifest_bytes(
    files: Mapping[str, ManifestFile], dirs: list[str], links: dict[str, str]
) -> bytes:
    """The canonical bytes: what ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` gives, written by hand (a dict per file, then sorting each, costs
    three times as much; a test holds the two to the same bytes). Keys in sorted order."""
    quote = json.encoder.encode_basestring  # a JSON string literal, as ensure_ascii=False does
    entries = ",".join(
        f'{quote(rel)}:{{"digest":"sha256:{f.hexdigest}","mode":{f.mode},"size":{f.size}}}'
        for rel, f in sorted(files.items())
    )
    return (
        f'{{"dirs":{_canonical(sorted(dirs))},"files":{{{entries}}},'
        f'"format":{_canonical(MANIFEST_FORMAT)},"links":{_canonical(links)}}}'
    ).encode()


def _canonical(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_manifest(data: bytes) -> Manifest:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TreeError(f"the manifest is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise TreeError(f"the manifest is not a {MANIFEST_FORMAT!r} document")
    files_doc, dirs_doc, links_doc = doc.get("files"), doc.get("dirs"), doc.get("links")
    if not (
        isinstance(files_doc, dict) and isinstance(dirs_doc, list) and isinstance(links_doc, dict)
    ):
        raise TreeError("the manifest lacks its files/dirs/links sections")
    files = {safe_relpath(rel): _manifest_file(rel, spec) for rel, spec in files_doc.items()}
    dirs = [safe_relpath(d) for d in dirs_doc]
    links: dict[str, str] = {}
    for rel, target in links_doc.items():
        if not isinstance(target, str) or not _link_target_inside(safe_relpath(rel), target):
            raise TreeError(f"symlink {rel!r} in the manifest points outside the artifact")
        links[rel] = target
    return Manifest(files=files, dirs=dirs, links=links)


def _manifest_file(rel: str, spec: Any) -> ManifestFile:
    if not isinstance(spec, dict):
        raise TreeError(f"manifest entry {rel!r} is not an object")
    digest, size, mode = spec.get("digest"), spec.get("size"), spec.get("mode")
    if (
        type(digest) is str
        and DIGEST.fullmatch(digest) is not None
        and type(size) is int
        and size >= 0
        and type(mode) is int
        and 0 <= mode <= 0o777
    ):
        return ManifestFile(digest[7:], size, mode)
    raise TreeError(f"manifest entry {rel!r} has a bad digest, size or mode: {spec!r}")
