"""A new modality is one module: defined here (a 1-D signal read from .npy files, tag <tone>) and registered,
it goes through the same data, batch, model and generation code as images, in the same conversation, and has
its ``mmtune chat --tone`` flag, its ``tones`` field in ``mmtune generate`` prompt files and its ``tone_url``
content part in ``mmtune serve`` requests.

Nothing of mmtune is edited for it: the test only adds it to the registry (the one line a real modality
module adds in ``mmtune/modalities/__init__.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import open_clip_image_branch
from torch import nn

from mmtune.config.media import BranchConfig
from mmtune.data.formats import BadRow
from mmtune.errors import ConfigError
from mmtune.modalities import MODALITIES
from mmtune.modalities.base import MediaProblem, Modality
from mmtune.models.multimodal.encoders import MediaEncoder


class ToneBranchConfig(BranchConfig):
    samples: int = 64
    """Samples per item: longer signals are cut, shorter ones padded with zeros."""


class ToneModality(Modality):
    name = "tone"
    tag = "<tone>"
    placeholder_id = -299
    plural = "tones"
    openai_part = "tone_url"
    branch_config = ToneBranchConfig

    def check(self, path: Path) -> None:
        try:
            np.load(path, mmap_mode="r")  # the header only
        except (OSError, ValueError) as exc:
            raise MediaProblem("unreadable tone", f"cannot read tone {path}: {exc}") from None

    def load(self, path, options):
        return np.load(path)

    def transform(self, branch: ToneBranchConfig, encoder, *, train=False):
        return FitLength(branch.samples)


class FitLength:
    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __call__(self, signal: np.ndarray) -> torch.Tensor:
        out = np.zeros(self.samples, np.float32)
        out[: min(len(signal), self.samples)] = signal[: self.samples]
        return torch.from_numpy(out)


class ToneConv(MediaEncoder):
    """[B, 64] signals -> 8 frames of 16 samples -> [B, 8, width]."""

    def __init__(self, width: int = 12):
        super().__init__(hidden_size=width, num_tokens=8)
        self.frame = nn.Linear(8, width)

    def forward(self, values):
        return self.frame(values.reshape(len(values), 8, 8))


@pytest.fixture()
def tone(monkeypatch, tmp_path):
    monkeypatch.setitem(MODALITIES, "tone", ToneModality())
    np.save(tmp_path / "beep.npy", np.sin(np.arange(100) / 3.0).astype(np.float32))
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    return tmp_path


def conversation() -> list[dict]:
    return [{"role": "user", "content": "<tone> Which sound, and <image> which colour?", "media": [
                {"modality": "tone", "ref": "beep.npy", "field": "audio"},
                {"modality": "image", "ref": "red.png", "field": "image"}]},
            {"role": "assistant", "content": "A beep and red."}]


def with_two_branches(llm_dir: Path):
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.multimodal.build import attach_branches, build_branch
    from mmtune.models.open import open_branches

    torch.manual_seed(0)
    llm = load_causal_lm(ModelConfig(name=str(llm_dir)))
    width = llm.config.hidden_size
    branches = {**open_branches({"image": open_clip_image_branch()}, width),
                "tone": build_branch("tone", ToneBranchConfig(), width, encoder=ToneConv())}
    return attach_branches(llm, branches)


@pytest.fixture()
def two_branch_model(tone, tiny_llama_dir):
    return with_two_branches(tiny_llama_dir)


def test_a_registered_modality_flows_from_conversation_to_loss_and_gradients(two_branch_model, tokenizer, tone):
    from mmtune.data.media import media_items_of, media_slots, media_tags
    from mmtune.data.packing import Collator
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments
    from mmtune.training.objective import CausalLMObjective

    model = two_branch_model
    specs = model.media_specs(tokenizer)
    items = media_items_of(conversation(), specs, root=tone, where="row 1")
    assert [i.modality for i in items] == ["tone", "image"]  # tag order
    assert items[0].origin == "row 1: field 'audio'" and items[0].instruction == "Which sound, and which colour?"
    enc = encode_segments(tokenizer, [split_segments(tokenizer, conversation())], max_length=512,
                          media=[media_slots(items, specs)], tags=media_tags(specs))[0]
    assert (enc.input_ids == -299).sum() == 8 and (enc.input_ids == -200).sum() == 16

    class Samples(list):
        def media(self, k):
            return items

    batch = Collator(Samples([(enc.input_ids, enc.trained)]), pad_id=0, media=specs)([[0]])
    assert batch.media["tone"].values.shape == (1, 64) and batch.media["image"].values.shape == (1, 3, 32, 32)
    loss, n = CausalLMObjective(model)(batch)
    loss.backward()
    for name in ("tone", "image"):
        assert model.branches[name].connector.layers[0].weight.grad.abs().sum() > 0, name
    # each modality's positions hold its own branch's output
    embeds = model.input_embeddings(batch.input_ids, batch.media)
    tone_out = model.branches["tone"](batch.media["tone"])
    torch.testing.assert_close(embeds[0][batch.input_ids[0] == -299], tone_out[0])


def test_a_registered_modality_decodes_through_the_one_generation_loop(two_branch_model, tokenizer, tone):
    from mmtune.generation.chat import generate_reply
    from mmtune.generation.options import GenerationOptions

    question = conversation()[:1]
    question[0]["media"] = [{**m, "ref": str(tone / m["ref"])} for m in question[0]["media"]]
    reply = generate_reply(two_branch_model, tokenizer, question, GenerationOptions(max_new_tokens=3))
    assert isinstance(reply, str)


def test_a_registered_modality_reports_its_own_problems(two_branch_model, tokenizer, tone):
    from mmtune.data.media import media_items_of

    specs = two_branch_model.media_specs(tokenizer)
    (tone / "bad.npy").write_bytes(b"not numpy")
    bad = conversation()
    bad[0]["media"][0]["ref"] = "bad.npy"
    with pytest.raises(BadRow) as err:
        media_items_of(bad, specs, root=tone, where="row 3")
    assert (err.value.reason, err.value.field_name) == ("unreadable tone", "audio")
    missing_tag = conversation()
    missing_tag[0]["content"] = "Which colour? <image>"
    with pytest.raises(BadRow, match="0 <tone> tag\\(s\\) in the text but 1 tones"):
        media_items_of(missing_tag, specs, root=tone, where="row 4")
    with pytest.raises(ConfigError, match="has tones but the model has no tone branch"):
        media_items_of(conversation(), {"image": specs["image"]}, root=tone, where="row 5", dataset="sounds")


@pytest.fixture()
def commands_use(monkeypatch, tone, varied_llama_dirs, tokenizer):
    """``mmtune chat`` / ``generate`` with a two-branch model, whatever ``--model`` says (it cannot be saved: its
    tone encoder is this file's); its LLM's greedy choices are varied, so replies are not empty."""
    import mmtune.generation.commands as commands

    model = with_two_branches(varied_llama_dirs[0])
    monkeypatch.setattr(commands, "load_model_or_proxy", lambda args, name: (model, tokenizer))
    return model


def _reply(model, tokenizer, tone, media=("image", "tone")) -> str:
    from mmtune.data.media import attach_media
    from mmtune.generation.chat import generate_reply
    from mmtune.generation.options import GenerationOptions

    files = {"image": str(tone / "red.png"), "tone": str(tone / "beep.npy")}
    ask = attach_media([{"role": "user", "content": "Which sound?"}], [(name, files[name]) for name in media])
    reply = generate_reply(model, tokenizer, ask, GenerationOptions(max_new_tokens=4))
    assert reply.strip()  # something to compare
    return reply


def test_a_registered_modality_has_its_chat_flag(commands_use, tokenizer, tone, capsys):
    from mmtune.cli import _parser, main

    chat = _parser().parse_args(["chat", "--model", "m", "--tone", "a.npy", "--image", "b.png", "--tone", "c.npy"])
    assert (chat.tone, chat.image, chat.video, chat.audio) == (["a.npy", "c.npy"], ["b.png"], [], [])
    capsys.readouterr()
    assert main(["chat", "--model", "m", "--tone", str(tone / "beep.npy"), "--image", str(tone / "red.png"),
                 "--max-new-tokens", "4", "Which sound?"]) == 0
    reply = capsys.readouterr().out.strip()
    assert reply == _reply(commands_use, tokenizer, tone) != _reply(commands_use, tokenizer, tone, ("image",))


def test_a_registered_modality_has_its_generate_field(commands_use, tokenizer, tone, capsys):
    import json

    from mmtune.cli import main

    prompts = tone / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "Which sound?", "tones": ["beep.npy"], "images": ["red.png"]})
                       + "\n" + json.dumps({"prompt": "And?", "tones": ["gone.npy"]}) + "\n")
    assert main(["generate", "--model", "m", "--prompts", str(prompts), "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{prompts}:2: field 'tones': cannot read tone" in err and "gone.npy" in err
    prompts.write_text(prompts.read_text().splitlines()[0] + "\n")
    assert main(["generate", "--model", "m", "--prompts", str(prompts), "--max-new-tokens", "4"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == {"id": 1, "prompt": "Which sound?", "output": _reply(commands_use, tokenizer, tone)}


def test_a_registered_modality_has_its_serve_content_part(two_branch_model, tokenizer, tone, tmp_path):
    import base64

    from mmtune.generation.chat import generate_reply
    from mmtune.generation.options import GenerationOptions
    from mmtune.serving.requests import parse_request, to_job

    beep = base64.b64encode((tone / "beep.npy").read_bytes()).decode()
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "tone_url", "tone_url": {"url": f"data:application/octet-stream;base64,{beep}"}},
        {"type": "text", "text": "Which sound?"}]}]}
    opts = GenerationOptions(max_new_tokens=3)
    job = to_job(parse_request(body), opts, two_branch_model.media_specs(tokenizer), tmp_path, None, 2)
    (entry,) = job.conversation[0]["media"]
    assert job.conversation[0]["content"] == "<tone>\nWhich sound?" and entry["modality"] == "tone"
    assert np.array_equal(np.load(entry["ref"]), np.load(tone / "beep.npy"))
    asked = [{"role": "user", "content": "<tone>\nWhich sound?", "media": [
        {"modality": "tone", "ref": str(tone / "beep.npy"), "field": "tone"}]}]
    assert generate_reply(two_branch_model, tokenizer, job.conversation, opts) == \
        generate_reply(two_branch_model, tokenizer, asked, opts)
