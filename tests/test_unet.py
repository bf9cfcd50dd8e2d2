import pytest
import torch
from torch import nn

from maskgen.models import UNet


def test_output_shape_and_table15_structure():
    net = UNet(13, 5, base_width=4, n_poolings=5)
    x = torch.rand(1, 13, 64, 64, 64)
    assert net(x).shape == (1, 5, 64, 64, 64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    # Table 15: 3 Conv-BN-ReLU per level over 6 levels, 2 per decoder level over 5, then the head
    assert len(convs) == 6 * 3 + 5 * 2 + 1
    widths = [enc[0][0].out_channels for enc in net.encoders]
    assert widths == [4, 8, 16, 32, 64, 128]
    assert all(c.padding_mode == "reflect" for c in convs[:-1])
    assert sum(isinstance(m, nn.BatchNorm3d) for m in net.modules()) == 6 * 3 + 5 * 2


def test_size_not_divisible_is_a_clear_error():
    net = UNet(1, 2, base_width=2, n_poolings=3)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 20, 16, 16))
