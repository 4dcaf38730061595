"""InstructPix2Pix editing data made inside mmtune: edit text, Prompt-to-Prompt pairs, the CLIP filter.

``mmtune data generate edits --captions FILE --out DIR`` on the command line; from Python::

    from mmtune.datagen.edits import EditGenOptions, generate_edits
    report = generate_edits("captions.txt", "edits", EditGenOptions(sd="tiny-stable-diffusion",
                            clip="tiny-open-clip", steps=10, resolution=32, samples=8))
    print(report.format())   # triplets in edits/metadata.jsonl (format edit_triplets), card edits/triplets.yaml

``edit_text.py``: the prompt, parser and filters of the edit text; ``prompt_to_prompt.py``: shared attention
through diffusers attention processors; ``clip_filter.py``: open_clip similarities and thresholds;
``generate.py``: the two resumable stages; ``options.py``: every default; ``tiny.py``: a tiny open_clip model.
"""

from mmtune.datagen.edits.generate import EditsReport, generate_edits
from mmtune.datagen.edits.options import EditGenOptions

__all__ = ["EditGenOptions", "EditsReport", "generate_edits"]
