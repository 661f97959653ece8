"""pylstm's checkpoint files: a versioned ``.npz`` holding the parameters, a JSON metadata record
(format, version, model class, config, JSON extras) and extra arrays; written atomically and read
without pickle. The models (``pylstm.models``) and the trainer build on these functions.

Writing goes to a temporary file in the same directory, fsynced, renamed over the target and the
directory fsynced: the path holds either the previous file or the complete new one. Reading
checks the format and version; what the metadata describes (config, trainer state) is checked
by its users before anything is loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

__all__ = ["CheckpointError", "write_checkpoint", "read_checkpoint", "checkpoint_extra", "read_checkpoint_extra"]

CHECKPOINT_FORMAT = "pylstm-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, truncated, foreign, or for another architecture."""


def write_checkpoint(path: str, model: str, config: dict, arrays: dict, extra: Optional[dict] = None) -> None:
    """Write ``arrays`` (name -> array) with the metadata of ``model`` / ``config`` atomically.
    ``extra`` maps names to arrays (stored as ``extra_<name>``) or JSON-able values."""
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model, "config": config}
    arrays = dict(arrays)
    extra_json = {}
    for k, v in (extra or {}).items():
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise TypeError(f"extra[{k!r}]: object arrays cannot be stored (checkpoints are "
                                "read without pickle); pass numeric arrays or JSON values")
            arrays[f"extra_{k}"] = v
        else:
            extra_json[k] = v
    meta["extra"] = extra_json
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a checkpoint is a normal file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)  # the rename itself survives a crash


def read_checkpoint(path: str):
    """(metadata, arrays) of a checkpoint file, its format and version checked; the metadata's
    config gets the cell of files written before models had one (all LSTM)."""
    with open(path, "rb") as f:  # FileNotFoundError passes through as it is
        head = f.read(4)
        if head != b"PK\x03\x04":  # every .npz is a zip archive
            raise CheckpointError(f"{path}: not a readable pylstm checkpoint (not an .npz archive: it starts "
                                  f"with {head!r})")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError, ...
            raise CheckpointError(f"{path}: not a readable pylstm checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as exc:
        raise CheckpointError(f"{path}: no pylstm metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a pylstm checkpoint (format {fmt!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')}, this pylstm reads "
                              f"version {CHECKPOINT_VERSION}")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("config"), dict) \
            or not isinstance(meta.get("extra", {}), dict):
        raise CheckpointError(f"{path}: malformed pylstm metadata (model {meta.get('model')!r}, "
                              f"config {type(meta.get('config')).__name__})")
    meta["config"].setdefault("cell", "lstm")  # written before models had a cell: all LSTM
    return meta, arrays


def checkpoint_extra(meta: dict, arrays: dict) -> dict:
    """The ``extra`` of a read checkpoint: its JSON values and its extra arrays."""
    extra = dict(meta.get("extra", {}))
    extra.update({k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")})
    return extra


def read_checkpoint_extra(path: str) -> dict:
    """A checkpoint's ``extra`` (arrays and JSON values), without loading it into a model."""
    return checkpoint_extra(*read_checkpoint(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
