"""Importing the package must not import Triton or touch CUDA (attention-gym's rule), and every
typed error is importable from ``heta_fast``."""
import subprocess
import sys


def test_import_heta_fast_imports_no_triton_and_queries_no_cuda():
    code = (
        "import sys, torch\n"
        "calls = []\n"
        "torch.cuda.is_available = lambda: calls.append('is_available') or False\n"
        "torch.cuda.device_count = lambda: calls.append('device_count') or 0\n"
        "import heta_fast\n"
        "from heta_fast import Attributor, HETAConfig, Attribution\n"
        "from heta_fast import *\n"
        "import heta_fast.compat, heta_fast.reference, heta_fast.ops.flow, heta_fast.ops.vocab_kl\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
        "assert not calls, calls\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_typed_error_is_exported_from_the_package():
    import heta_fast
    from heta_fast import errors

    defined = {name: obj for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, errors.HetaError)}
    assert {"HetaError", "InputError", "ResultFormatError", "OutputError", "FileLockedError"} <= set(defined)
    # Every HetaError subclass errors.py defines (found by subclassing, not by a list kept here).
    assert {c for c in _subclasses(errors.HetaError) if c.__module__ == errors.__name__} == \
        set(defined.values()) - {errors.HetaError}
    missing = sorted(name for name, cls in defined.items()
                     if name not in heta_fast.__all__ or getattr(heta_fast, name, None) is not cls)
    assert missing == []
