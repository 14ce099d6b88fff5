import json

import pytest
import torch
from click.testing import CliRunner

from cli import main
from core.backbones import build_backbone
from core.config import TrainConfig
from core.errors import ConfigError, DataError
from core.models import bare_weights, embedding_size_of, load_model
from core.trainer import Trainer
from tests.conftest import write_tiny_rec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def iresnet_run(tmp_path_factory):
    """An iresnet50 run at input 32 on the tiny set, one step: its evaluation network is what bare weights copy."""
    root = tmp_path_factory.mktemp("iresnet")
    data = write_tiny_rec(root / "tiny", size=32)
    config = TrainConfig().replace(data=str(data), val=[], backbone="iresnet50", input_size=32, embedding_size=64,
                                   batch_size=8, max_steps=1, workers=0, device="cpu", sample_rate=1.0)
    Trainer(config, root / "run", progress=False).fit()
    return root / "run", data


def _eval_json(*args):
    result = CliRunner().invoke(main, ["eval", *map(str, args), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_bare_iresnet50_weights_evaluate_like_their_run(iresnet_run, tmp_path):
    run, data = iresnet_run
    weights = tmp_path / "backbone.pth"
    torch.save(load_model(run, CPU).network.state_dict(), weights)  # insightface: torch.save(backbone.state_dict())
    from_run = _eval_json(run, "--val", data / "val.bin")
    from_weights = _eval_json(weights, "--backbone", "iresnet50", "--input-size", 32, "--val", data / "val.bin")
    assert from_weights == from_run and 0.0 < from_run["val"]["accuracy"] <= 1.0


def test_ddp_prefixes_and_state_dict_wrappers_are_read_through(tmp_path):
    network = build_backbone("tiny", 24, 16)
    prefixed = {f"module.{key}": value for key, value in network.state_dict().items()}
    weights = bare_weights(tmp_path / "w.pth", {"state_dict": prefixed})
    assert weights.keys() == network.state_dict().keys()
    assert embedding_size_of(weights, tmp_path / "w.pth") == 24
    torch.save({"state_dict": prefixed}, tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", CPU, backbone="tiny", input_size=16)
    assert loaded.embedding_size == 24 and loaded.run_state is None
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value)


def test_bare_weights_need_their_backbone_named(tmp_path):
    torch.save(build_backbone("tiny", 16, 16).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"w.pth: bare weights .* give --backbone NAME \(one of .*iresnet50"):
        load_model(tmp_path / "w.pth", CPU)


def test_weights_of_another_network_are_refused_naming_keys_and_shapes(tmp_path):
    torch.save(build_backbone("tiny", 16, 16).state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(DataError, match=r"tiny.pth: its weights do not fit iresnet18 .* key\(s\) missing .*"
                                        r"another --backbone"):
        load_model(tmp_path / "tiny.pth", CPU, backbone="iresnet18")
    with pytest.raises(DataError, match=r"fc.weight is \[16, 256\] in the file but \[16, 1024\] in the network .*"
                                        r"another --input-size"):
        load_model(tmp_path / "tiny.pth", CPU, backbone="tiny", input_size=32)


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pth")
    with pytest.raises(DataError, match="odd.pth: neither a facequeue run checkpoint nor a state_dict"):
        load_model(tmp_path / "odd.pth", CPU, backbone="tiny")


def test_a_run_refuses_flags_that_contradict_its_network(iresnet_run):
    run, _ = iresnet_run
    with pytest.raises(ConfigError, match=r"a run knows its network; --backbone tiny \(the run has iresnet50\)"):
        load_model(run, CPU, backbone="tiny")
    assert load_model(run, CPU, backbone="iresnet50", input_size=32).backbone == "iresnet50"  # agreeing is fine


def _config(data, **changes):
    return TrainConfig().replace(**{**dict(data=str(data), val=[], backbone="tiny", input_size=16,
                                           embedding_size=16, batch_size=8, max_steps=1, workers=0, device="cpu",
                                           sample_rate=1.0, seed=5), **changes})


def test_init_starts_the_backbone_from_the_weights_and_leaves_the_run_s_random_streams_alone(tiny_rec, tmp_path):
    donor = build_backbone("tiny", 16, 16)
    torch.nn.init.normal_(donor.fc.weight)
    torch.save(donor.state_dict(), tmp_path / "donor.pth")
    started = Trainer(_config(tiny_rec, init=str(tmp_path / "donor.pth")), tmp_path / "a", progress=False)
    plain = Trainer(_config(tiny_rec), tmp_path / "b", progress=False)
    for key, value in donor.state_dict().items():
        assert torch.equal(started.backbone.state_dict()[key], value), key
    assert not torch.equal(plain.backbone.fc.weight, donor.fc.weight)
    # the same data order and the same fresh head as the run without --init
    assert next(iter(started.batch_sampler)) == next(iter(plain.batch_sampler))
    assert torch.equal(started.sampler.store.centers, plain.sampler.store.centers)


def test_init_from_weights_that_do_not_fit_fails_before_any_image_is_decoded(tiny_rec, tmp_path, monkeypatch):
    import core.trainer

    def decode_nothing(*args, **kwargs):
        raise AssertionError("the training images were decoded before --init was checked")

    monkeypatch.setattr(core.trainer, "prepare_dataset", decode_nothing)
    torch.save(build_backbone("tiny", 32, 16).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(DataError, match=r"wide.pth: its weights do not fit tiny \(embedding 16, input 16\)"):
        Trainer(_config(tiny_rec, init=str(tmp_path / "wide.pth")), tmp_path / "run", progress=False)


def test_bare_iresnet50_weights_export_to_onnx_within_tolerance(iresnet_run, tmp_path):
    import numpy as np
    import onnxruntime

    from core.export import ONNX_TOLERANCE

    run, _ = iresnet_run
    weights = tmp_path / "backbone.pth"
    reference = load_model(run, CPU).network
    torch.save(reference.state_dict(), weights)
    result = CliRunner().invoke(main, ["export", str(weights), "--backbone", "iresnet50", "--input-size", "32",
                                       "--out", str(tmp_path / "r50.onnx")])
    assert result.exit_code == 0, result.output
    printed = float(result.output.split("matches PyTorch to ")[1].split(" ")[0])
    assert printed <= ONNX_TOLERANCE
    images = torch.randn(7, 3, 32, 32)
    session = onnxruntime.InferenceSession(str(tmp_path / "r50.onnx"))
    produced = session.run(["embedding"], {"input": images.numpy()})[0]
    np.testing.assert_allclose(produced, reference(images).detach().numpy(), atol=ONNX_TOLERANCE)


def test_init_from_a_run_of_another_network_names_the_flags_that_fit_it(iresnet_run, tiny_rec, tmp_path):
    run, _ = iresnet_run
    with pytest.raises(ConfigError, match=r"--init .*run: its network is iresnet50 \(64-d, input 32\), this run "
                                          r"trains tiny \(16-d, input 16\); give --backbone iresnet50 "
                                          r"--embedding-size 64 --input-size 32"):
        Trainer(_config(tiny_rec, init=str(run)), tmp_path / "new", progress=False)


def test_init_cannot_come_with_resume(tiny_rec, tmp_path):
    from core.config import resume_config

    with pytest.raises(ConfigError, match="a resumed run continues from its checkpoint; --init starts a new run"):
        resume_config({"resume": str(tmp_path / "run"), "init": str(tmp_path / "w.pth")})
