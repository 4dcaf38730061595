"""Video and audio end to end on the tiny Llama: packed rows give the same loss and gradients as unpacked ones
(a video Q-Former with the video's sound track through the audio branch; a per-frame projector whose token
count follows each video's frames), resume is exact, a run reloads and answers about a video, evaluation reads
video data, and bad files are one line or a counted skip.

Tiny random encoders (transformers CLIP per frame, AST per clip), tiny Q-Formers, short clips written here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from media_helpers import HF_CLIP_TINY, losses_by_step, write_json, write_video, write_wav

import mmtune
from mmtune.data.media import attach_media
from mmtune.errors import DataError
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.modalities.audio import AUDIO_PLACEHOLDER_ID
from mmtune.modalities.video import VIDEO_PLACEHOLDER_ID
from mmtune.models.run_outputs import load_for_inference

TINY_QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "cross_attention_frequency": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
AST_TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "num_mel_bins": 128, "max_length": 204, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def video_llama_branch(**extra) -> dict:
    """Video-LLaMA's VL branch in miniature: per-frame encoder + Q-Former piece, frame positions, video Q-Former."""
    return {
        "encoder": {"kind": "hf", "architecture": HF_CLIP_TINY, "select_layer": -1, "select_feature": "cls_patch"},
        "pieces": {"frame_qformer": {"kind": "qformer", "options": {"num_query_tokens": 3, "qformer": TINY_QFORMER}},
                   "frame_position": {"kind": "segment_position", "options": {"max_segments": 8}}},
        "connector": {"kind": "qformer", "options": {"num_query_tokens": 4, "instruction_aware": False,
                                                     "qformer": TINY_QFORMER}},
        "frames": {"mode": "uniform", "num_frames": 4},
        **extra,
    }


def audio_branch(**extra) -> dict:
    return {
        "encoder": {"kind": "ast", "name": "imagebind_huge_audio", "pretrained": None, "architecture": AST_TINY,
                    "select_layer": -1, "select_feature": "cls"},
        "pieces": {"clip_position": {"kind": "segment_position", "options": {"max_segments": 4}}},
        "connector": {"kind": "qformer", "options": {"num_query_tokens": 2, "instruction_aware": False,
                                                     "qformer": TINY_QFORMER}},
        "clips": 2, "clip_seconds": 1.0,
        **extra,
    }


@pytest.fixture()
def clips(tmp_path):
    """Four 1-s videos with sound (8 frames at 8 fps), two of 0.5 s, two WAVs."""
    root = tmp_path / "media"
    for i in range(4):
        write_video(root / f"v{i}.mp4", frames=8, fps=8, tone=300.0 + 100 * i, seed=i)
    for i in range(2):
        write_video(root / f"short{i}.mp4", frames=4, fps=8, tone=500.0, seed=10 + i)
        write_wav(root / f"a{i}.wav", 1.5, freq=220.0 * (i + 1))
    return root


def video_rows(n: int = 8, field: str = "video", names=("v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4")) -> list[dict]:
    tag = f"<{field}>"
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"{tag}\nWhat happens in clip {i % len(names)}?"},
                 {"from": "gpt", "value": f"colour {i % len(names)} then more"}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "And after that?"}, {"from": "gpt", "value": f"nothing {i}"}]
        rows.append({"id": str(i), field: names[i % len(names)], "conversations": turns})
    return rows


def recipe_for(tiny_recipe, tmp_path, data, media: dict, out: str) -> dict:
    recipe = tiny_recipe()
    recipe["output_dir"] = str(tmp_path / out)
    recipe["model"]["media"] = media
    recipe["data"]["datasets"] = [{"path": str(data), "format": "llava", "media_folder": str(tmp_path / "media")}]
    recipe["data"]["num_workers"] = 1
    recipe["method"] = {"name": "lora", "media": {name: {"encoder": {"trainable": "full"}} for name in media}}
    recipe["train"].update(max_steps=6, micro_batch_size=2, lr=5e-3, warmup_steps=0, scheduler="constant")
    return recipe


def _packed_vs_unpacked(model, tokenizer, data_cfg, names: list[str]):
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.training.objective import CausalLMObjective

    specs = model.media_specs(tokenizer)
    data = build_conversation_data(tokenizer, data_cfg, seed=0, media=specs)
    objective = CausalLMObjective(model)
    collate = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)
    results = []
    for packing in (True, False):
        rows = make_rows(data.train.lengths(), 512, packing)
        objective.zero_grad()
        total, count = torch.zeros(()), 0
        for i in range(0, len(rows), 3):
            batch = collate(rows[i : i + 3])
            assert not batch.problems
            loss, n = objective(batch)
            loss.backward()
            total += loss.detach()
            count += int(n)
        grads = [p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None
                 and any(f"branches.{m}." in name for m in names)]
        results.append((total / count, grads, len(rows)))
    (packed, g_packed, n_packed), (plain, g_plain, n_plain) = results
    assert n_packed < n_plain
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    assert len(g_packed) == len(g_plain) > 4
    for a, b in zip(g_packed, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    return data


def _tiny_multimodal(tiny_llama_dir, media: dict):
    from mmtune.config.loader import validate_recipe
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    cfg = validate_recipe({"model": {"name": str(tiny_llama_dir), "media": media}})
    torch.manual_seed(0)
    llm = load_causal_lm(cfg.model)
    model = open_multimodal(cfg.model.branches(), llm)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def test_video_with_its_sound_track_packed_equals_unpacked(tiny_llama_dir, tokenizer, clips, tmp_path):
    from mmtune.config.schema import DataConfig

    model = _tiny_multimodal(tiny_llama_dir, {"video": video_llama_branch(use_audio_in_video=True),
                                              "audio": audio_branch()})
    data_path = write_json(tmp_path / "d.json", video_rows())
    cfg = DataConfig(datasets=[{"path": str(data_path), "format": "llava", "media_folder": str(clips)}],
                     max_length=512, val_fraction=0.0, packing=True)
    data = _packed_vs_unpacked(model, tokenizer, cfg, ["video", "audio"])
    ids = data.train[0][0].tolist()
    video = [i for i, t in enumerate(ids) if t == VIDEO_PLACEHOLDER_ID]
    audio = [i for i, t in enumerate(ids) if t == AUDIO_PLACEHOLDER_ID]
    assert len(video) == 4 and len(audio) == 2 and audio[0] == video[-1] + 1  # the sound follows its video


def test_audio_items_packed_equal_unpacked(tiny_llama_dir, tokenizer, clips, tmp_path):
    from mmtune.config.schema import DataConfig

    model = _tiny_multimodal(tiny_llama_dir, {"audio": audio_branch()})
    data_path = write_json(tmp_path / "d.json", video_rows(field="audio", names=("a0.wav", "a1.wav", "v2.mp4")))
    cfg = DataConfig(datasets=[{"path": str(data_path), "format": "llava", "media_folder": str(clips)}],
                     max_length=512, val_fraction=0.0, packing=True)
    _packed_vs_unpacked(model, tokenizer, cfg, ["audio"])


def test_a_per_frame_projector_counts_each_videos_frames_and_packs_exactly(tiny_llama_dir, tokenizer, clips, tmp_path):
    """fps sampling: a 1-s clip gives 4 frames, a 0.5-s clip 2, each 4 pooled patches -> 16 and 8 positions."""
    from mmtune.config.schema import DataConfig

    branch = {"encoder": {"kind": "hf", "architecture": HF_CLIP_TINY, "select_layer": -1},
              "pieces": {"pool": {"kind": "spatial_pool", "options": {"stride": 2}}},
              "connector": {"kind": "mlp2x_gelu"}, "frames": {"mode": "fps", "fps": 4, "max_frames": 8}}
    model = _tiny_multimodal(tiny_llama_dir, {"video": branch})
    data_path = write_json(tmp_path / "d.json", video_rows(names=("v0.mp4", "short0.mp4", "v1.mp4", "short1.mp4")))
    cfg = DataConfig(datasets=[{"path": str(data_path), "format": "llava", "media_folder": str(clips)}],
                     max_length=512, val_fraction=0.0, packing=True)
    data = _packed_vs_unpacked(model, tokenizer, cfg, ["video"])
    counts = sorted({int((data.train[i][0] == VIDEO_PLACEHOLDER_ID).sum()) for i in range(len(data.train))})
    assert counts == [8, 16]


def test_video_resume_matches_an_uninterrupted_run_and_the_run_answers_about_a_video(tiny_recipe, clips, tmp_path):
    data = write_json(tmp_path / "d.json", video_rows())
    media = {"video": video_llama_branch(train_frames={"mode": "headtail", "num_frames": 4})}
    full = recipe_for(tiny_recipe, tmp_path, data, media, "full")
    result = mmtune.train(full)
    part = recipe_for(tiny_recipe, tmp_path, data, media, "part")
    part["train"].update(max_steps=3, save_every=3)
    mmtune.train(part)
    part["train"].update(max_steps=6, resume="auto")
    mmtune.train(part)
    losses = losses_by_step(tmp_path / "full")
    assert losses_by_step(tmp_path / "part")[3:] == pytest.approx(losses[3:], abs=1e-6)

    model, tok = load_for_inference(str(result.run_dir))
    assert set(model.branches) == {"video"} and model.branches["video"].num_tokens == 4
    ask = attach_media([{"role": "user", "content": "What happens?"}], [("video", str(clips / "v0.mp4"))])
    reply = generate_reply(model, tok, ask, GenerationOptions(max_new_tokens=3))
    assert isinstance(reply, str)
    cli = subprocess.run([sys.executable, "-m", "mmtune.cli", "chat", "--model", str(result.run_dir), "--video",
                          str(clips / "v0.mp4"), "--max-new-tokens", "3", "What happens?"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.strip() == reply.strip()

    card = tmp_path / "card.yaml"
    card.write_text(f"path: {data}\nformat: llava\nmedia_folder: {clips}\n")
    out = tmp_path / "eval.json"
    ev = subprocess.run([sys.executable, "-m", "mmtune.cli", "eval", str(result.run_dir), "--data", str(card),
                         "--metric", "exact", "--out", str(out), "--max-new-tokens", "3"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["metrics"]["exact"]["count"] == 8


def test_bad_videos_are_one_line_or_a_counted_skip(tiny_recipe, clips, tmp_path):
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    rows = video_rows(6) + [
        {"id": "bad", "video": "broken.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                                               {"from": "gpt", "value": "x"}]},
        {"id": "short", "video": "short0.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                                                 {"from": "gpt", "value": "y"}]},
    ]
    data = write_json(tmp_path / "d.json", rows)
    media = {"video": video_llama_branch(frames={"mode": "uniform", "num_frames": 6})}
    recipe = recipe_for(tiny_recipe, tmp_path, data, media, "strict")
    with pytest.raises(DataError) as err:
        mmtune.train(recipe)
    line = str(err.value)
    assert "\n" not in line and "d.json" in line and "field 'video'" in line and "broken.mp4" in line

    recipe = recipe_for(tiny_recipe, tmp_path, data, media, "skip")
    recipe["data"]["on_bad_sample"] = "skip"
    recipe["train"]["max_steps"] = 1
    result = mmtune.train(recipe)
    log = (result.run_dir / "train.log").read_text()
    assert "unreadable video" in log and "video too short" in log  # counted at tokenization, by reason
