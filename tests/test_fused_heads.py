"""The SegFormer heads' fused path (fuse conv applied per stage before the resize) is exact.

``forward`` composes each stage's projection with its slice of the 4E -> E fuse conv and
resizes E-channel maps with two GEMMs; ``reference_forward`` is the literal
resize-concatenate-fuse order. Both are compared in float64, in train mode (BatchNorm with
batch statistics) and in eval mode (running statistics folded into the weights).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import semask
from semask.models.mit.heads import add_resized
from semask.models.upsampled_ce import bilinear_matrix, upsampled_cross_entropy

TINY = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), decoder_channels=12)


def tiny_head_model(head: str, train: bool) -> nn.Module:
    torch.manual_seed(0)
    model = semask.create_model("mit_b0", num_classes=5, decode_head=head, **TINY).double()
    for module in model.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
        if isinstance(module, nn.Dropout2d):
            module.p = 0.0
    return model.train(train)


def test_bilinear_matrix_by_hand() -> None:
    # 2 -> 4, align_corners False: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper neighbour clamped)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(bilinear_matrix(2, 4, expected), expected)
    # 3 -> 2 (downscaling): sources 0.25 and 1.75
    down = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.25, 0.75]], dtype=torch.float64)
    assert torch.allclose(bilinear_matrix(3, 2, down), down, atol=1e-15)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 7, 3), (1, 1, 16, 16)])
def test_add_resized_equals_interpolate_plus_add(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    y = torch.randn(*shape, dtype=torch.float64)
    out = torch.randn(shape[0], shape[1], 16, 13, dtype=torch.float64)
    expected = out + F.interpolate(y, size=(16, 13), mode="bilinear", align_corners=False)
    assert torch.allclose(add_resized(out.clone(), y), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("head", ["nvlabs", "mmseg"])
@pytest.mark.parametrize("train", [False, True])
def test_fused_head_equals_reference(head: str, train: bool) -> None:
    model = tiny_head_model(head, train)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    features = [f.detach().requires_grad_() for f in model.backbone(x, output_priors=False).features]
    decode = model.decode_head
    start = {k: v.clone() for k, v in decode.state_dict().items()}

    fused = decode(features)
    fused_grads = torch.autograd.grad(fused.square().sum(), [*features, *decode.parameters()])
    fused_state = {k: v.clone() for k, v in decode.state_dict().items()}
    decode.load_state_dict(start)
    ref = decode.reference_forward(features)
    ref_grads = torch.autograd.grad(ref.square().sum(), [*features, *decode.parameters()])

    assert fused.shape == ref.shape == (2, 5, 16, 24)
    assert torch.allclose(fused, ref, rtol=0, atol=1e-10)
    for a, b in zip(fused_grads, ref_grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, b.abs().max().item()))
    for key, value in decode.state_dict().items():  # BatchNorm running statistics updated alike
        assert torch.allclose(fused_state[key].double(), value.double(), rtol=0, atol=1e-12), key
    bn_mean = "linear_fuse.bn.running_mean" if head == "nvlabs" else "fusion_conv.bn.running_mean"
    assert torch.equal(decode.state_dict()[bn_mean], start[bn_mean]) != train  # only training updates it


def test_flop_counter_sees_the_reference_head() -> None:
    """FlopCounterMode (and forward hooks) get the literal head, so counts keep the paper's convention."""
    model = tiny_head_model("nvlabs", train=False)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        features = model.backbone(x, output_priors=False).features
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.decode_head(features)
    e, k = 12, 5
    pixels = [16 * 16, 8 * 8, 4 * 4, 2 * 2]
    projections = sum(2 * n * c * e for n, c in zip(pixels, TINY["embed_dims"]))
    fuse = 2 * pixels[0] * 4 * e * e
    classifier = 2 * pixels[0] * e * k
    assert counter.get_total_flops() == projections + fuse + classifier

    calls: list[str] = []
    handle = model.decode_head.linear_fuse.conv.register_forward_hook(lambda *_: calls.append("fuse"))
    try:
        with torch.no_grad():
            hooked = model.decode_head(features)
    finally:
        handle.remove()
    assert calls == ["fuse"]
    with torch.no_grad():
        assert torch.allclose(hooked, model.decode_head(features), rtol=0, atol=1e-10)


def test_upsampled_cross_entropy_by_hand() -> None:
    # 1x1 logits upsample to a constant map: every pixel has CE = log(e^0 + e^ln3) - z_label.
    logits = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 2, 1, 1)
    labels = torch.tensor([[[0, 1, 255], [1, 1, 0]]])
    loss = upsampled_cross_entropy(logits, labels)
    expected = 2 * math.log(4.0) + 3 * (math.log(4.0) - math.log(3.0))  # two 0s, three 1s, one ignored
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("band_elements", [7 * 50 * 5, 1, 2**30])  # bands of 5 rows, of 1 row, one band
def test_upsampled_cross_entropy_equals_literal(dtype: torch.dtype, band_elements: int) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 7, 9, 13, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 7, (2, 36, 50))
    labels[:, :3] = 255
    fused = upsampled_cross_entropy(x, labels, band_elements=band_elements)
    (fused_grad,) = torch.autograd.grad(fused, x)
    up = F.interpolate(x, size=(36, 50), mode="bilinear", align_corners=False)
    literal = F.cross_entropy(up, labels, ignore_index=255, reduction="sum")
    (literal_grad,) = torch.autograd.grad(literal, x)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert abs(fused.item() - literal.item()) <= tol * abs(literal.item())
    with torch.no_grad():  # value only: the same number, no gradient formed or kept
        value = upsampled_cross_entropy(x, labels, band_elements=band_elements)
    assert value.item() == fused.item() and value.grad_fn is None
    assert torch.allclose(fused_grad, literal_grad, rtol=0, atol=tol * literal_grad.abs().max().item())


@pytest.mark.parametrize("name", ["semask_mit_b0", "semask_swin_t_fpn"])
def test_model_loss_equals_the_literal_ce_of_its_full_size_logits(name: str) -> None:
    """The models take L1 + 0.4 L2 from the stride-4 maps, band by band; the literal recipe
    resizes the logits to the labels first. Values and gradients agree."""
    torch.manual_seed(3)
    small = TINY if "mit" in name else dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)
    model = semask.create_model(name, num_classes=5, **small).double().eval()  # eval: no dropout / drop path
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[0, :5] = 255

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out = model(x, labels)
    banded = (out.loss_main.item(), out.loss_semantic.item(), grads(out.loss))
    full = model(x, output_semantic_logits=True)
    assert full.logits.shape[-2:] == labels.shape[-2:]  # the literal recipe: CE at the label size
    main = F.cross_entropy(full.logits, labels, ignore_index=255, reduction="sum") / labels.numel()
    semantic = F.cross_entropy(full.semantic_logits, labels, ignore_index=255, reduction="sum") / labels.numel()
    literal = (main.item(), semantic.item(), grads(main + 0.4 * semantic))
    assert banded[0] == pytest.approx(literal[0], rel=1e-10) and banded[1] == pytest.approx(literal[1], rel=1e-10)
    assert len(banded[2]) == len(literal[2]) > 0
    for a, b in zip(banded[2], literal[2]):
        assert torch.allclose(a, b, rtol=0, atol=1e-9 * max(1.0, b.abs().max().item()))
