"""Import a Hugging Face or T5X checkpoint into a flan_jax model dir, or export one to Hugging
Face's format. The array conversions are flan_jax.interop's; this command writes the flan_jax
side (Orbax checkpoint, model.gin, spiece.model) and reads it back through model_loader.

Command line (see README.md):
  python -m flan_jax.convert import --format hf --checkpoint HF_DIR --output OUT [--scan_layers]
  python -m flan_jax.convert import --format t5x --checkpoint T5X_DIR --output OUT
      [--model_gin_file F] [--vocabulary spiece.model] [--scan_layers]
  python -m flan_jax.convert export --format hf --checkpoint CKPT --output HF_DIR
      [--model_gin_file F] [--vocabulary spiece.model]
"""

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import safetensors.numpy

from flan_jax import checkpoints, cli, model_loader, partitioning, paths
from flan_jax.interop import hf_t5, t5x
from flan_jax.models.t5 import T5Config
from flan_jax.trainer import TrainState

HF, T5X = "hf", "t5x"


def model_gin(config: T5Config, vocabulary_path: str | None, source: str) -> str:
    """A gin model file for `config`: the shared T5 v1.1 file with this config's numbers."""
    c = config
    lines = [
        f"# T5 v1.1 imported from {source} by flan_jax.convert.",
        "from __gin__ import dynamic_registration",
        "from flan_jax.models import t5",
        "",
        "include 'models/t5_1_1/architecture.gin'",
        "",
        f"VOCAB_SIZE = {c.vocab_size}",
        f"DROPOUT_RATE = {c.dropout_rate!r}  # the source's; the paper finetuned with 0.05",
        f"SCAN_LAYERS = {c.scan_layers}  # fixed by the checkpoint's parameter layout",
    ]
    if vocabulary_path is not None:
        lines.append(f"VOCABULARY_PATH = {vocabulary_path!r}")
    lines += ["", "t5.T5Config:"]
    for field in (
        "d_model",
        "num_heads",
        "d_kv",
        "d_ff",
        "num_encoder_layers",
        "num_decoder_layers",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "layer_norm_epsilon",
    ):
        lines.append(f"  {field} = {getattr(c, field)!r}")
    return "\n".join(lines) + "\n"


def _new_model_dir(output: str):
    output = paths.path(output, "--output")
    if (output / "checkpoints").exists():
        raise FileExistsError(f"{output} already holds checkpoints; pass a new --output")
    return output


def _save(output, step: int, state, source: dict) -> None:
    checkpointer = checkpoints.Checkpointer(output, max_to_keep=None, async_save=False)
    try:
        checkpointer.save(step, state, source, force=True)
    finally:
        checkpointer.close()


def import_hf(
    checkpoint: str, output: str, *, vocabulary_path: str | None = None, scan_layers: bool = False
) -> None:
    """HF dir -> OUTPUT/checkpoints/0 (Orbax, {"params": ...}), OUTPUT/model.gin and
    OUTPUT/spiece.model (`vocabulary_path`, else the HF dir's)."""
    hf_dir, output = paths.path(checkpoint, "--checkpoint"), _new_model_dir(output)
    config, params = hf_t5.read_hf_dir(hf_dir, scan_layers=scan_layers)
    output.mkdir(parents=True, exist_ok=True)
    vocabulary = paths.path(vocabulary_path or hf_dir / hf_t5.VOCABULARY_FILE, "--vocabulary")
    copied = None
    if vocabulary.is_file():
        copied = os.fspath(output / hf_t5.VOCABULARY_FILE)
        vocabulary.copy(copied, overwrite=True)
    else:
        print(
            f"warning: {vocabulary} not found; pass --vocabulary to flan_jax.infer",
            file=sys.stderr,
        )
    _save(output, 0, {"params": params}, {"imported_from": os.fspath(hf_dir)})
    (output / "model.gin").write_text(model_gin(config, copied, os.fspath(hf_dir)))
    print(
        f"imported {hf_dir} into {output}: use INITIAL_CHECKPOINT_PATH={os.fspath(output)!r} "
        f"and {output}/model.gin"
    )


def import_t5x(
    checkpoint: str,
    output: str,
    *,
    model_gin_file: str | None = None,
    vocabulary_path: str | None = None,
    scan_layers: bool = False,
) -> None:
    """T5X checkpoint -> OUTPUT/checkpoints/<step> (the train state: step, params and the
    Adafactor state of flan_jax.optim.adafactor), OUTPUT/model.gin, OUTPUT/spiece.model."""
    source = os.fspath(paths.path(checkpoint, "--checkpoint"))
    output = _new_model_dir(output)
    config = None
    if model_gin_file:
        model, gin_vocabulary = model_loader.model_from_gin_file(model_gin_file)
        config = dataclasses.replace(
            model.config, scan_layers=scan_layers or model.config.scan_layers
        )
        vocabulary_path = vocabulary_path or gin_vocabulary
    config, params, opt_state, step = t5x.read_train_state(
        checkpoint, config, scan_layers=scan_layers
    )
    output.mkdir(parents=True, exist_ok=True)
    if vocabulary_path:
        copied = output / hf_t5.VOCABULARY_FILE
        paths.path(vocabulary_path, "--vocabulary").copy(copied, overwrite=True)
        vocabulary_path = os.fspath(copied)
    state = TrainState(step=np.asarray(step, np.int32), params=params, opt_state=opt_state)
    _save(output, step, state, {"imported_from": source, "t5x_step": step})
    (output / "model.gin").write_text(model_gin(config, vocabulary_path, source))
    print(f"imported {checkpoint} (step {step}) into {output}: use {output}/model.gin")


def export_hf(
    checkpoint: str,
    output: str,
    *,
    model_gin_file: str | None = None,
    vocabulary_path: str | None = None,
) -> None:
    """flan_jax checkpoint -> OUTPUT/{model.safetensors, config.json, spiece.model when known}."""
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(), partitioning.logical_axis_rules()
    )
    loaded = model_loader.load(
        checkpoint, partitioner, model_gin_file=model_gin_file, vocabulary_path=vocabulary_path
    )
    config = loaded.model.config
    output = paths.path(output, "--output")
    output.mkdir(parents=True, exist_ok=True)
    weights, weights_path = hf_t5.params_to_hf(loaded.params, config), output / "model.safetensors"
    if paths.is_local(weights_path):
        safetensors.numpy.save_file(weights, os.fspath(weights_path))
    else:  # built in memory, uploaded in one piece
        weights_path.write_bytes(safetensors.numpy.save(weights))
    (output / "config.json").write_text(json.dumps(hf_t5.hf_config_from_t5(config), indent=2))
    vocabulary = loaded.vocabulary_path and paths.path(loaded.vocabulary_path, "vocabulary")
    if vocabulary and vocabulary.is_file():
        vocabulary.copy(output / hf_t5.VOCABULARY_FILE, overwrite=True)
    else:
        print("warning: no vocabulary known; copy spiece.model into the export", file=sys.stderr)
    print(f"exported {checkpoint} to {output}")


def _add_flags(command: argparse.ArgumentParser, formats: Sequence[str], source: str) -> None:
    command.add_argument("--format", required=True, choices=formats, help="the other side's")
    command.add_argument("--checkpoint", required=True, help=source)
    command.add_argument("--output", required=True, help="a new directory")
    command.add_argument(
        "--model_gin_file",
        help="the model's gin file (default: what the checkpoint implies or keeps beside it)",
    )
    command.add_argument(
        "--vocabulary", help="spiece.model (default: the checkpoint's or the model gin file's)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.new_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="HF directory or T5X checkpoint -> flan_jax model dir")
    _add_flags(
        imp,
        (HF, T5X),
        "a Hugging Face T5 directory (config.json, safetensors, spiece.model) or a T5X "
        "checkpoint_<step> directory",
    )
    imp.add_argument("--scan_layers", action="store_true", help="stack layers for SCAN_LAYERS")
    exp = commands.add_parser("export", help="flan_jax checkpoint -> HF directory")
    _add_flags(exp, (HF,), "a flan_jax model dir or checkpoints/<step> dir")
    args = cli.parse_args(parser, argv)
    if args.command == "export":
        export_hf(
            args.checkpoint,
            args.output,
            model_gin_file=args.model_gin_file,
            vocabulary_path=args.vocabulary,
        )
    elif args.format == HF:
        if args.model_gin_file:
            parser.error(
                f"--model_gin_file {args.model_gin_file!r}: a Hugging Face directory's "
                "config.json defines the model; drop the flag"
            )
        import_hf(
            args.checkpoint,
            args.output,
            vocabulary_path=args.vocabulary,
            scan_layers=args.scan_layers,
        )
    else:
        import_t5x(
            args.checkpoint,
            args.output,
            model_gin_file=args.model_gin_file,
            vocabulary_path=args.vocabulary,
            scan_layers=args.scan_layers,
        )


if __name__ == "__main__":
    main()
