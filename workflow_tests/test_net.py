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
