"""Weight averages: torch's EMA and airbench's lookahead (cifar_sweep/averaging.py)."""

import pytest
import torch
from torch import nn

from cifar_sweep.training.averaging import Lookahead, weight_average


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _perturb(model: nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def test_lookahead_ramps_its_decay_and_restarts_the_model_from_the_average():
    model = _model()
    look = Lookahead(model, peak_decay=0.8, total_updates=4)
    assert [look.decay_at(u) for u in (0, 2, 4, 9)] == pytest.approx([0.0, 0.1, 0.8, 0.8])
    look.update_parameters(model)  # the first update copies the model
    start = model[0].weight.detach().clone()
    for update in range(1, 5):
        _perturb(model, 1.0)
        look.update_parameters(model)
        # Slow weights moved (1 - decay) of the way to the fast ones, and the model is back on them.
        expected = start + (1.0 - look.decay_at(update)) * 1.0
        torch.testing.assert_close(look.module[0].weight, expected)
        torch.testing.assert_close(model[0].weight, look.module[0].weight)
        start = expected
    # Batchnorm statistics are averaged too; the integer counter follows the model.
    assert torch.equal(look.module[1].num_batches_tracked, model[1].num_batches_tracked)


def test_lookahead_state_resumes_the_same_average():
    model = _model()
    look = Lookahead(model, 0.8, total_updates=10)
    for _ in range(3):
        _perturb(model, 0.5)
        look.update_parameters(model)
    restored = Lookahead(_model(), 0.8, total_updates=10)
    restored.load_state_dict(look.state_dict())
    assert int(restored.n_averaged) == 3
    torch.testing.assert_close(restored.module[0].weight, look.module[0].weight)


def test_plain_ema_never_touches_the_model():
    model = _model()
    ema = weight_average(model, 0.9)
    assert not isinstance(ema, Lookahead)
    ema.update_parameters(model)
    _perturb(model, 1.0)
    before = model[0].weight.detach().clone()
    ema.update_parameters(model)
    assert torch.equal(model[0].weight, before)
    torch.testing.assert_close(ema.module[0].weight, before - 0.9)


def test_bad_settings_are_named():
    assert weight_average(_model(), None) is None
    with pytest.raises(ValueError, match="trainer.lookahead=true needs trainer.ema_decay"):
        weight_average(_model(), None, lookahead=True)
    with pytest.raises(ValueError, match="trainer.ema_decay=1.5"):
        weight_average(_model(), 1.5)
