"""The Q-Former's BERT tokenizer: a hub name or directory, or ``basic``, a small vocabulary built in code.

InstructBLIP's Q-Former reads the instruction with ``bert-base-uncased``'s WordPiece tokenizer. No BERT
vocabulary exists offline, so ``basic`` builds an uncased WordPiece vocabulary from common English words plus
every ASCII character and its ``##`` continuation (any text tokenizes, common words in one piece): enough for
tiny recipes and tests, and saved with a run like any tokenizer.
"""

from __future__ import annotations

import string
from functools import lru_cache

from mmtune.errors import ModelError

BASIC_TOKENIZER = "basic"
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_COMMON_WORDS = """
a about above after again all an and animal any are around as at away back background be behind below
beside between big black blue boat bottom box brown building but by can car cat center circle city close
color colors colour could count day describe description did different do does dog down each eight empty
five for four from front give green grey gray has have he her here his how i image in inside is it its
large left less light long man many more most near next nine no not object objects of on one only or
orange other out outside over people person photo picture pink place purple question red right round
see seven shape shapes she short show shown side six size small some square street table tell ten that
the their there these they thing this three to top tree triangle two under up use very was water we
what where which white who why with woman word words yellow yes you answer brief briefly caption content
image's write provide using based given following respond provided possible between diagonal
middle upper lower corner first second third number total kind type appear appears located
""".split()


@lru_cache(maxsize=1)
def _basic_vocab() -> tuple[str, ...]:
    chars = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    words = list(dict.fromkeys(w for w in _COMMON_WORDS if w not in chars))
    return tuple(_SPECIAL + chars + [f"##{c}" for c in chars] + words)


def load_qformer_tokenizer(name: str, key: str = "connector.options.tokenizer"):
    """The Q-Former's BERT tokenizer: ``basic`` (built in code), or a hub name / local directory."""
    from transformers import AutoTokenizer, BertTokenizer

    if name == BASIC_TOKENIZER:
        return BertTokenizer(vocab={w: i for i, w in enumerate(_basic_vocab())}, do_lower_case=True)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # hub errors, missing files
        raise ModelError(f"{key}: could not load the Q-Former tokenizer '{name}' "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); give a local "
                         f"directory, or '{BASIC_TOKENIZER}' for mmtune's small built-in vocabulary") from None
