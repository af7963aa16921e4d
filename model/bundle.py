"""Checkpoint bundle: the only contract between training and serving.

A bundle is one directory::

    manifest.json          format, version, architecture, per-file sha256 and shapes, provenance,
                           training config, evaluation metrics, inference defaults
    decom.safetensors      DecomNet weights
    restore.safetensors    RestorationNet weights
    adjust.safetensors     IlluminationAdjustNet weights

Loading verifies every hash and shape before any weight reaches a network and refuses a corrupt,
truncated or mismatched bundle with a :class:`BundleError` naming the file. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "kind-bundle"
FORMAT_VERSION = 1
ARCHITECTURE = "KinD (Zhang, Zhang, Guo, ACM MM 2019), authors' TensorFlow layout"
NETS = ("decom", "restore", "adjust")


class BundleError(ValueError):
    """A checkpoint bundle is missing, corrupt, truncated or does not fit the networks."""


@dataclass
class Bundle:
    """Weights of the three networks plus the manifest's free-form sections."""

    state_dicts: dict[str, dict[str, torch.Tensor]]
    inference: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = "unversioned"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_bundle(bundle: Bundle, directory: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``bundle`` to ``directory`` (created if needed); weights are stored as ``dtype``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for net in NETS:
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in bundle.state_dicts[net].items()}
        path = out / f"{net}.safetensors"
        save_file(state, str(path))
        path.chmod(0o644)  # safetensors writes 0600; a bundle is read by other users (e.g. a container's non-root user)
        files[net] = {
            "path": path.name,
            "sha256": _sha256(path),
            "dtype": str(dtype).removeprefix("torch."),
            "shapes": {k: list(v.shape) for k, v in state.items()},
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "version": bundle.version,
        "files": files,
        "inference": bundle.inference,
        "provenance": bundle.provenance,
        "training": bundle.training,
        "metrics": bundle.metrics,
    }
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return out


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``manifest.json`` (format and version) without touching the weights."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path}: no manifest.json; is {directory} a KinD checkpoint bundle?")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(NETS):
        raise BundleError(f"{path}: 'files' must list exactly {list(NETS)}")
    return manifest


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Load and verify a bundle; weights come back as float32 CPU tensors."""
    manifest = read_manifest(directory)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for net in NETS:
        entry = manifest["files"][net]
        path = Path(directory) / Path(str(entry.get("path", ""))).name
        if not path.is_file():
            raise BundleError(f"{path}: missing weights file for the {net} net")
        if _sha256(path) != entry.get("sha256"):
            raise BundleError(f"{path}: sha256 does not match the manifest (corrupt, truncated or replaced file)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable safetensors file ({exc})") from exc
        shapes = {k: list(v.shape) for k, v in state.items()}
        if shapes != entry.get("shapes"):
            raise BundleError(f"{path}: tensor names or shapes differ from the manifest")
        state_dicts[net] = {k: v.float() for k, v in state.items()}
    return Bundle(
        state_dicts=state_dicts,
        inference=manifest.get("inference", {}),
        provenance=manifest.get("provenance", {}),
        training=manifest.get("training", {}),
        metrics=manifest.get("metrics", {}),
        version=str(manifest.get("version", "unversioned")),
    )
