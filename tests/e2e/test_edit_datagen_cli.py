"""``mmtune data generate edits`` end to end on tiny random models: the real LLM sampler, Stable Diffusion and CLIP.

A tiny random Llama writes the edit text of the captions that come without
one (it never writes the two labelled lines, so each of its answers is counted
as dropped); the captions with a given edit go on to Prompt-to-Prompt and the
CLIP filter. Then the one-line errors for missing inputs and changed settings.
"""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from mmtune.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from mmtune.datagen.edits.tiny import write_tiny_open_clip

    return write_tiny_open_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


def test_generate_edits_cli(tmp_path, tiny_llama_dir, tiny_sd_dir, tiny_clip_dir, capsys):
    captions = write_jsonl(tmp_path / "captions.jsonl", [
        {"caption": "a red barn in a green field", "edit": "make it winter", "output": "a red barn in a snowy field"},
        {"caption": "a bowl of fresh strawberries"},
        {"caption": "a photo of a cat", "edit": "make the cat black", "output": "a photo of a black cat"},
        {"caption": "a lighthouse on a rocky coast"},
    ])
    out = tmp_path / "edits"
    flags = ["--captions", str(captions), "--out", str(out), "--llm", str(tiny_llama_dir), "--sd", str(tiny_sd_dir),
             "--clip", str(tiny_clip_dir), "--steps", "2", "--resolution", "32", "--samples", "3", "--keep", "2",
             "--min-caption-sim", "-1", "--min-direction-sim", "-1", "--min-image-sim", "-1", "--p2p", "0.2", "0.6",
             "--guidance", "5", "6", "--batch-size", "2", "--max-new-tokens", "8", "--seed", "1", "--device", "cpu"]
    assert main(["data", "generate", "edits", *flags]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("edits: 4 triplets from 2 caption pairs") and "samples: 6 candidates" in printed

    report = json.loads((out / "report.json").read_text())
    c = report["counters"]
    assert c["edit text: generated"] == 2 and c["edit text: given"] == 2
    llm_dropped = sum(v for k, v in c.items() if k.startswith("edit text: ") and k.split(": ")[1] in
                      ("malformed", "unchanged caption", "unfinished (length)", "empty edit or caption"))
    assert llm_dropped + c["edit text: accepted"] == 4 and c["edit text: accepted"] >= 2
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == c["samples: kept"] == 4 and {m["edit_prompt"] for m in meta} >= {"make it winter"}
    assert all(0.2 <= m["p2p"] <= 0.6 and 5 <= m["guidance_scale"] <= 6 for m in meta)
    assert all((out / m["input_image"]).is_file() and (out / m["edited_image"]).is_file() for m in meta)
    settings = json.loads((out / "state.json").read_text())["settings"]
    assert settings["samples"] == 3 and settings["p2p_range"] == [0.2, 0.6]
    assert settings["edit_text"]["sampler"]["model"] == str(tiny_llama_dir)

    # running it again resumes: nothing left to do, the same report
    assert main(["data", "generate", "edits", *flags]) == 0
    assert json.loads((out / "report.json").read_text()) == report
    capsys.readouterr()

    # other settings in the same folder, missing inputs: one line each, exit 2
    changed = [*flags[:-2], "--samples", "5"]
    bad = {
        "different settings": changed,
        "captions file not found": ["--captions", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o1")],
        "--sd: could not open": ["--captions", str(write_jsonl(tmp_path / "given.jsonl", [
            {"caption": "a cat", "edit": "make it black", "output": "a black cat"}])), "--out", str(tmp_path / "o2"),
            "--sd", str(tmp_path / "no-sd")],
        "--captions and --out required": [],
    }
    for message, args in bad.items():
        assert main(["data", "generate", "edits", *args]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("mmtune: error: ") and message in errors[0], (message, errors)
