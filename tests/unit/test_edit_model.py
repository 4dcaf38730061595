"""The edit task's model mechanics: conv_in widening, the training step's conditioning dropout, the target."""

from __future__ import annotations

import pytest
import torch

from mmtune.config.schema import DiffusionModelConfig
from mmtune.data.edit_triplets import EditBatch, tokenize_prompts
from mmtune.errors import ModelError
from mmtune.models.diffusion.objective import EditObjective, StepDraws
from mmtune.models.diffusion.parts import open_edit_parts, widen_conv_in


@pytest.fixture(scope="module")
def parts(tiny_sd_dir):
    return open_edit_parts(DiffusionModelConfig(name=str(tiny_sd_dir)))


def objective_of(parts, p: float) -> EditObjective:
    null = torch.from_numpy(tokenize_prompts(parts.tokenizer, [""])[0])
    return EditObjective(parts.unet, parts.vae, parts.text_encoder, parts.noise_scheduler, null_ids=null,
                         conditioning_dropout=p)


def batch_of(parts, n: int, size: int = 8, seed: int = 0) -> EditBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(tokenize_prompts(parts.tokenizer, ["make the circle red"] * n))
    return EditBatch(torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1,
                     ids)


def test_widening_conv_in_keeps_the_original_output_whatever_the_new_channels_hold(tiny_sd_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    text = torch.randn(2, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(x, t, text).sample
        old = unet.conv_in.weight.detach().clone()
        widen_conv_in(unet, 8)
        after = unet(torch.cat([x, torch.randn(2, 4, 16, 16)], dim=1), t, text).sample
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8
    torch.testing.assert_close(unet.conv_in.weight[:, :4], old)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="cannot narrow"):
        widen_conv_in(unet, 4)


def test_opening_widens_a_plain_unet_once_and_keeps_an_instructpix2pix_one(parts, tiny_sd_dir, tmp_path):
    assert parts.widened and parts.unet.config.in_channels == 8
    assert not any(p.requires_grad for p in parts.vae.parameters())
    assert not any(p.requires_grad for p in parts.text_encoder.parameters())
    import shutil

    again = tmp_path / "ip2p"
    shutil.copytree(tiny_sd_dir, again)
    parts.unet.save_pretrained(again / "unet")  # an 8-channel UNet, as a trained model has
    reopened = open_edit_parts(DiffusionModelConfig(name=str(again)))
    assert not reopened.widened and reopened.unet.config.in_channels == 8
    torch.testing.assert_close(reopened.unet.conv_in.weight, parts.unet.conv_in.weight)


def test_a_missing_model_is_one_line_naming_it(tmp_path):
    with pytest.raises(ModelError, match="not a Stable Diffusion directory"):
        open_edit_parts(DiffusionModelConfig(name=str(tmp_path)))


def classify(objective: EditObjective, parts, batch: EditBatch, draws: StepDraws | None = None):
    """Which samples had their text / image dropped, read off the UNet's inputs."""
    unet_input, _, text, _ = objective.unet_inputs(batch, draws)
    with torch.no_grad():
        null = parts.text_encoder(objective.null_ids)[0]
        real = parts.text_encoder(batch.input_ids)[0]
    text_dropped = torch.tensor([torch.equal(text[i], null[0]) for i in range(len(text))])
    assert all(torch.equal(text[i], real[i]) for i in range(len(text)) if not text_dropped[i])
    image_dropped = unet_input[:, 4:].flatten(1).abs().amax(1) == 0
    return text_dropped, image_dropped


def test_conditioning_dropout_follows_the_published_rule_at_its_boundaries(parts):
    objective = objective_of(parts, 0.05)
    r = torch.tensor([0.0, 0.049, 0.05, 0.099, 0.1, 0.149, 0.15, 0.9])
    text, image = classify(objective, parts, batch_of(parts, len(r)), StepDraws(dropout=r))
    assert text.tolist() == [True, True, True, True, False, False, False, False]
    assert image.tolist() == [False, False, True, True, True, True, False, False]


def test_conditioning_dropout_proportions_are_five_percent_each(parts):
    torch.manual_seed(0)
    objective, n = objective_of(parts, 0.05), 4000
    text, image = classify(objective, parts, batch_of(parts, n, size=4))
    observed = {"text only": int((text & ~image).sum()), "image only": int((image & ~text).sum()),
                "both": int((text & image).sum())}
    sigma = (n * 0.05 * 0.95) ** 0.5
    for name, count in observed.items():
        assert abs(count - 0.05 * n) < 4 * sigma, (name, observed)
    off_text, off_image = classify(objective_of(parts, 0.0), parts, batch_of(parts, 200, size=4))
    assert not off_text.any() and not off_image.any()


def test_the_step_denoises_the_edited_image_conditioned_on_the_input_image(parts):
    """Input image latents: the VAE mode, unscaled; target: the noise (epsilon) or the velocity."""
    objective = objective_of(parts, 0.0)
    batch = batch_of(parts, 3)
    noise = torch.randn(3, 4, 4, 4)
    timesteps = torch.tensor([0, 400, 999])
    unet_input, t, _, target = objective.unet_inputs(batch, StepDraws(noise=noise, timesteps=timesteps))
    with torch.no_grad():
        mode = parts.vae.encode(batch.original).latent_dist.mode()
    torch.testing.assert_close(unet_input[:, 4:], mode)
    torch.testing.assert_close(target, noise)
    assert t.tolist() == [0, 400, 999]
    loss_sum, n = objective(batch, StepDraws(noise=noise, timesteps=timesteps))
    assert int(n) == 3 and loss_sum.ndim == 0 and loss_sum.requires_grad
    v = objective_of(parts, 0.0)
    v.noise_scheduler = type(parts.noise_scheduler).from_config(parts.noise_scheduler.config,
                                                                prediction_type="v_prediction")
    torch.manual_seed(1)
    _, _, _, v_target = v.unet_inputs(batch, StepDraws(noise=noise, timesteps=timesteps))
    assert not torch.allclose(v_target, noise)
