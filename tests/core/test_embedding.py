import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli import main
from core.backbones import build_backbone
from core.data.loader import open_dataset
from core.data.transforms import ModelInputTransform
from core.errors import ConfigError


def test_embed_writes_each_image_s_flip_summed_unit_embedding_and_names_its_rows(tiny_rec, tmp_path):
    torch.manual_seed(0)
    network = build_backbone("tiny", 8, 16).eval()
    torch.save(network.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "feats.npy"
    result = CliRunner().invoke(main, ["embed", str(tmp_path / "w.pth"), "--backbone", "tiny", "--input-size", "16",
                                       "--data", str(tiny_rec), "--out", str(out), "--workers", "0", "--quiet",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    features = np.load(out)
    table = pd.read_csv(tmp_path / "feats.csv")
    dataset = open_dataset(tiny_rec, transform=ModelInputTransform(16))
    assert features.shape == (48, 8) and list(table["label"]) == list(dataset.labels)
    assert list(table["record"]) == list(dataset.image_keys)
    for index in (0, 17, 47):  # by hand: the image and its mirror through the network, summed, unit length
        image = dataset[index][0][None]
        with torch.no_grad():
            expected = F.normalize(network(image) + network(torch.flip(image, dims=[-1])), dim=1)[0].numpy()
        np.testing.assert_allclose(features[index], expected, atol=1e-5)


def test_embed_wants_a_npy_name(tiny_rec, tmp_path):
    from core.embedding import write_embeddings

    with pytest.raises(ConfigError, match=r"feats.txt: embeddings are written as a NumPy array"):
        write_embeddings(build_backbone("tiny", 8, 16).eval(), 16, 8, tiny_rec, tmp_path / "feats.txt",
                         torch.device("cpu"))
    assert not list(tmp_path.glob("feats*"))
