"""The model file: a checked header plus a ``torch.save`` payload read with ``weights_only``.

Layout: the magic line ``FLOWKIT-MODEL``, one JSON line (format version, payload size and
SHA-256, package versions), then the payload. A file that is not flowkit's, truncated,
tampered with or from a newer format is refused with :class:`ModelFileError`; a payload
holding anything but tensors and plain containers is refused by ``weights_only=True``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

from flowkit.errors import ModelFileError

__all__ = [
    "FORMAT_VERSION",
    "write",
    "read",
    "package_versions",
    "atomic_write_bytes",
    "writable_target",
    "state_digest",
]

MAGIC = b"FLOWKIT-MODEL\n"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions recorded with models and bench results."""
    from importlib import metadata

    import torch

    from flowkit import __version__

    out = {"flowkit": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for dist in ("nflows", "torchvision", "scikit-learn", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers that were killed mid-write (their pid,
    in the name, no longer runs); a live writer's temporary is left alone."""
    stem = _tmp_stem(path)
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*.tmp"):
        pid = tmp.name[len(stem) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _tmp_stem(path: Path) -> str:
    """The part of ``path``'s name its temporaries carry: short enough that a temporary's
    name fits the file system's 255 bytes whatever the file's own name."""
    name = path.name
    while len(name.encode()) > 120:
        name = name[:-1]
    return name


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no write in flight on the same path
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writable_target(path: str | Path) -> Path:
    """Where a write of ``path`` lands: the path itself, or, for a symbolic link, the file it
    points to (the link stays a link). :class:`ConfigError` for anything that exists and is
    a device (``/dev/full``), a FIFO or a socket: the rename that makes a write atomic would
    replace it with a plain file (a directory it cannot replace). A name too long for
    the file system is refused the same way, in one line."""
    import errno
    import stat

    from flowkit.errors import ConfigError

    path = Path(path)
    target = path
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            target = path.resolve()
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ConfigError(
                f"{path}: the file name is too long for the file system "
                f"({len(target.name.encode())} bytes; most allow 255)"
            ) from None
        return target  # a folder on the way that is a file, ...: the write says it
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a directory: the rename refuses
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file"
        )  # fmt: skip
        via = f" (the symbolic link points to {target})" if target != path else ""
        raise ConfigError(
            f"{path} is {kind}{via}, not a regular file: give a new path or a file to replace"
        )
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The file gets the permissions of a normally created file (0666 less the umask). A
    temporary left by a killed earlier write of the same path is removed. A symbolic link is
    written through (its target is replaced, the link kept); a path that exists and is not a
    regular file is refused (:func:`writable_target`).
    """
    path = writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{_tmp_stem(path)}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as exc:  # a folder that takes no new file (/proc, read-only, full)
        from flowkit.errors import ConfigError

        raise ConfigError(f"cannot write {path}: {exc.strerror} in {path.parent}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write(path: str | Path, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    import torch

    torch.save(payload, buf)
    body = buf.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "versions": package_versions(),
    }
    return atomic_write_bytes(path, MAGIC + json.dumps(header).encode() + b"\n" + body)


def _check_header(path: Path, header: Any) -> tuple[int, int, str]:
    """``(format, size, sha256)`` of a header whose every field has its type and range (the
    header is outside the checksum: an edit by hand must fail here, in one line)."""

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: the model file's header is corrupt ({what})")

    if not isinstance(header, dict):
        raise bad("not a JSON object")
    fmt, size, digest = header.get("format"), header.get("size"), header.get("sha256")
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise bad(f"format must be a positive integer, got {fmt!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad(f"size must be a non-negative integer, got {size!r}")
    if not (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    ):
        raise bad("sha256 must be 64 hexadecimal digits")
    versions = header.get("versions", {})
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
    ):
        raise bad("versions must map package names to version strings")
    return fmt, size, digest


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"no such model file: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None
    if not raw.startswith(MAGIC):
        raise ModelFileError(
            f"{path} is not a flowkit model file (written by Detector.save or flowkit train)"
        )
    end = raw.find(b"\n", len(MAGIC))
    try:
        header = json.loads(raw[len(MAGIC) : end]) if end > 0 else None
    except ValueError:
        header = None
    fmt, size, digest = _check_header(path, header)
    if fmt > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer flowkit (model format {fmt}, this "
            f"version reads up to {FORMAT_VERSION}); upgrade flowkit"
        )
    body = raw[end + 1 :]
    if len(body) != size:
        raise ModelFileError(f"{path} is truncated or padded ({len(body)} of {size} bytes)")
    if hashlib.sha256(body).hexdigest() != digest:
        raise ModelFileError(
            f"{path} was modified after it was saved (checksum mismatch); refusing to load it"
        )
    try:
        import torch

        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: never execute foreign pickles
        raise ModelFileError(
            f"{path}: refused to load the payload safely "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict):
        raise ModelFileError(f"{path}: unexpected payload of type {type(payload).__name__}")
    saved = header.get("versions") or {}
    now = package_versions()
    drift = [
        f"{k} {saved[k]} → {now[k]}"
        for k in ("flowkit", "torch", "nflows")
        if k in saved and k in now and _major_minor(saved[k]) != _major_minor(now[k])
    ]
    if drift:
        warnings.warn(
            f"{path} was saved with other package versions ({', '.join(drift)}); "
            "scores may differ slightly",
            UserWarning,
            stacklevel=3,
        )
    payload["_versions"] = saved
    return payload


def state_digest(state: dict[str, Any]) -> str:
    """A digest of a state dict (tensors, numbers, text, nested dicts): the same state gives
    the same digest in every process, after any save and load. It identifies a stage's
    fitted state (a stage's ``identity``) and a bench record's scorer state."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(str(key).encode())
        if isinstance(value, torch.Tensor):  # its bytes, whatever the dtype (bf16 too)
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(state_digest(value).encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]
