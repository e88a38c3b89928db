"""medret: how much retrieval quality a quantized medical retriever loses, and what it gains."""

import importlib.machinery
import logging
import sys
from contextlib import contextmanager

__version__ = "0.1.0"

# faiss's loader logs each legacy per-CPU module it fails to find before it loads its one dynamic-dispatch
# build (the SIMD level it runs goes to results.json, device.faiss_simd): nothing is wrong.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

# bitsandbytes' CPU backend asks the Hub, at import, for a `kernels-community` kernel (remote code medret never
# runs); offline, that lookup warns through whichever logger the installed `kernels` and bitsandbytes use that
# day. Drop those records while that one module runs, whatever logger carries them; all else passes.
_NOISY_MODULE = "bitsandbytes.backends.cpu.ops"
_NOISE = "kernels-community"


@contextmanager
def _dropping(text: str):
    handle = logging.Logger.handle

    def quiet(self, record):
        if text not in record.getMessage():
            handle(self, record)

    logging.Logger.handle = quiet
    try:
        yield
    finally:
        logging.Logger.handle = handle


class _QuietImport:
    """Meta-path finder: imports _NOISY_MODULE (by whoever imports it: medret, peft, transformers) quietly."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != _NOISY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                with _dropping(_NOISE):
                    run(module)

            spec.loader.exec_module = exec_module
        return spec


if _NOISY_MODULE not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport())
