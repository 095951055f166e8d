"""``ArtifactRef``: what the journal records about a committed artifact, checked on creation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dflow_async.exceptions import ArtifactError

__all__ = ["ArtifactRef", "check_name"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # with fullmatch: "$" would let a "\n" end it


def check_name(name: object) -> str:
    """A name to materialise under must be one plain path component."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ArtifactError(f"artifact name {name!r} is not a plain file name")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactRef:
    """A committed artifact: where it is, what its bytes hash to, and what to call it."""

    uri: str  # full URL of the object (file) or of the manifest (dir), inside the store
    digest: str  # "sha256:<hex>" of the file bytes, or of the canonical manifest bytes for a dir
    size: int  # total bytes of content
    kind: Literal["file", "dir"]
    name: str  # basename to materialise under
    producer: str | None = None  # step path that produced it, for error messages
    # a file with execute bits (a directory's manifest records each file's): content
    # addressing keeps one object for executable and plain files of the same bytes
    executable: bool = False

    def __post_init__(self) -> None:
        # Refs come back from journals and other processes: check them once, here, so that no
        # store key or destination path is ever built from an unchecked string.
        if not isinstance(self.digest, str) or not _DIGEST.fullmatch(self.digest):
            raise ArtifactError(f"artifact digest {self.digest!r} is not 'sha256:<64 hex>'")
        if self.kind not in ("file", "dir"):
            raise ArtifactError(f"artifact kind {self.kind!r} is neither 'file' nor 'dir'")
        if type(self.size) is not int or self.size < 0:
            raise ArtifactError(f"artifact size {self.size!r} is not a non-negative int")
        if not isinstance(self.uri, str):
            raise ArtifactError(f"artifact uri {self.uri!r} is not a string")
        if self.producer is not None and not isinstance(self.producer, str):
            raise ArtifactError(f"artifact producer {self.producer!r} is not a string")
        if type(self.executable) is not bool:
            raise ArtifactError(f"artifact executable {self.executable!r} is not a bool")
        check_name(self.name)

    @property
    def hexdigest(self) -> str:
        return self.digest[len("sha256:") :]

    def to_json(self) -> dict[str, Any]:
        doc = {
            "uri": self.uri,
            "digest": self.digest,
            "size": self.size,
            "kind": self.kind,
            "name": self.name,
            "producer": self.producer,
        }
        if self.executable:  # only when set: refs of plain files read as they always did
            doc["executable"] = True
        return doc

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArtifactRef:
        try:
            return cls(
                uri=d["uri"],
                digest=d["digest"],
                size=d["size"],
                kind=d["kind"],
                name=d["name"],
                producer=d.get("producer"),
                executable=d.get("executable", False),
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"not an artifact reference: {d!r} ({exc})") from None
