"""``mmtune edit``'s sampling: the paper's two-scale guidance as the pipeline applies it, and the sizes it edits at.

The guidance test runs the real pipeline (tiny Stable Diffusion, widened UNet,
the saved scheduler) through the real command line. A hook replaces the UNet's
output with a known prediction per conditioning (instruction + image, image
alone, neither), and the scheduler's ``step`` records what it receives: that
must be ``eps_u + s_I (eps_img - eps_u) + s_T (eps_full - eps_img)`` with the
scales given as ``--text-guidance`` / ``--image-guidance``.
"""

from __future__ import annotations

import pytest
import torch

INSTRUCTION = "make it snowy"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, one_torch_thread):
    """An InstructPix2Pix pipeline of a tiny random Stable Diffusion, built as a run's final/ is."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from mmtune.config.schema import DiffusionModelConfig
    from mmtune.models.diffusion.parts import inference_scheduler_of, open_edit_parts
    from mmtune.models.diffusion.tiny import build_tiny_stable_diffusion

    source = build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd")
    parts = open_edit_parts(DiffusionModelConfig(name=str(source)))
    return StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet.eval(),
        scheduler=inference_scheduler_of(source), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


@pytest.fixture()
def input_png(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def embedding(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0][0]


class KnownPredictions:
    """A UNet forward hook: the prediction of each batch element is ``full`` / ``image`` / ``uncond`` by its
    conditioning (the instruction's or the empty prompt's embedding; the image latents or zeros)."""

    def __init__(self, pipe, latent_shape: tuple[int, ...]) -> None:
        g = torch.Generator().manual_seed(1)
        self.predictions = {name: torch.randn(latent_shape, generator=g) for name in ("full", "image", "uncond")}
        self.prompt, self.null = embedding(pipe, INSTRUCTION), embedding(pipe, "")
        self.seen: list[list[str]] = []

    def conditioning(self, sample: torch.Tensor, text: torch.Tensor) -> str:
        has_image = bool(sample[4:].abs().amax() > 0)
        to_prompt, to_null = (text - self.prompt).abs().amax(), (text - self.null).abs().amax()
        assert min(to_prompt, to_null) < 1e-5, "the text conditioning is neither the instruction nor the empty prompt"
        has_text = bool(to_prompt < to_null)
        name = {(True, True): "full", (False, True): "image", (False, False): "uncond"}.get((has_text, has_image))
        assert name is not None, "the instruction without the image is not one of the paper's conditionings"
        return name

    def __call__(self, module, args, kwargs, output):
        sample, text = args[0], kwargs["encoder_hidden_states"]
        names = [self.conditioning(sample[i], text[i]) for i in range(len(sample))]
        self.seen.append(names)
        return (torch.stack([self.predictions[n] for n in names]),)


def test_the_command_guides_with_text_and_image_scales_as_the_paper(pipeline, input_png, tmp_path, monkeypatch):
    from mmtune import cli
    from mmtune.generation import edit

    s_text, s_image = 5.0, 2.0  # distinct: swapping them must change the result
    known = KnownPredictions(pipeline, (4, 16, 16))  # the VAE halves 32 px
    received = []
    step = pipeline.scheduler.step

    def recording_step(model_output, *args, **kwargs):
        received.append(model_output.detach().clone())
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(edit, "open_editor", lambda model, device: pipeline)
    monkeypatch.setattr(pipeline.scheduler, "step", recording_step)
    hook = pipeline.unet.register_forward_hook(known, with_kwargs=True)
    try:
        code = cli.main(["edit", "--model", "ignored", "--image", str(input_png), INSTRUCTION, "--steps", "3",
                         "--text-guidance", str(s_text), "--image-guidance", str(s_image),
                         "--out", str(tmp_path / "out.png")])
    finally:
        hook.remove()
    assert code == 0
    assert len(received) == 3 and all(sorted(names) == ["full", "image", "uncond"] for names in known.seen)
    e = known.predictions
    paper = e["uncond"] + s_image * (e["image"] - e["uncond"]) + s_text * (e["full"] - e["image"])
    swapped = e["uncond"] + s_text * (e["image"] - e["uncond"]) + s_image * (e["full"] - e["image"])
    for got in received:
        assert torch.allclose(got[0], paper, atol=1e-5)
        assert not torch.allclose(got[0], swapped, atol=1e-2)


def test_guidance_the_pipeline_would_not_apply_is_refused_in_one_line():
    from mmtune.errors import ConfigError
    from mmtune.generation.edit import EditOptions

    EditOptions().check()
    EditOptions(text_guidance=1, image_guidance=1).check()  # the formula's own unguided case
    for text, image in [(1.0, 1.5), (7.5, 0.5), (0.5, 0.5)]:
        with pytest.raises(ConfigError) as err:
            EditOptions(text_guidance=text, image_guidance=image).check()
        assert "\n" not in str(err.value) and "guidance" in str(err.value)
    with pytest.raises(ConfigError):
        EditOptions(steps=0).check()


@pytest.mark.parametrize("size, resolution, factor", [((45, 37), None, 8), ((45, 37), 40, 2), ((30, 64), 32, 8),
                                                       ((64, 64), None, 2)])
def test_the_edit_size_is_the_image_s_or_the_asked_longer_side_rounded_to_the_vae_factor(size, resolution, factor):
    from PIL import Image

    from mmtune.generation.edit import fit_image

    width, height = size
    if resolution is not None:
        scale = resolution / max(size)
        width, height = round(width * scale), round(height * scale)
    out = fit_image(Image.new("RGB", size), resolution, factor)
    assert out.size == (width - width % factor, height - height % factor)
    assert max(out.size) <= (resolution or max(size))


def test_an_image_smaller_than_the_vae_factor_is_one_line():
    from PIL import Image

    from mmtune.errors import DataError
    from mmtune.generation.edit import fit_image

    with pytest.raises(DataError, match="too small"):
        fit_image(Image.new("RGB", (7, 40)), None, 8)
