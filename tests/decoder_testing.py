"""A random decoder-only (PaLM-style) checkpoint as a user has one, and what the model predicts
and scores by plain full forward passes: the reference for the entry points (infer, evaluate,
multi-host evaluate), which build features with the model's feature converter and decode with
a KV cache."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from flan_jax import checkpoints, model_loader
from flan_jax.models.base import EOS_ID
from tasks import demo

MODEL_GIN = "models/palm/tiny.gin"
# A random model with a shared embedding mostly repeats its last token (EOS, after a prompt):
# larger kernels let the layers outweigh the residual, a larger EOS embedding makes EOS come
# now and then, so outputs end at different lengths.
KERNEL_SCALE = 3.0
EOS_EMBEDDING_SCALE = 1.5


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str  # the model dir
    model: object
    params: dict
    vocabulary: object


def save_checkpoint(directory, *, prefix_lm: bool = False) -> Checkpoint:
    """gin/models/palm/tiny.gin with random weights (causal, or U-PaLM's prefix LM), saved as a
    flan_jax checkpoint with a model.gin naming the demo vocabulary."""
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = demo.vocabulary()
    (directory / "model.gin").write_text(
        f"include '{MODEL_GIN}'\nPREFIX_LM = {prefix_lm}\n"
        f"VOCABULARY_PATH = '{vocabulary.sentencepiece_model_file}'\n"
    )
    model, _ = model_loader.model_from_gin_file(str(directory / "model.gin"))
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * KERNEL_SCALE if "kernel" in jax.tree_util.keystr(path) else x,
        nn.unbox(model.init(jax.random.key(0))),
    )
    embedding = params["token_embedder"]["embedding"]
    params["token_embedder"]["embedding"] = embedding.at[EOS_ID].multiply(EOS_EMBEDDING_SCALE)
    checkpointer = checkpoints.Checkpointer(directory, max_to_keep=None, async_save=False)
    try:
        checkpointer.save(0, {"params": params}, {"source": "random"}, force=True)
    finally:
        checkpointer.close()
    return Checkpoint(str(directory), model, params, vocabulary)


class Reference:
    """Greedy decoding and target scores without a cache or a feature converter: one row of
    [start, prompt, continuation], zero-padded to a fixed width, the prompt and the start token
    marked as the prefix (where seqio's PrefixLMFeatureConverter marks it); the logits at
    position t depend only on tokens up to t (or the prefix), so the padding changes nothing."""

    def __init__(self, checkpoint: Checkpoint, width: int):
        self.params, self.width = checkpoint.params, width
        self._logits = jax.jit(lambda p, batch: checkpoint.model._logits(p, batch))

    def _log_probs(self, tokens: list[int], prompt_length: int) -> np.ndarray:
        row = np.zeros((1, self.width), np.int32)
        row[0, 1 : 1 + len(tokens)] = tokens
        prefix = (np.arange(self.width) <= prompt_length).astype(np.int32)[None]
        batch = {"decoder_input_tokens": row, "decoder_causal_attention": prefix}
        return np.asarray(jax.nn.log_softmax(self._logits(self.params, batch)[0]))

    def greedy(self, prompt: list[int], max_decode_length: int) -> list[int]:
        """The tokens greedy decoding appends to `prompt` (pieces + EOS), through EOS."""
        tokens = list(prompt)
        for _ in range(max_decode_length):
            token = int(np.argmax(self._log_probs(tokens, len(prompt))[len(tokens)]))
            tokens.append(token)
            if token == EOS_ID:
                break
        return tokens[len(prompt) :]

    def score(self, prompt: list[int], target: list[int]) -> float:
        """log p(target | prompt), summed over the target tokens."""
        log_probs = self._log_probs(prompt + target[:-1], len(prompt))
        positions = len(prompt) + np.arange(len(target))
        return float(log_probs[positions, target].sum())
