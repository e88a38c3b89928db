"""medret: how much retrieval quality a quantized medical retriever loses, and what it gains."""

import logging

__version__ = "0.1.0"

# Start-up lines that report nothing wrong: faiss's loader logs each legacy per-CPU module it fails to find
# before it loads its one dynamic-dispatch build (the SIMD level it runs goes to results.json,
# device.faiss_simd), and bitsandbytes warns that the optional hub package `kernels` is missing although its
# built-in CPU kernel runs instead.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in str(record.msg))
