"""Model files: safetensors + metadata; tampered, mismatched, foreign and malicious files are refused."""

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from qs.io import QsInputError
from qs.model_io import LDDMM_KEYS, load_model, read_meta, save_model
from qs.net import QuicksilverNet

RUN = dict(kind="prediction", stride=14, alpha=0.01, beta=0.01, gamma=0.001, time_steps=10, sigma=0.2,
           spacing=[1.0, 1.0, 1.0], modality="T1->T1", train_pairs=3, train_patches=120, momentum_scale=37.5)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = QuicksilverNet(features=4, dropout=0.2).eval()
    path = save_model(net, RUN, tmp_path / "model.safetensors")
    return net, path


def test_roundtrip(saved):
    net, path = saved
    model, meta = load_model(path, expect={k: RUN[k] for k in LDDMM_KEYS if k in RUN} | {"kind": "prediction",
                                                                                         "spacing": (1.0, 1.0, 1.0)})
    assert not model.training
    x = torch.rand(2, 2, 15, 15, 15)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    for key, value in RUN.items():
        assert meta[key] == value
    assert (meta["patch"], meta["features"], meta["dropout"]) == (15, 4, 0.2)
    assert meta["torch_version"] == torch.__version__ and len(meta["weights_sha256"]) == 64
    assert read_meta(path) == meta
    assert not list(path.parent.glob("*.tmp*"))


def test_a_model_without_kernel_scales_has_a_single_kernel(saved):
    """Models written before lddmm.kernel_scales existed mean one kernel: they fit [1.0] and are refused for a
    multi-scale kernel, naming the key."""
    _, path = saved
    assert "kernel_scales" not in read_meta(path)
    load_model(path, expect={"kernel_scales": [1.0]})
    with pytest.raises(QsInputError, match=r"kernel_scales: the model has \[1.0\], this run uses \[1.0, 0.5\]"):
        load_model(path, expect={"kernel_scales": [1.0, 0.5]})


def test_save_requires_run_metadata(tmp_path):
    with pytest.raises(ValueError, match="momentum_scale"):
        save_model(QuicksilverNet(4), {k: v for k, v in RUN.items() if k != "momentum_scale"}, tmp_path / "m.safetensors")


def test_rejects_tampered_weights(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    data[8 + header_len + 100] ^= 0x01  # flip one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(QsInputError, match="sha256") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_rejects_mismatched_kernel(saved):
    _, path = saved
    with pytest.raises(QsInputError) as err:
        load_model(path, expect={"alpha": 0.02, "beta": 0.01, "time_steps": 10})
    msg = str(err.value)
    assert "alpha" in msg and "0.01" in msg and "0.02" in msg and str(path) in msg
    assert "beta" not in msg and "time_steps" not in msg
    with pytest.raises(QsInputError, match="kind: the model has 'prediction', this run uses 'correction'"):
        load_model(path, expect={"kind": "correction"})
    with pytest.raises(QsInputError, match="spacing"):
        load_model(path, expect={"spacing": [1.0, 1.0, 2.0]})


def test_rejects_non_safetensors(tmp_path):
    for name, content in [("text.safetensors", b"hello, not a model\n"), ("empty.safetensors", b""),
                          ("noise.safetensors", bytes(range(256)) * 4)]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(QsInputError, match="not a valid safetensors") as err:
            load_model(path)
        assert name in str(err.value)
    with pytest.raises(QsInputError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")


def test_rejects_safetensors_without_complete_metadata(tmp_path):
    weights = {k: v.contiguous() for k, v in QuicksilverNet(4).state_dict().items()}
    bare = tmp_path / "bare.safetensors"
    save_file(weights, str(bare))
    with pytest.raises(QsInputError, match="without qs metadata"):
        load_model(bare)
    partial = tmp_path / "partial.safetensors"
    save_file(weights, str(partial), metadata={"qs": json.dumps({"format": "qs-model-1", "alpha": 0.01})})
    with pytest.raises(QsInputError, match="lacks .*momentum_scale"):
        load_model(partial)


def test_rejects_malicious_pickle(tmp_path):
    marker = tmp_path / "code_was_executed"
    control = tmp_path / "control_marker"

    class Payload:
        def __init__(self, target):
            self.target = target

        def __reduce__(self):
            return (exec, (f"open({str(self.target)!r}, 'w').close()",))

    # the payload is live: plain unpickling runs it
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    raw = tmp_path / "model.safetensors"
    raw.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    zipped = tmp_path / "model.pt"
    torch.save({"state_dict": Payload(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(QsInputError, match="not a valid safetensors"):
            load_model(path)
    assert not marker.exists()


def test_dilated_architecture_roundtrip_and_unknown_architecture(tmp_path):
    from qs.net import DilatedNet, MatchDilatedNet

    torch.manual_seed(0)
    net = DilatedNet(features=4, dropout=0.2).eval()
    path = save_model(net, RUN, tmp_path / "dilated.safetensors")
    model, meta = load_model(path)
    assert isinstance(model, DilatedNet) and meta["architecture"] == "dilated-cnn"
    x = torch.rand(1, 2, 15, 15, 15)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    # the same weights under the other architecture's name do not fit, and the message says which network
    header = read_meta(path) | {"architecture": "quicksilver-2017"}
    weights = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(tmp_path / "renamed.safetensors"), metadata={"qs": json.dumps(header)})
    with pytest.raises(QsInputError, match="do not fit the network .*architecture 'quicksilver-2017'"):
        load_model(tmp_path / "renamed.safetensors")
    # a plain dilated net's weights do not fit the one fed with match features (its first layer has 15 inputs)
    header["architecture"] = "dilated-match-cnn"
    save_file(weights, str(tmp_path / "match.safetensors"), metadata={"qs": json.dumps(header)})
    with pytest.raises(QsInputError, match="do not fit the network .*architecture 'dilated-match-cnn'"):
        load_model(tmp_path / "match.safetensors")
    match = MatchDilatedNet(features=4, dropout=0.2).eval()
    model, meta = load_model(save_model(match, RUN, tmp_path / "match2.safetensors"))
    assert type(model) is MatchDilatedNet and meta["architecture"] == "dilated-match-cnn"
    with torch.no_grad():
        assert torch.equal(model(x), match(x))
    header["architecture"] = "unet-2020"
    save_file(weights, str(tmp_path / "unet.safetensors"), metadata={"qs": json.dumps(header)})
    with pytest.raises(QsInputError, match="unet.safetensors: .*unknown network architecture 'unet-2020'"):
        load_model(tmp_path / "unet.safetensors")
