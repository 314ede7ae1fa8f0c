"""Logical axis names: the one vocabulary shared by the models and the partitioning rules.

Models name each dimension of their params and activations with these constants;
`partitioning.logical_axis_rules` maps them to mesh axes. flax treats a name no rule
mentions as replicated without a word, so a misspelt literal would silently copy an array
onto every device: use the constants, never string literals.
"""

BATCH = "batch"
LENGTH = "length"  # sequence positions: tokens, and the keys/values of a decoding cache
EMBED = "embed"  # d_model
MLP = "mlp"  # the feed-forward hidden
HEADS = "heads"  # attention heads, query and key/value alike
KV = "kv"  # features of one attention head
VOCAB = "vocab"
LAYERS = "layers"  # the stacked axis of scanned layers' params
RELPOS_BUCKETS = "relpos_buckets"

ALL = (BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, LAYERS, RELPOS_BUCKETS)
