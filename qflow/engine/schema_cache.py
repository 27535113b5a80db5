"""cwltool's loaded CWL schemas, kept between runs.

Loading a CWL schema (parsing the schema and metaschema YAML with ruamel.yaml, then building
the Avro names) is more than half of cwltool's start-up, and every run does it twice: for
its document's version and for v1.0, which every ``Process`` reads. The loaded objects are
the same for every run with the same cwltool, schema-salad, ruamel.yaml, Python and
extension schema, so qflow pickles them once under the user's cache directory and reads them
back (~0.1 s instead of ~2 s on these machines). The file name is a digest of all of these;
a file that cannot be read back is loaded again and rewritten. Only files the user owns and
nobody else may write are read: unpickling runs code.
"""

from __future__ import annotations

import copyreg
import hashlib
import logging
import os
import pickle
import sys
import tempfile
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from cwltool.process import SCHEMA_CACHE, custom_schemas, get_schema
from schema_salad.ref_resolver import NormDict

log = logging.getLogger(__name__)

CACHED_VERSIONS = ("v1.0", "v1.2")
"""v1.0 is read by every run (cwltool's ``Process``), v1.2 is the current CWL."""


def _normdict(normalize: Any, items: dict[str, Any]) -> NormDict:
    restored = NormDict(normalize)
    dict.update(restored, items)  # keys are normalised already
    return restored


# NormDict sets its ``normalize`` in __init__, which pickle's default skips
copyreg.pickle(NormDict, lambda d: (_normdict, (d.normalize, dict(d))))


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qflow/cwl-schemas`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qflow" / "cwl-schemas"


def _path(version: str) -> Path:
    key = hashlib.sha256()
    for part in (
        sys.version,
        *(dist_version(d) for d in ("cwltool", "schema-salad", "ruamel.yaml")),
        version,
        repr(custom_schemas.get(version)),
    ):
        key.update(part.encode() + b"\0")
    return cache_dir() / f"{version}-{key.hexdigest()[:24]}.pickle"


def _trusted(path: Path) -> bool:
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def _read(path: Path) -> Any | None:
    try:
        if not _trusted(path):
            log.warning("%s: ignored (not yours, or others may write it)", path)
            return None
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a bad cache file only costs a load
        log.debug("%s: cannot be read back (%s); loading the schema", path, exc)
        return None


def _write(path: Path, schema: Any) -> None:
    try:
        data = pickle.dumps(schema, protocol=pickle.HIGHEST_PROTOCOL)  # before any file exists
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
            out.write(data)
        os.replace(out.name, path)  # readers see a whole file or none
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
        log.debug("%s: not written (%s)", path, exc)


def load_schemas() -> list[str]:
    """Fill cwltool's schema cache for :data:`CACHED_VERSIONS`, from disk where a run left
    them, else by loading them (and keeping them for the next run). Call it after the custom
    schemas are set. Returns the versions read from disk."""
    from_disk = []
    for version in CACHED_VERSIONS:
        path = _path(version)
        schema = _read(path)
        if schema is not None:
            SCHEMA_CACHE[version] = schema
            from_disk.append(version)
        else:
            _write(path, get_schema(version))
    return from_disk
