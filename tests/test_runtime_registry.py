"""Runtime backends are a registry: a new runtime is one module (here: this file) plus one YAML, and an
unknown runtime name is one error line, never another runtime's path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.runtime import BuildJob, build_runtime, register, validate
from medret.runtime import backend as registry
from tests.test_evaluate import compose_cfg, tiny_overrides


class CountingEncoder:
    """The torch encoder, counting the texts that reach it: proof that evaluate ran through the backend."""

    def __init__(self, inner: Any):
        self.inner, self.texts = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def with_settings(self, settings: Any) -> CountingEncoder:
        inner = copy.copy(self.inner)
        inner.settings = settings
        return CountingEncoder(inner)

    def encode(self, texts: list[str], batch_size: int, desc: str = "encode"):
        self.texts += len(texts)
        return self.inner.encode(texts, batch_size, desc=desc)


class ToyBackend:
    name = "toy"
    modes = ("none",)
    precisions = ("f32",)
    calibrated: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    hint = ""

    def __init__(self) -> None:
        self.built: list[CountingEncoder] = []

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        return []

    def check(self, cfg: RuntimeConfig) -> None:
        if cfg.threads is not None:
            raise InputError("runtime.threads: runtime=toy runs on torch's threads")

    def build(self, encoder: Any, cfg: RuntimeConfig, job: BuildJob) -> tuple[Any, dict[str, Any]]:
        wrapped = CountingEncoder(encoder)
        self.built.append(wrapped)
        return wrapped, {"name": self.name, "quantize": cfg.quantize, "quantization": "none", "wraps": "torch"}


@pytest.fixture
def toy():
    registry.names()  # the shipped backends first, so removing the toy leaves the registry as it was
    backend = register(ToyBackend())
    yield backend
    registry._BACKENDS.pop("toy")


def test_a_backend_registered_from_a_test_runs_through_evaluate(toy, tiny_bert, tmp_path):
    common = ("logger=none", f"cache.dir={tmp_path / 'cache'}")
    res = run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, *common, "runtime.name=toy")), tmp_path / "toy")
    assert res["runtime"] == {"name": "toy", "quantize": "none", "quantization": "none", "wraps": "torch"}
    assert toy.built and sum(e.texts for e in toy.built) > 0
    # judged against the fp32 torch baseline like any runtime; the same weights give the same ranking
    torch_run = run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, *common)), tmp_path / "torch")
    assert res["metrics"] == torch_run["metrics"]
    assert res["fidelity"]["embedding_cosine"]["min"] > 0.9999
    with pytest.raises(InputError, match="runtime=toy runs on torch's threads"):
        validate(RuntimeConfig(name="toy", threads=2))


@pytest.mark.parametrize("name", ["tensorrt", "openvino2", ""])
def test_an_unknown_runtime_is_one_error_line_not_openvino(name, tmp_path):
    with pytest.raises(InputError) as err:
        validate(RuntimeConfig(name=name))
    msg = str(err.value)
    assert msg.startswith(f"runtime.name={name!r}: expected one of") and "\n" not in msg
    assert "openvino" in msg and "torch" in msg  # it names the known ones
    with pytest.raises(InputError, match="runtime.name="):
        build_runtime(object(), RuntimeConfig(name=name), tmp_path, "w")
    assert not (tmp_path / "runtime").exists()  # nothing was exported or converted


def test_unknown_runtime_fails_evaluate_before_any_model_loads(tmp_path):
    cfg = compose_cfg("runtime.name=tensorrt", "model.path=/nonexistent/model", "logger=none")
    with pytest.raises(InputError, match=r"runtime.name='tensorrt': expected one of"):
        run_evaluate(cfg, tmp_path)


def test_opset_range_is_what_the_exporter_writes():
    for opset in (17, 24):
        with pytest.raises(InputError, match=rf"runtime.opset={opset}: expected an ONNX opset in 18..23"):
            validate(RuntimeConfig(name="onnx", opset=opset))
    validate(RuntimeConfig(name="torch", opset=3))  # torch exports nothing: the opset does not apply
