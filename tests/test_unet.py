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


def test_channels_last_placement_keeps_outputs_and_layout():
    from maskgen.device import place_model

    torch.manual_seed(0)
    net = UNet(3, 4, base_width=4, n_poolings=2).eval()
    x = torch.randn(2, 3, 16, 16, 16)
    before = net(x)
    place_model(net, torch.device("cpu"))
    assert net.encoders[1][0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    after = net(x)
    assert torch.allclose(before, after, atol=1e-5)
    # a checkpoint saved channels-last loads into a default-layout network with identical outputs
    fresh = UNet(3, 4, base_width=4, n_poolings=2).eval()
    fresh.load_state_dict(net.state_dict())
    assert torch.allclose(fresh(x), after, atol=1e-5)
