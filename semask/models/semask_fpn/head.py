"""mmseg's Semantic-FPN decode head (FPNHead without an FPN neck), with its checkpoint key names."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..segmenter import resize, upsample2x


class ConvModule(nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, with mmseg's ``conv``/``bn`` key names."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Upsample2x(nn.Module):
    """:func:`upsample2x` as a tower layer; parameter-free, occupies odd indices."""

    def forward(self, x: Tensor) -> Tensor:
        return upsample2x(x)


class PointwiseConvToNCHW(nn.Conv2d):
    """1x1 convolution whose output is NCHW-contiguous (``conv_seg``).

    On a channels-last map in eager mode it is one batched GEMM, weight (K, C) x tokens^T
    (C, H*W), that reads the NHWC map in place and writes NCHW directly; PyTorch would route
    a 1x1 kernel on channels-last input through its slow im2col path and a layout copy
    would follow. NCHW maps take the plain convolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_contiguous() or torch.compiler.is_compiling():
            return super().forward(x).contiguous()
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        weight = self.weight.view(1, -1, c).expand(b, -1, -1)
        return torch.baddbmm(self.bias.view(1, -1, 1), weight, tokens.transpose(1, 2)).view(b, -1, h, w)


class SemanticFPNHead(nn.Module):
    """mmseg FPNHead: per-stride conv towers upsampled to stride 4 and summed, then 1x1 to K.

    Towers 1.. stop before their last x2 upsampling (a parameter-free layer, so the
    official key indices are unchanged): :meth:`forward` applies it once to their sum.
    """

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, c in enumerate(in_channels):
            layers: list[nn.Module] = []
            for k in range(max(1, i)):  # log2(stride_i / 4) convs, at least one
                if k > 0:
                    layers.append(Upsample2x())
                layers.append(ConvModule(c if k == 0 else channels, channels))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = PointwiseConvToNCHW(channels, num_classes)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Stride-4 logits (B, K, H/4, W/4), NCHW-contiguous.

        The towers run channels-last (NHWC): oneDNN convolutions skip their layout reorders
        and bilinear upsampling is about 3x faster. The exception is CPU training: there
        they run NCHW, since oneDNN's convolution backward on channels-last maps is about
        2x slower (SeMask-T, batch 2, 512^2, measured ad hoc: the head's forward + backward
        1.3-1.6 s NCHW against 1.8-2.4 s NHWC). The logits come out NCHW because the
        full-resolution outputs are NCHW.
        """
        nchw = torch.is_grad_enabled() and features[0].device.type == "cpu"
        layout = torch.contiguous_format if nchw else torch.channels_last
        features = [f.contiguous(memory_format=layout) for f in features]
        out = self.scale_heads[0](features[0])
        # Towers 1.. share their final x2 upsampling, a linear map: maps of equal size are
        # summed first and upsampled once (2 fewer stride-4 passes). Odd input sizes can
        # give towers unequal sizes; each group of equal ones is then upsampled on its own.
        groups: list[Tensor] = []
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            y = head(feature)
            if groups and groups[-1].shape == y.shape:
                groups[-1] = groups[-1] + y
            else:
                groups.append(y)
        for y in groups:
            out = out + resize(upsample2x(y), out.shape[-2:])
        return self.conv_seg(self.dropout(out))
