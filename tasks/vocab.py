"""SentencePiece vocabularies trained from text and cached on disk.

The offline demo cannot download the Flan-T5 vocabulary, so it trains a small
unigram model on its own text. Training is deterministic (one thread, input in
order), and the cached file's name carries a hash of the text and the
settings: every process and run that sees the same data agrees on the
vocabulary, and changed data trains a new one instead of reusing a stale file.
"""

import functools
import hashlib
import io
import json
import os
import random
import re
import tempfile
from collections.abc import Sequence

import sentencepiece as spm
import seqio
from sentencepiece import sentencepiece_model_pb2

CACHE_DIR_ENV = "FLAN_JAX_CACHE_DIR"

# The T5 / Flan-T5 SentencePiece model (32,000 pieces; with 100 extra ids the 32,100 ids
# that a 32,128-row embedding covers). A Hugging Face Flan-T5 directory's `spiece.model`
# is the same file; point FLAN_JAX_VOCAB at a local copy where gs:// is out of reach.
FLAN_VOCAB_ENV = "FLAN_JAX_VOCAB"
T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_EXTRA_IDS = 100

# T5 conventions: pad 0, eos 1, unk 2, no bos. Digits are single pieces, so
# numbers tokenize the same way wherever they appear. A small text may support
# fewer pieces than asked for: train what it supports, then pad (see _train).
_TRAINER_SETTINGS = {
    "model_type": "unigram",
    "pad_id": 0,
    "eos_id": 1,
    "unk_id": 2,
    "bos_id": -1,
    "character_coverage": 1.0,
    "split_digits": True,
    "hard_vocab_limit": False,
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
}
# Part of the cache key: bump it when _train changes what it writes.
_RECIPE_VERSION = 1


def cache_dir() -> str:
    """$FLAN_JAX_CACHE_DIR, else ~/.cache/flan_jax."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "flan_jax"
    )


def sentencepiece_vocabulary(
    lines: Sequence[str], name: str, vocab_size: int
) -> seqio.SentencePieceVocabulary:
    """A unigram vocabulary of exactly `vocab_size` pieces (no extra ids) trained on
    `lines`; read from the cache when this text and these settings trained one before."""
    settings = {
        **_TRAINER_SETTINGS,
        "vocab_size": vocab_size,
        "recipe": _RECIPE_VERSION,
        "sentencepiece": spm.__version__,
    }
    key = json.dumps([settings, list(lines)], sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(key).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"{name}_spm{vocab_size}_{digest}.model")
    if not os.path.exists(path):
        _train(lines, vocab_size, path)
    return seqio.SentencePieceVocabulary(path, extra_ids=0)


def flan_vocabulary() -> seqio.SentencePieceVocabulary:
    """The vocabulary of the Flan tasks and the evaluation suites: $FLAN_JAX_VOCAB, else T5's."""
    return _sentencepiece_file(os.environ.get(FLAN_VOCAB_ENV) or T5_VOCAB_PATH)


@functools.cache
def _sentencepiece_file(path: str) -> seqio.SentencePieceVocabulary:
    # One object per path: seqio compares output features' vocabularies when mixing tasks.
    return seqio.SentencePieceVocabulary(path, extra_ids=T5_EXTRA_IDS)


def __getattr__(name: str):
    if name == "demo_vocabulary":  # Moved, so that this module and tasks.demo import one way.
        raise AttributeError("tasks.vocab.demo_vocabulary() is now tasks.demo.vocabulary()")
    raise AttributeError(f"module 'tasks.vocab' has no attribute {name!r}")


def _train(lines: Sequence[str], vocab_size: int, path: str) -> None:
    """Trains a model, pads it to exactly `vocab_size` pieces and publishes it
    with an atomic rename, so concurrent processes never read a partial file.

    Unigram training keeps only pieces the text uses, a few hundred for the
    demo's small word set; "<unused_N>" pieces, which encoding never produces,
    fill the rest, so the vocabulary size is the one the model is built with.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_shuffle_tokens(lines)),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            **_TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece could not train a {vocab_size}-piece vocabulary on "
            f"{len(lines)} lines ({e}); raise vocab_size or pass other text."
        ) from e
    proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
    for index in range(vocab_size - len(proto.pieces)):
        proto.pieces.add(
            piece=f"<unused_{index}>",
            score=0.0,
            type=sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED,
        )
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def _shuffle_tokens(lines: Sequence[str]) -> list[str]:
    """The lines as their words and punctuation marks, in a fixed pseudo-random order.

    Unigram training seeds its pieces with substrings that repeat in differing
    contexts. In templated text a word always sits in the same phrase, next to
    the same punctuation, so only the whole phrase repeats that way, and it is
    dropped for spanning a space or a letter/punctuation boundary: the word
    never becomes a piece. Pieces never span those boundaries anyway, so
    separating and shuffling the tokens loses nothing else.
    """
    rng = random.Random(0)
    shuffled = []
    for line in lines:
        tokens = re.findall(r"\w+|[^\w\s]", line)
        rng.shuffle(tokens)
        shuffled.append(" ".join(tokens))
    return shuffled
