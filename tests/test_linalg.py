"""The CPU-independent products and the layers built on them: each product element is one
fused multiply-add chain in k order, so every kernel, every thread count and every layout gives
the same bits; the layers compute what torch's do, to float rounding."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fashion_mlp.layers import BatchNorm1d, Dropout, Linear
from fashion_mlp.linalg import column_sums, kernel_name, matmul

# (m, k, n): the d2l layers forward and backward, a full test chunk, and awkward edges.
SHAPES = [
    (256, 784, 256),
    (256, 256, 10),
    (10, 256, 128),
    (256, 10, 128),
    (1, 3, 1),
    (37, 1000, 53),
]


def digests_of_products(kernel: str) -> dict[int, str]:
    """Thread count -> SHA-256 of products of SHAPES (plain, transposed operands, with bias)
    and column sums, computed in a fresh process with FASHION_MLP_GEMM_KERNEL=kernel."""
    script = textwrap.dedent(
        f"""
        import hashlib, json, torch
        from fashion_mlp.linalg import column_sums, kernel_name, matmul
        assert kernel_name() == {kernel!r}, kernel_name()
        digests = {{}}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            generator = torch.Generator().manual_seed(0)
            digest = hashlib.sha256()
            for m, k, n in {SHAPES!r}:
                a = torch.randn(m, k, generator=generator)
                b = torch.randn(k, n, generator=generator)
                bias = torch.randn(n, generator=generator)
                transposed = a.t().contiguous().t(), b.t().contiguous().t()
                for product in (matmul(a, b), matmul(*transposed), matmul(a, b, bias),
                                column_sums(a)):
                    digest.update(product.numpy().tobytes())
            digests[threads] = digest.hexdigest()
        print(json.dumps(digests))
        """
    )
    env = {"FASHION_MLP_GEMM_KERNEL": kernel, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_every_kernel_and_thread_count_gives_the_same_bits():
    runnable = ["portable", "avx2", "avx512"]
    runnable = runnable[: runnable.index(kernel_name()) + 1]
    digests = {kernel: digests_of_products(kernel) for kernel in runnable}
    assert len({d for per_kernel in digests.values() for d in per_kernel.values()}) == 1, digests


def test_each_element_sums_in_k_order():
    """1e8 + 1 rounds back to 1e8 in float32, so the order of a sum shows in its result: over
    [1e8, 1, -1e8, 1] the chain in k order ends at 1, halves summed apart give 0, and two
    interleaved partial sums (what a vectorised BLAS does) give 2."""
    terms = torch.tensor([[1e8], [1.0], [-1e8], [1.0]])
    assert matmul(torch.ones(1, 4), terms).item() == 1.0
    assert matmul(torch.ones(7, 4), terms.expand(4, 40)).eq(1.0).all()
    assert column_sums(terms).item() == 1.0


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_products_match_double_precision_to_float_rounding(m, k, n):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    bias = torch.randn(n, generator=generator)
    exact = a.double() @ b.double() + bias.double()
    for left, right in ((a, b), (a.t().contiguous().t(), b.t().contiguous().t())):
        assert torch.allclose(matmul(left, right, bias).double(), exact, rtol=1e-5, atol=1e-4)


def test_an_empty_sum_is_the_bias_and_bad_operands_are_refused():
    bias = torch.arange(3.0)
    assert torch.equal(matmul(torch.empty(2, 0), torch.empty(0, 3), bias), bias.expand(2, 3))
    with pytest.raises(ValueError, match="do not chain"):
        matmul(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match="float32"):
        matmul(torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 2))


def copy_into(ours: nn.Module, theirs: nn.Module) -> nn.Module:
    ours.load_state_dict(theirs.state_dict())
    return ours


def test_linear_and_batch_norm_compute_what_torchs_do_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(64, 40) * 3 + 1
    for theirs, ours in (
        (nn.Linear(40, 24), Linear(40, 24)),
        (nn.BatchNorm1d(40), BatchNorm1d(40)),
    ):
        copy_into(ours, theirs)
        outputs, grads = [], []
        for layer in (theirs, ours):
            layer.train()
            xi = x.clone().requires_grad_()
            out = layer(xi)
            (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
            outputs.append(out)
            grads.append([xi.grad, *(p.grad for p in layer.parameters())])
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
        for expected, got in zip(*grads, strict=True):
            assert torch.allclose(expected, got, atol=1e-4)
        for name, buffer in theirs.state_dict().items():
            assert torch.allclose(buffer.double(), ours.state_dict()[name].double(), atol=1e-6)
        theirs.eval(), ours.eval()
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)


def test_dropout_keeps_the_expected_share_scaled_and_draws_from_torchs_seed():
    x = torch.ones(200, 500)
    layer = Dropout(0.25)
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))
    kept = first != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(first[kept], torch.tensor(1 / 0.75))
    layer.eval()
    assert torch.equal(layer(x), x)


def test_an_exported_model_holds_torchs_plain_layers():
    """MLflow logs the model with torch.export: the program must not call this package."""
    model = nn.Sequential(Linear(6, 5), BatchNorm1d(5), nn.ReLU(), Dropout(0.5), Linear(5, 2))
    model.eval()
    program = torch.export.export(model, (torch.randn(3, 6),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("linear" in target for target in targets), targets
    assert not any("fashion_mlp" in target for target in targets), targets
    x = torch.randn(3, 6)
    assert torch.allclose(program.module()(x), model(x), atol=1e-6)


def test_gradients_flow_only_where_asked():
    layer = Linear(5, 3)
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 5, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None
    assert torch.equal(layer.bias.grad, torch.full((3,), 4.0))
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(4, 5))
