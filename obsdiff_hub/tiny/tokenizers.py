"""Tokenizers this project writes itself (no download): a byte-level CLIP BPE and a T5 unigram."""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, T5Tokenizer

TOKENIZER_WORDS = (
    "a an the of on in with and photo painting small large big tiny red green blue yellow white black orange purple "
    "circle square triangle cat dog house tree car city mountain river sky left right top bottom center next to"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(pieces) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def clip_vocab(words: tuple[str, ...] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary: every byte, plus merges that make each of ``words`` one token.

    Merges are added by simulating BPE: while a word still splits, the merge of its first
    two pieces is appended with the lowest priority, so it cannot undo earlier words.
    """
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for ch in _bytes_to_unicode().values():
        tokens += [ch, ch + "</w>"]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            tokens.append(pieces[0] + pieces[1])
            pieces = _bpe(pieces, ranks)
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, list(ranks)


def make_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def make_t5_tokenizer(max_length: int = 128) -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in TOKENIZER_WORDS]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)
