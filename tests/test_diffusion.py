"""Samplers against an oracle denoiser: when the data is one known image, the ideal noise (or
velocity) prediction is computable in closed form, and every sampler must return that image."""
import pytest
import torch

from genforge.models.diffusion import SAMPLERS, DiffusionModel


class Oracle(DiffusionModel):
    """Predicts exactly what a perfect model trained on the single image ``target`` would."""

    def __init__(self, target: torch.Tensor, prediction_type: str):
        super().__init__(channels=1, image_size=8, widths=(8, 8), attention=(False, False),
                         prediction_type=prediction_type)
        self.target = target

    def forward(self, x, t, labels=None):
        ab = self.train_scheduler.alphas_cumprod.to(x.device)[t.long()].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        eps = (x - a * self.target) / s
        return eps if self.scheduler_config["prediction_type"] == "epsilon" else a * eps - s * self.target


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_recovers_the_data_under_an_oracle(sampler, prediction_type):
    target = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    model = Oracle(target, prediction_type)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = 1000 if sampler == "ddpm" else 12
    x = model.sample(noise, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x, target.expand_as(x), atol=2e-3), (x - target).abs().max()


def test_v_prediction_starts_from_pure_noise():
    # a v model's data prediction stays bounded at t=T, so its few-step samplers start there
    # ("trailing"); an epsilon model's explodes there, so they start one stride below
    v = DiffusionModel(widths=(8, 8), attention=(False, False), prediction_type="v_prediction")
    eps = DiffusionModel(widths=(8, 8), attention=(False, False))
    for sampler in ("ddim", "dpm++"):
        sv, se = v.make_scheduler(sampler), eps.make_scheduler(sampler)
        sv.set_timesteps(20)
        se.set_timesteps(20)
        assert int(sv.timesteps[0]) == 999 and int(se.timesteps[0]) < 999


@pytest.mark.parametrize("scale_shift", [False, True])
def test_class_embedding_reaches_narrow_blocks_only_with_scale_shift(scale_shift):
    """Width 16 under 16 GroupNorm groups: an embedding added before the norm (diffusers' default) is a
    per-channel constant that the norm removes; scale_shift applies it after the norm."""
    torch.manual_seed(0)
    m = DiffusionModel(channels=1, image_size=8, widths=(16, 16), attention=(False, False), num_classes=3,
                       scale_shift=scale_shift).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        change = (m(x, t, torch.tensor([0, 0])) - m(x, t, torch.tensor([2, 2]))).abs().max().item()
    if scale_shift:
        assert change > 1e-2
    else:
        assert change < 1e-4
