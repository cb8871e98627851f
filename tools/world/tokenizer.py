"""Word-level tokenizer like the shipped weights/default/tokenizer (WordLevel, Lowercase,
Whitespace, "</s>" appended by TemplateProcessing; <pad>=0, </s>=1, <unk>=2)."""

import json
import os

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL = ["<pad>", "</s>", "<unk>"]


def train_tokenizer(texts, vocab_size=1000):
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL)
    tok.train_from_iterator(texts, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL] == [0, 1, 2]
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B:1", special_tokens=[("</s>", 1)])
    return tok


def save_tokenizer(tok, folder, max_length=80):
    """tokenizer.json + tokenizer_config.json as in the shipped folder (AutoTokenizer and the Rust
    tokenizers crate load it)."""
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    cfg = {"backend": "tokenizers", "eos_token": "</s>", "is_local": True, "local_files_only": False,
           "model_max_length": max_length, "pad_token": "<pad>", "padding_side": "right",
           "tokenizer_class": "TokenizersBackend", "unk_token": "<unk>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
