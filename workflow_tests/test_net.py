"""The Quicksilver network: shapes, seeding, dropout and MC dropout."""

import pytest
import torch

from qs.net import QuicksilverNet, count_parameters, enable_mc_dropout


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return QuicksilverNet(features=kw.pop("features", 4), **kw).eval()


def test_output_shape_and_seed_determinism():
    x = torch.rand(3, 2, 15, 15, 15, generator=torch.Generator().manual_seed(5))
    a, b, c = _net(0), _net(0), _net(1)
    with torch.no_grad():
        ya, yb, yc = a(x), b(x), c(x)
    assert ya.shape == (3, 3, 15, 15, 15)
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yc)
    # the three components come from separate decoders: not copies of each other
    assert not torch.allclose(ya[:, 0], ya[:, 1])


def test_moving_and_target_both_matter():
    net = _net(0)
    x = torch.rand(1, 2, 15, 15, 15)
    with torch.no_grad():
        y = net(x)
        x2 = x.clone()
        x2[:, 1] += 0.5
        assert not torch.allclose(net(x2), y)


def test_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 2, 15, 15, 15\)"):
        _net()(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="odd"):
        QuicksilverNet(4, patch=16)


def test_dropout_off_equal_mc_on_differs():
    net = _net(0, dropout=0.2)
    x = torch.rand(2, 2, 15, 15, 15)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # eval: dropout off
        assert enable_mc_dropout(net) > 0
        net.eval()  # eval() must not switch MC dropout off
        s1, s2 = net(x), net(x)
        assert not torch.allclose(s1, s2)
        enable_mc_dropout(net, False)
        assert torch.equal(net(x), net(x))


def test_no_dropout_model():
    net = _net(0, dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    with pytest.raises(ValueError, match="dropout"):
        enable_mc_dropout(net)


def test_parameter_count_paper_size():
    # features = 64 as in the paper (and the original code's layer layout)
    assert count_parameters(QuicksilverNet(64)) == 21_826_344


@pytest.mark.parametrize("name, reach", [("dilated", 9), ("dilated-match", 10)])
def test_dilated_net_contract_and_receptive_field(name, reach):
    from qs.net import ARCHITECTURES, network_class

    cls = ARCHITECTURES[name]
    torch.manual_seed(0)
    net = cls(features=4, dropout=0.2).eval()
    x = torch.rand(2, 2, 15, 15, 15, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 3, 15, 15, 15)
    # early fusion: one voxel's output depends on both images, within 9 voxels (dilations 1, 1, 2, 4, 1) only,
    # one more with the match features (their central-difference gradient)
    y[0, 0, 2, 7, 7].backward()
    g = x.grad[0].abs().sum(dim=(2, 3))  # (channel, i)
    assert g[0].sum() > 0 and g[1].sum() > 0 and x.grad[1].abs().sum() == 0
    touched = torch.nonzero(g.sum(0)).flatten()
    assert int(touched.min()) == 0 and int(touched.max()) == 2 + reach
    # MC dropout as in the encoder-decoder
    with torch.no_grad():
        assert enable_mc_dropout(net) == 4
        assert not torch.allclose(net(x), net(x))
    with pytest.raises(ValueError, match=r"\(N, 2, 15, 15, 15\)"):
        net(torch.zeros(1, 1, 15, 15, 15))
    # names: the config's and the model file's
    assert network_class(name) is network_class(cls.ARCHITECTURE) is cls
    assert network_class("quicksilver-2017") is QuicksilverNet
    assert set(ARCHITECTURES) == {"quicksilver", "dilated", "dilated-match"}
    with pytest.raises(ValueError, match="unknown network architecture 'unet'.*dilated"):
        network_class("unet")


def test_match_features_known_answers():
    from qs.net import image_gradient, match_features

    i, j, k = torch.meshgrid(*(torch.arange(7.0),) * 3, indexing="ij")
    ramp = (0.1 * i - 0.2 * j + 0.05 * k)[None, None]
    g = image_gradient(ramp)
    # a linear ramp: its slope per voxel inside; half of it on the replicated border
    assert torch.allclose(g[0, :, 1:-1, 1:-1, 1:-1], torch.tensor([0.1, -0.2, 0.05])[:, None, None, None].expand(3, 5, 5, 5))
    assert torch.allclose(g[0, 0, 0], torch.full((7, 7), 0.05)) and torch.allclose(g[0, 1, :, 6], torch.full((7, 7), -0.1))
    moving, target = ramp, ramp + 0.3  # a brighter target: d = 0.3 everywhere
    f = match_features(torch.cat([moving, target], dim=1))
    assert f.shape == (1, 15, 7, 7, 7)
    assert torch.equal(f[:, :2], torch.cat([moving, target], dim=1)) and torch.allclose(f[:, 2], torch.full((1, 7, 7, 7), 0.3))
    assert torch.allclose(f[:, 3:6], g) and torch.allclose(f[:, 6:9], g)
    assert torch.allclose(f[:, 9:12], 0.3 * g) and torch.allclose(f[:, 12:15], 0.3 * g)
