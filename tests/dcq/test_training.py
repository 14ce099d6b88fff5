import torch

from core.config import TrainConfig
from core.models import load_model
from core.trainer import Trainer


def _config(root, **changes):
    base = dict(method="dcq", data=str(root), val=[str(root / "val.bin")], backbone="tiny", input_size=16,
                embedding_size=16, batch_size=8, epochs=2, lr=0.05, queue_size=20, workers=0,
                checkpoint_every=0, log_every=1, seed=5, device="cpu")
    base.update(changes)
    return TrainConfig().replace(**base)


def _state(trainer):
    return {k: v.clone() for k, v in {**trainer.backbone.state_dict(),
                                      **{f"s.{k}": v for k, v in trainer.sampler.state_dict().items()
                                         if isinstance(v, torch.Tensor)}}.items()}


def test_dcq_resume_continues_exactly(tiny_rec, tmp_path):
    straight = Trainer(_config(tiny_rec), tmp_path / "straight", progress=False)
    straight.fit()
    first = Trainer(_config(tiny_rec, max_steps=5), tmp_path / "resumed", progress=False)
    first.fit()
    second = Trainer(_config(tiny_rec), tmp_path / "resumed", progress=False)
    second.resume(tmp_path / "resumed")
    second.fit()
    a, b = _state(straight), _state(second)
    assert a.keys() == b.keys() and any(k.startswith("s.queue") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (straight.sampler.queue_labels >= 0).all()  # 12 steps x 8 rows filled the 20 slots


def test_dcq_uses_its_recipe_and_evaluates_the_momentum_encoder(tiny_rec, tmp_path):
    trainer = Trainer(_config(tiny_rec, epochs=1), tmp_path / "run", progress=False)
    assert (trainer.config.margin, trainer.config.margin_m, trainer.config.scale) == ("cosface", 0.3, 50.0)
    trainer.fit()
    momentum_model = load_model(tmp_path / "run", torch.device("cpu")).network
    online_model = load_model(tmp_path / "run", torch.device("cpu"), online=True).network
    for name, value in momentum_model.state_dict().items():
        assert torch.equal(value, trainer.sampler.encoder.state_dict()[name])
    assert any(not torch.equal(value, online_model.state_dict()[name])
               for name, value in momentum_model.state_dict().items() if value.is_floating_point())
