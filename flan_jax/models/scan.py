"""Layer stacks shared by the models: a Python loop of `layers_{i}` or one scanned
`layers`, optionally rematerialized, and conversion between the two parameter layouts."""

import flax.linen as nn
import jax
import numpy as np

from flan_jax.axis_names import LAYERS

# remat_policy -> what jax.checkpoint saves ("full" saves nothing; "dots*" save matmul outputs).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
# The name of a scanned stack: every parameter under it has a leading per-layer axis.
STACK = "layers"


def check_remat_policy(config) -> None:
    """Fails at config time rather than deep inside the first traced forward pass."""
    if config.remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"{type(config).__name__}.remat_policy={config.remat_policy!r}: "
            f"use one of {sorted(REMAT_POLICIES)}"
        )


def apply_layers(layer_cls, config, num_layers: int, static_argnums, x, *args):
    """num_layers layers of layer_cls on x: a loop over `layers_{i}`, or one scanned `layers`.

    Layers are built as layer_cls(config), take positional arguments and return (x, None):
    the calling convention of nn.scan (carry, per-layer output) and of nn.remat's
    static_argnums. static_argnums index the layer's __call__ arguments (self is 0); they
    are Python values (flags, lengths) that remat must not trace. Call from a compact
    method: the layers become children of that module. config supplies scan_layers and
    remat_policy.

    Scanned params get a leading "layers" axis. Scanned cache leaves get the layer axis
    at 1, not 0: beam search reorders every cache leaf along its leading batch axis.
    """
    if config.remat_policy != "none":
        policy = REMAT_POLICIES[config.remat_policy]
        layer_cls = nn.remat(layer_cls, policy=policy, static_argnums=static_argnums)
    if not config.scan_layers:
        for i in range(num_layers):
            x, _ = layer_cls(config, name=f"layers_{i}")(x, *args)
        return x
    stack = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "cache": 1},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )
    x, _ = stack(config, name=STACK)(x, *args)
    return x


def is_stacked(path) -> bool:
    """Whether the parameter at a jax key path belongs to a scanned stack, so that its leading
    axis is the layer (a batch axis for the optimizer, as T5X's factor rules treat `layers`)."""
    return any(getattr(entry, "key", None) == STACK for entry in path)


def stack_layers(params: dict, num_layers: int) -> dict:
    """One stack's unscanned params (`layers_{i}` per layer) -> the scanned layout, where
    `layers` holds every per-layer array stacked on a new leading axis."""
    return {
        **{k: v for k, v in params.items() if not k.startswith("layers_")},
        STACK: jax.tree.map(
            lambda *xs: np.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)]
        ),
    }


def unstack_layers(params: dict, num_layers: int) -> dict:
    """The inverse of stack_layers: one `layers_{i}` subtree per layer."""
    return {
        **{k: v for k, v in params.items() if k != STACK},
        **{
            f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], params[STACK])
            for i in range(num_layers)
        },
    }
