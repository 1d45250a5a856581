from __future__ import annotations

import math
import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; it must be chosen before
# a kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from checkpoints import SHAPE_0_6B, TINY_SHAPES, make_checkpoint

GPU = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """On a GPU machine, every test but those marked `gpu` runs as on a CPU machine (their expectations are the
    CPU's: float32, the PyTorch references, exact comparisons), in this process and in the processes it starts;
    tests marked `gpu` run the kernels on the GPU, in 16-bit where the kernels need it."""
    if GPU and request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def build_checkpoint(tmp_path_factory):
    """checkpoint(name, shape, **options) -> (folder, transformers model); built once per session per name."""
    built = {}

    def build(name: str, shape: tuple[int, ...] = TINY_SHAPES["gqa2"], **options):
        if name not in built:
            folder = tmp_path_factory.mktemp(name)
            built[name] = folder, make_checkpoint(folder, shape, **options)
        return built[name]

    return build


@pytest.fixture(scope="session")
def tiny(build_checkpoint):
    """The default tiny checkpoint (GQA 2): (folder, transformers model)."""
    return build_checkpoint("gqa2", TINY_SHAPES["gqa2"])


@pytest.fixture(scope="session")
def embedder(tiny):
    from qwen3_embed import Embedder

    return Embedder.from_pretrained(tiny[0], device="cpu")


@pytest.fixture(params=[*TINY_SHAPES, "0.6B-layers"])
def any_shape(request, build_checkpoint):
    """Every tiny shape and the real 0.6B layer shapes: (folder, transformers model)."""
    if request.param == "0.6B-layers":
        return build_checkpoint("0.6B-layers", SHAPE_0_6B)
    return build_checkpoint(request.param, TINY_SHAPES[request.param])


@pytest.fixture
def poisoned(monkeypatch):
    """Every output a kernel wrapper allocates with torch.empty_like, and every floating one with torch.empty (the
    backward's weight-gradient parts, the log-sum-exp), starts as NaN, so an element left unwritten shows."""
    empty_like, empty = torch.empty_like, torch.empty

    def poisoned_empty(*args, **kwargs) -> torch.Tensor:
        t = empty(*args, **kwargs)
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty_like", lambda t, *a, **k: empty_like(t, *a, **k).fill_(math.nan))
    monkeypatch.setattr(torch, "empty", poisoned_empty)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
