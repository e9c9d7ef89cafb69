"""Importing the package must not import Triton or touch CUDA (attention-gym's rule)."""
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
        "import heta_fast.compat, heta_fast.reference, heta_fast.ops.flow, heta_fast.ops.vocab_kl\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
        "assert not calls, calls\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
