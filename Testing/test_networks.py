"""Networks: shapes, logits, no input dropout, parameter count, build by name."""
from __future__ import annotations

import pytest
import torch

from LiverCTSegmentationLib.engine.errors import BundleError
from LiverCTSegmentationLib.engine.networks import build_network, count_parameters, required_divisor

MLF_CORE = {"name": "reduced_unet3d", "in_channels": 1, "out_channels": 3, "channels": [32, 64, 128],
            "norm": "batch", "dropout": 0.25}


def test_mlf_core_parameter_count_matches_original():
    n = count_parameters(build_network(MLF_CORE))
    assert abs(n - 2.34e6) / 2.34e6 < 0.10, n


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("stem", [1, 2])
def test_unet3d_output_shape_and_logits(norm, stem):
    arch = {"name": "reduced_unet3d", "out_channels": 3, "channels": [4, 8, 16], "norm": norm, "stem_stride": stem}
    net = build_network(arch).eval()
    d = required_divisor(arch)
    assert d == (4 if stem == 1 else 8)
    x = torch.randn(2, 1, 2 * d, 3 * d, d)
    y = net(x)
    assert y.shape == (2, 3, 2 * d, 3 * d, d)
    # logits, not probabilities: channels do not sum to one
    assert not torch.allclose(y.sum(1), torch.ones_like(y.sum(1)))


def test_unet2d_shape():
    net = build_network({"name": "unet2d", "out_channels": 2, "channels": [4, 8, 16, 32]}).eval()
    assert required_divisor({"name": "unet2d", "channels": [4, 8, 16, 32]}) == 8
    assert net(torch.randn(1, 1, 32, 48)).shape == (1, 2, 32, 48)


def test_no_dropout_on_raw_input_but_dropout_elsewhere():
    net = build_network(MLF_CORE)
    assert isinstance(net.inc.drop1, torch.nn.Identity)
    assert isinstance(net.inc.drop2, torch.nn.Dropout3d)
    # Functional check: in train mode with p close to 1 the original blanked the input
    # of whole samples; here the first conv always sees the image.
    arch = dict(MLF_CORE, channels=[4, 8], dropout=0.9, norm="none")
    net = build_network(arch).train()
    seen = []
    net.inc.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.randn(4, 1, 8, 8, 8)
    net(x)
    assert torch.equal(seen[0], x)


def test_unknown_architecture_is_bundle_error():
    with pytest.raises(BundleError, match="Unknown network architecture"):
        build_network({"name": "vnet9000", "out_channels": 2})
    with pytest.raises(BundleError):
        build_network({"out_channels": 2})
    with pytest.raises(BundleError, match="norm"):
        build_network({"name": "reduced_unet3d", "out_channels": 2, "norm": "layer"})


def test_threshold_net_is_pointwise():
    net = build_network({"name": "threshold_net", "out_channels": 2})
    x = torch.randn(1, 1, 5, 6, 7)
    y = net(x)
    assert y.shape == (1, 2, 5, 6, 7)
    assert required_divisor({"name": "threshold_net"}) == 1
