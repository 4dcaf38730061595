"""``mmtune serve`` through the ``openai`` client: the server runs on a free local port (in a thread, started once
for the module) with a tiny random multimodal model; replies are compared with ``mmtune chat``'s code path
(``generate_reply``) on the same model object, so they must be token for token the same.

One more server runs as the real command (``python -m mmtune.cli serve``, a subprocess) with proxy tuning and
an API key.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from media_helpers import open_clip_image_branch
from serve_helpers import free_port, running

from mmtune.data.media import attach_media
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.serving.app import create_app
from mmtune.serving.options import ServeOptions
from mmtune.serving.worker import visible_text

NAME = "tiny-mm"


@pytest.fixture(scope="module")
def served(varied_llama_dirs, tmp_path_factory, one_torch_thread):
    """``(client, base URL, model, tokenizer, media root, app)`` of a server of a tiny image model."""
    from PIL import Image

    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm, load_tokenizer
    from mmtune.models.open import open_multimodal

    root = tmp_path_factory.mktemp("media")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "red.png")
    Image.new("RGB", (24, 48), (10, 10, 200)).save(root / "blue.png")
    torch.manual_seed(0)
    llm_dir = str(varied_llama_dirs[0])
    model = open_multimodal({"image": open_clip_image_branch()}, load_causal_lm(ModelConfig(name=llm_dir))).eval()
    tokenizer = load_tokenizer(ModelConfig(name=llm_dir))
    options = ServeOptions(media_root=root, max_media_items=2, max_request_bytes=256 * 1024, batch_wait_ms=200)
    app = create_app(model, tokenizer, NAME, options, GenerationOptions(max_new_tokens=12))
    with running(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), url, model, tokenizer, root, app


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def image_question(url: str, text: str = "What colour is it?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


def chat_reply(model, tokenizer, text: str, images=(), **opts) -> str:
    """What ``mmtune chat --image ... 'text'`` answers (its code path, same model object)."""
    conv = attach_media([{"role": "user", "content": text}], [("image", str(p)) for p in images])
    return generate_reply(model, tokenizer, conv, GenerationOptions(**{"max_new_tokens": 12, **opts}))


def test_models_lists_the_served_name_and_its_media(served):
    client, *_ = served
    (listed,) = client.models.list().data
    assert listed.id == NAME and listed.model_extra["media"] == ["image"]


def test_greedy_replies_equal_mmtune_chats_for_text_an_image_and_a_path_under_the_media_root(served):
    client, _, model, tokenizer, root, _ = served
    text = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Name three fruits."}])
    expected = chat_reply(model, tokenizer, "Name three fruits.")
    assert expected and text.choices[0].message.content == expected
    assert text.usage.completion_tokens >= 1 and text.usage.prompt_tokens > 5
    with_image = client.chat.completions.create(model=NAME, messages=image_question(data_url(root / "red.png")))
    expected_image = chat_reply(model, tokenizer, "What colour is it?", [root / "red.png"])
    assert with_image.choices[0].message.content == expected_image
    by_path = client.chat.completions.create(model=NAME, messages=image_question("file://" + str(root / "blue.png")))
    assert by_path.choices[0].message.content == chat_reply(model, tokenizer, "What colour is it?", [root / "blue.png"])
    assert expected_image != by_path.choices[0].message.content  # the image reaches the model


def test_streamed_pieces_add_up_to_the_reply_with_finish_reason_and_usage(served):
    client, _, model, tokenizer, root, _ = served
    chunks = list(client.chat.completions.create(model=NAME, messages=image_question(data_url(root / "red.png")),
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == chat_reply(model, tokenizer, "What colour is it?", [root / "red.png"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(pieces)


def test_max_tokens_stop_and_seed_are_honoured(served):
    client, _, model, tokenizer, *_ = served
    ask = [{"role": "user", "content": "Tell me a story."}]
    short = client.chat.completions.create(model=NAME, messages=ask, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == chat_reply(model, tokenizer, "Tell me a story.", max_new_tokens=3)
    full = chat_reply(model, tokenizer, "Tell me a story.")
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = client.chat.completions.create(model=NAME, messages=ask, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)].strip() and cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model=NAME, messages=ask, temperature=1.5, seed=seed, top_p=0.9)
               .choices[0].message.content for seed in (3, 4)]
    assert sampled[0] == chat_reply(model, tokenizer, "Tell me a story.", temperature=1.5, seed=3, top_p=0.9)
    assert sampled[1] == chat_reply(model, tokenizer, "Tell me a story.", temperature=1.5, seed=4, top_p=0.9)
    assert sampled[0] != sampled[1]


def test_concurrent_requests_are_decoded_in_one_batch_and_each_gets_its_own_reply(served):
    client, _, model, tokenizer, _, app = served
    prompts = ["Hi.", "What is two plus two?", "Write a haiku about the sea.", "Why?"]
    replies: dict[str, str] = {}
    before = len(app.state.service.worker.batch_sizes)

    def ask(prompt: str) -> None:
        replies[prompt] = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": prompt}]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(app.state.service.worker.batch_sizes[before:]) > 1  # the worker waited 200 ms for companions
    assert replies == {p: chat_reply(model, tokenizer, p) for p in prompts}


def test_stop_strings_are_held_back_while_they_may_still_match():
    assert visible_text("Hello wor", ["world"], final=False) == ("Hello", False)
    assert visible_text("Hello world!", ["world"], final=False) == ("Hello", True)
    assert visible_text("  Hi there ", [], final=False) == ("Hi there", False)
    assert visible_text("Hi \ufffd", [], final=False) == ("Hi", False)


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as err:
        call()
    return err.value.status_code, err.value.body


@pytest.mark.parametrize("case, status, param, code", [
    ("unknown model", 404, "model", "model_not_found"),
    ("audio to an image model", 400, "messages[0].content[0]", "unsupported_media"),
    ("image that does not decode", 400, "messages[0].content[0]", "invalid_image"),
    ("path outside the media root", 400, "messages[0].content[0]", "path_not_allowed"),
    ("prompt longer than the context", 400, "messages", "context_length_exceeded"),
    ("n > 1", 400, "n", "unsupported_value"),
    ("too many media items", 400, "messages", "too_many_media_items"),
    ("request too large", 413, None, "request_too_large"),
    ("unknown argument", 400, "tools", "unsupported_parameter"),
])
def test_bad_requests_get_openai_error_bodies(served, case, status, param, code):
    client, _, _, _, root, _ = served
    red = data_url(root / "red.png")
    kwargs = {
        "unknown model": {"model": "gpt-4o"},
        "audio to an image model": {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]},
        "image that does not decode": {"messages": image_question(
            "data:image/png;base64," + base64.b64encode(b"not a png at all").decode())},
        "path outside the media root": {"messages": image_question("file:///etc/hostname")},
        "prompt longer than the context": {"messages": [{"role": "user", "content": "hello " * 1100}]},
        "n > 1": {"n": 2},
        "too many media items": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": red}}] * 3}]},
        "request too large": {"messages": [{"role": "user", "content": "x" * 300_000}]},
        "unknown argument": {"tools": [{"type": "function", "function": {"name": "f"}}]},
    }[case]
    call = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}]} | kwargs
    got_status, body = _error(lambda: client.chat.completions.create(**call))
    assert (got_status, body["param"], body["code"]) == (status, param, code)
    assert body["type"] and body["message"] and "Traceback" not in body["message"]


def test_malformed_json_and_unknown_routes_are_openai_errors_too(served):
    _, url, *_ = served
    res = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json"
    res = httpx.get(f"{url}/v1/nothing")
    assert res.status_code == 404 and res.json()["error"]["type"] == "not_found_error"


def test_the_command_serves_a_proxy_combination_behind_an_api_key(varied_llama_dirs, tmp_path):
    from mmtune.generation.proxy import load_proxy

    base, expert, anti = map(str, varied_llama_dirs)
    port = free_port()
    env = {**os.environ, "MMTUNE_API_KEY": "s3cret", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [sys.executable, "-m", "mmtune.cli", "serve", base, "--port", str(port), "--served-name", "proxy",
           "--proxy-expert", expert, "--proxy-antiexpert", anti, "--max-new-tokens", "8"]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0)
        reply = client.chat.completions.create(model="proxy", messages=[{"role": "user", "content": "Hello!"}])
        proxy, tokenizer = load_proxy(base, expert, anti)
        assert reply.choices[0].message.content == generate_reply(
            proxy, tokenizer, [{"role": "user", "content": "Hello!"}], GenerationOptions(max_new_tokens=8))
        status, body = _error(lambda: client.chat.completions.create(model="proxy", messages=image_question(
            "data:image/png;base64,AAAA")))
        assert (status, body["code"]) == (400, "unsupported_media")  # proxy tuning takes text only
        wrong_key = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="guess", max_retries=0)
        status, body = _error(lambda: wrong_key.models.list())
        assert (status, body["code"]) == (401, "invalid_api_key")
    finally:
        server.terminate()
        server.wait(timeout=30)


TINY_QFORMER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "cross_attention_frequency": 1}
AST_TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "num_mel_bins": 128, "max_length": 204}


def test_video_url_and_input_audio_parts_reach_the_model_as_chats_video_and_audio(varied_llama_dirs, tmp_path,
                                                                                   one_torch_thread):
    """vLLM's part types: ``video_url`` (a data URL of an mp4) and ``input_audio`` (base64 WAV)."""
    from media_helpers import HF_CLIP_TINY, write_video, write_wav

    from mmtune.config.loader import validate_recipe
    from mmtune.models.loading import load_causal_lm, load_tokenizer
    from mmtune.models.open import open_multimodal

    video = {"encoder": {"kind": "hf", "architecture": HF_CLIP_TINY, "select_layer": -1},
             "pieces": {"pool": {"kind": "spatial_pool", "options": {"stride": 2}}},
             "connector": {"kind": "mlp2x_gelu"}, "frames": {"mode": "fps", "fps": 4, "max_frames": 8}}
    audio = {"encoder": {"kind": "ast", "name": "imagebind_huge_audio", "pretrained": None, "architecture": AST_TINY,
                         "select_layer": -1, "select_feature": "cls"},
             "connector": {"kind": "qformer", "options": {"num_query_tokens": 2, "instruction_aware": False,
                                                          "qformer": TINY_QFORMER}},
             "clips": 2, "clip_seconds": 1.0}
    cfg = validate_recipe({"model": {"name": str(varied_llama_dirs[2]), "media": {"video": video, "audio": audio}}})
    torch.manual_seed(0)
    model = open_multimodal(cfg.model.branches(), load_causal_lm(cfg.model)).eval()
    tokenizer = load_tokenizer(cfg.model)
    clip, sound = write_video(tmp_path / "clip.mp4", frames=8, fps=8), write_wav(tmp_path / "tone.wav", 1.5)
    question = "What happens, and what do you hear?"
    parts = [{"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}},
             {"type": "input_audio", "input_audio": {"data": base64.b64encode(sound.read_bytes()).decode(),
                                                     "format": "wav"}},
             {"type": "text", "text": question}]
    conv = attach_media([{"role": "user", "content": question}], [("video", str(clip)), ("audio", str(sound))])
    expected = generate_reply(model, tokenizer, conv, GenerationOptions(max_new_tokens=10))
    with running(create_app(model, tokenizer, "av", defaults=GenerationOptions(max_new_tokens=10))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="av", messages=[{"role": "user", "content": parts}])
        assert expected and reply.choices[0].message.content == expected
        status, body = _error(lambda: client.chat.completions.create(model="av", messages=image_question(
            data_url(sound, "audio/wav"))))
        assert (status, body["code"]) == (400, "unsupported_media")  # no image branch


@pytest.mark.parametrize("flags, message", [
    (["--media-root", "/no/such/folder"], "--media-root /no/such/folder: not a folder"),
    (["--max-batch-size", "0"], "--max-batch-size must be >= 1, got 0"),
    (["--proxy-expert", "x"], "proxy tuning needs both --proxy-expert and --proxy-antiexpert"),
])
def test_bad_serve_flags_are_one_line_before_any_model_loads(flags, message, capsys):
    from mmtune.cli import main

    assert main(["serve", "no-such-model", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"mmtune: error: {message}"


def test_an_image_broken_past_its_header_fails_alone_and_its_batch_companion_is_answered(served, tmp_path):
    """The header check passes it; decoding, in the worker, does not: that request gets a 400, the other one,
    sent at the same moment (the worker waits 200 ms for companions, so they usually share a batch), its reply."""
    import numpy as np
    from PIL import Image

    client, _, model, tokenizer, root, app = served
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.jpg")
    raw = (tmp_path / "f.jpg").read_bytes()
    broken = "data:image/jpeg;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()
    outcome: dict[str, object] = {}

    def good() -> None:
        outcome["good"] = client.chat.completions.create(
            model=NAME, messages=image_question(data_url(root / "red.png"))).choices[0].message.content

    def bad() -> None:
        outcome["bad"] = _error(lambda: client.chat.completions.create(model=NAME, messages=image_question(broken)))

    before = len(app.state.service.worker.batch_sizes)
    threads = [threading.Thread(target=good), threading.Thread(target=bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome["good"] == chat_reply(model, tokenizer, "What colour is it?", [root / "red.png"])
    status, body = outcome["bad"]
    assert (status, body["code"]) == (400, "invalid_media") and "image" in body["message"]
    assert app.state.service.worker.batch_sizes[before:] == [1]  # only the good row decoded, batch shared or not
