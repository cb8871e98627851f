"""The rewriter's own tokenizer: byte-level BPE (GPT-2's byte alphabet, so every byte of any prompt, an unknown word
or a typo, reaches the model as some tokens; never <unk>), merges learned on training pairs, lowercased by NFKC +
Lowercase (case carries no meaning in the shape world), "$A </s>" appended like T5's. Ids: <pad> 0, </s> 1, <unk> 2
(T5's). Saved as a `tokenizers` tokenizer.json, which the Rust `tokenizers` crate and transformers'
PreTrainedTokenizerFast both read (`check` round-trips it)."""

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIALS = ["<pad>", "</s>", "<unk>"]


def train_tokenizer(texts, vocab_size=768):
    tok = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte has a token, nothing is unknown
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return tok


def fast_tokenizer(path):
    """transformers' view of tokenizer.json (what train.py and evaluate.py use)."""
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def check(path, texts):
    """Round trip through transformers: decode(encode(t)) == lowercased t (NFKC), </s> last, no <unk>."""
    import unicodedata
    ft = fast_tokenizer(path)
    for t in texts:
        ids = ft(t)["input_ids"]
        assert ids[-1] == 1 and 2 not in ids, (t, ids)
        back = ft.decode(ids, skip_special_tokens=True)
        assert back == unicodedata.normalize("NFKC", t).lower(), (t, back)
    return len(texts)
