"""The GPU benchmark behind ``bench/gpu_bench.py``, one module per job: the variant list and sizes
(``variants``), the environment probe (``environment``), the shared inputs (``inputs``), the encoder
builders (``builders``), encoder and ONNX Runtime timing (``encode``, ``ort``), index timing (``index``),
the per-variant subprocesses (``workers``) and the Markdown/JSON output (``output``)."""
