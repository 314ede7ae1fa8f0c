"""Ahead-of-time fit check: compile a gin run's partitioned train step (and decode step) for a
Cloud TPU topology on a machine without TPUs, and report per-chip memory, FLOPs and a step-time
estimate before paying for the slice.

    python -m flan_jax.aot --gin_file=gin/runs/flan_palm/540b.gin --topology=v4:8x8x8
    python -m flan_jax.aot --gin_file=gin/runs/flan_t5/xxl.gin --topology=v4:2x4x4 --sweep

libtpu (the `tpu` extra) compiles for compile-only devices from
`jax.experimental.topologies`; parameters, optimizer state and batches stay abstract
(`jax.ShapeDtypeStruct`), so nothing is allocated. The model, partitioner and trainer come
from the same gin bindings `flan_jax.train` uses; the data pipeline is never built.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp

from flan_jax import cli, flops, partitioning, predict
from flan_jax.trainer import Trainer

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """What the fit check needs of one TPU generation (per chip, bfloat16)."""

    device_kind: str  # jax's device_kind; its peak FLOP/s is flops.PEAK_FLOPS_PER_DEVICE's
    hbm_bytes: int
    # v4 and v5p chips have two TensorCores that "megacore" presents as one device.
    chip_config_name: str
    # Cloud TPU accelerator types count TensorCores on v4/v5p: v4-1024 is 512 chips.
    accelerator_prefix: str
    cores_per_chip: int

    @property
    def peak_flops(self) -> float:
        return flops.PEAK_FLOPS_PER_DEVICE[self.device_kind]


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, "megacore", "v4", 2),
    "v5e": Chip("TPU v5 lite", 16 * GIB, "default", "v5litepod", 1),
    "v5p": Chip("TPU v5", 95 * GIB, "megacore", "v5p", 2),
    "v6e": Chip("TPU v6 lite", 32 * GIB, "default", "v6e", 1),
}
_TOPOLOGY = re.compile(r"(?P<generation>v\w+):(?P<shape>\d+(x\d+){1,2})")
# Macros of gin/runs/finetune.gin that only the data pipeline and the outputs read.
UNUSED_REQUIRED_MACROS = ("MIXTURE_OR_TASK_NAME", "MODEL_DIR", "TRAIN_STEPS")
# The features seqio's packing feature converters emit, by the length each one takes.
PACKED_FEATURES = {
    "EncDecFeatureConverter": {
        "inputs": ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"),
        "targets": (
            "decoder_target_tokens",
            "decoder_input_tokens",
            "decoder_loss_weights",
            "decoder_segment_ids",
            "decoder_positions",
        ),
    },
    "PrefixLMFeatureConverter": {
        "inputs+targets": (
            "decoder_target_tokens",
            "decoder_input_tokens",
            "decoder_loss_weights",
            "decoder_segment_ids",
            "decoder_positions",
            "decoder_causal_attention",
        ),
    },
}


def parse_topology(topology: str) -> tuple[str, Chip, int]:
    """("v4", chip, number of chips) for a name like v4:8x8x8 or v5e:4x4."""
    match = _TOPOLOGY.fullmatch(topology)
    if match is None or match["generation"] not in CHIPS:
        raise ValueError(
            f"--topology={topology!r} is not GENERATION:AxBxC with GENERATION one of "
            f"{sorted(CHIPS)}; e.g. v4:8x8x8 (512 chips, accelerator type v4-1024) or v5e:4x4."
        )
    chips = math.prod(int(n) for n in match["shape"].split("x"))
    return match["generation"], CHIPS[match["generation"]], chips


def accelerator_type(topology: str) -> str:
    """The Cloud TPU accelerator type of one slice: v4:8x8x8 -> v4-1024."""
    _, chip, chips = parse_topology(topology)
    return f"{chip.accelerator_prefix}-{chips * chip.cores_per_chip}"


@functools.cache
def topology_devices(topology: str, num_slices: int = 1) -> tuple[jax.Device, ...]:
    """Compile-only devices of `num_slices` slices of `topology`, one per chip."""
    from jax.experimental import topologies

    # Compiling opens no TPU, so it need not wait for libtpu's lock on a process using one,
    # nor ask the TPU VM metadata server (absent here) who its workers are.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topology))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    _, chip, _ = parse_topology(topology)
    return tuple(
        topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology,
            chip_config_name=chip.chip_config_name,
            chips_per_host_bounds=(2, 2, 1),
            num_slices=num_slices,
        ).devices
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What the compile reads from a gin run: the train step's inputs and its program."""

    model: Any
    optimizer: Any
    learning_rate_fn: Any
    mesh: jax.sharding.Mesh
    rules: Any
    batch_size: int
    task_feature_lengths: Mapping[str, int]
    num_microbatches: int
    loss_normalizing_factor: Any
    bindings: tuple[str, ...]


def _train_argument(name: str):
    """The value gin binds to `flan_jax.train.train`'s argument `name`, references resolved."""
    value = gin.query_parameter(f"train.train.{name}")
    if isinstance(value, gin.config.ConfigurableReference):
        fn = value.scoped_configurable_fn
        return fn() if value.evaluate else fn
    return value


def load_run(
    gin_args: Sequence[str], devices: Sequence[jax.Device], bindings: Sequence[str] = ()
) -> RunConfig:
    """A run's gin files and bindings (plus `bindings`, which win) with the mesh built over
    `devices`, read in a gin config of its own (a sweep reads the run once per layout)."""
    files, gin_bindings, search_paths = cli.split_gin_args(gin_args)
    placeholders = [f"{macro}=None" for macro in UNUSED_REQUIRED_MACROS]
    with cli.separate_gin_config():
        cli.parse_gin(files, [*placeholders, *gin_bindings, *bindings], search_paths=search_paths)
        learning_rate_fn = _train_argument("learning_rate_fn")
        return RunConfig(
            model=_train_argument("model"),
            optimizer=_train_argument("optimizer_fn")(learning_rate_fn),
            learning_rate_fn=learning_rate_fn,
            mesh=gin.get_configurable(partitioning.create_mesh)(devices=list(devices)),
            rules=gin.get_configurable(partitioning.logical_axis_rules)(),
            batch_size=_train_argument("batch_size"),
            task_feature_lengths=dict(_train_argument("task_feature_lengths")),
            num_microbatches=_train_argument("num_microbatches"),
            loss_normalizing_factor=_train_argument("loss_normalizing_factor"),
            bindings=tuple(bindings),
        )


def abstract_batch(model, task_feature_lengths, batch_size: int, sharding) -> dict:
    """The packed global batch the data pipeline would feed, as shapes only."""
    features = {}
    for length_key, names in PACKED_FEATURES[model.FEATURE_CONVERTER].items():
        length = sum(task_feature_lengths[k] for k in length_key.split("+"))
        for name in names:
            shape = (batch_size, length)
            features[name] = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
    return features


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Per-chip bytes of one compiled program, from XLA's memory analysis; or, when the
    compiler itself gave up for lack of HBM, its message and the bytes it asked for."""

    argument: int
    output: int
    alias: int  # outputs that reuse donated argument buffers
    temp: int
    code: int
    compile_seconds: float
    compiler_out_of_memory: str | None = None

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp + self.code


# e.g. "the total memory required for HLO temporaries (24.07G) exceeds available HBM (15.75G)"
_REQUIRED = re.compile(r"required[^(]*\((?P<amount>[\d.]+)(?P<unit>[KMGT])\)")


def analyze(lowered) -> StepMemory:
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        match = _REQUIRED.search(str(e))
        required = 0
        if match:
            required = int(float(match["amount"]) * 1024 ** ("KMGT".index(match["unit"]) + 1))
        return StepMemory(0, 0, 0, required, 0, time.perf_counter() - start, str(e).strip())
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return StepMemory(
        argument=memory.argument_size_in_bytes,
        output=memory.output_size_in_bytes,
        alias=memory.alias_size_in_bytes,
        temp=memory.temp_size_in_bytes,
        code=memory.generated_code_size_in_bytes,
        compile_seconds=seconds,
    )


@dataclasses.dataclass(frozen=True)
class FitReport:
    topology: str
    num_slices: int
    chip: Chip
    mesh_shape: Mapping[str, int]
    rules: str
    bindings: tuple[str, ...]
    train: StepMemory
    decode: StepMemory | None
    model_flops_per_step: float  # flops.train_flops_per_sequence x batch, all chips
    # The optimizer state (Adafactor's second moments): all chips together, and per chip
    # as the train step's arguments hold it.
    optimizer_state_bytes: int
    optimizer_state_bytes_per_chip: int
    remat_policy: str
    hbm_margin: float
    assumed_hfu: float

    @property
    def num_chips(self) -> int:
        return math.prod(self.mesh_shape.values())

    @property
    def usable_hbm(self) -> float:
        return self.chip.hbm_bytes * (1 - self.hbm_margin)

    @property
    def peak_bytes(self) -> int:
        return max(self.train.total, self.decode.total if self.decode else 0)

    @property
    def fits(self) -> bool:
        steps = (self.train, self.decode)
        if any(step and step.compiler_out_of_memory for step in steps):
            return False
        return self.peak_bytes <= self.usable_hbm

    @property
    def hardware_flops_per_step(self) -> float:
        """Model FLOPs plus what rematerialization recomputes: `full` runs every layer's
        forward pass twice (4/3); the `dots` policies keep matmul outputs (recompute ~0)."""
        return self.model_flops_per_step * (4 / 3 if self.remat_policy == "full" else 1.0)

    @property
    def step_seconds(self) -> float:
        """The step's hardware FLOPs at `assumed_hfu` of every chip's peak.

        XLA's own cost analysis counts a scanned layer stack's loop body once, so it cannot
        time scanned models; collectives are assumed to overlap with compute.
        """
        return self.hardware_flops_per_step / (
            self.num_chips * self.chip.peak_flops * self.assumed_hfu
        )

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization at `step_seconds`."""
        peak = self.chip.peak_flops * self.num_chips
        return self.model_flops_per_step / (self.step_seconds * peak)


def check_fit(
    gin_args: Sequence[str],
    topology: str,
    *,
    num_slices: int = 1,
    bindings: Sequence[str] = (),
    decode: bool = True,
    decode_batch_size: int | None = None,
    hbm_margin: float = 0.05,
    assumed_hfu: float = 0.5,
) -> FitReport:
    """Compiles the run's train step (and greedy decoding) for the topology; reports the fit."""
    _, chip, _ = parse_topology(topology)
    devices = topology_devices(topology, num_slices)
    run = load_run(gin_args, devices, [*bindings, f"NUM_SLICES={num_slices}"])
    partitioner = partitioning.Partitioner(run.mesh, run.rules)
    partitioner.check_batch_size(run.batch_size)
    trainer = Trainer(
        run.model,
        run.optimizer,
        partitioner,
        learning_rate_fn=run.learning_rate_fn,
        num_microbatches=run.num_microbatches,
        loss_normalizing_factor=run.loss_normalizing_factor,
    )
    batch_sharding = partitioner.batch_sharding()
    batch = abstract_batch(run.model, run.task_feature_lengths, run.batch_size, batch_sharding)
    train = analyze(trainer.train_step.lower(trainer.abstract_state, batch))
    decode_memory = None
    if decode:
        decode_memory = analyze(
            _lower_decode(run, partitioner, trainer, decode_batch_size or run.batch_size)
        )
    return FitReport(
        topology=topology,
        num_slices=num_slices,
        chip=chip,
        mesh_shape=dict(run.mesh.shape),
        rules=_describe_rules(run.rules),
        bindings=run.bindings,
        train=train,
        decode=decode_memory,
        model_flops_per_step=run.batch_size
        * flops.train_flops_per_sequence(run.model.config, run.task_feature_lengths),
        optimizer_state_bytes=_bytes(trainer.abstract_state.opt_state, per_chip=False),
        optimizer_state_bytes_per_chip=_bytes(trainer.abstract_state.opt_state, per_chip=True),
        remat_policy=run.model.config.remat_policy,
        hbm_margin=hbm_margin,
        assumed_hfu=assumed_hfu,
    )


def _bytes(abstract_tree, *, per_chip: bool) -> int:
    """Bytes of abstract arrays: whole, or the shard one chip holds of each."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape) if per_chip else x.shape) * x.dtype.itemsize
        for x in jax.tree.leaves(abstract_tree)
    )


def _lower_decode(run: RunConfig, partitioner, trainer, batch_size: int):
    """Greedy decoding of `targets` tokens after `inputs`-token prompts, as evaluation runs it."""
    partitioner.check_batch_size(batch_size)
    lengths = run.task_feature_lengths
    prompt = {"inputs": lengths["inputs"], "targets": 0}
    features = abstract_batch(run.model, prompt, batch_size, partitioner.batch_sharding())
    settings = predict.DecodeSettings(max_decode_length=lengths["targets"])
    predict_fn = predict.predict_function(
        run.model, partitioner, trainer.params_shardings, settings
    )
    batch_index = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated_sharding())
    return predict_fn.lower(trainer.abstract_state.params, _prompt_features(features), batch_index)


def _prompt_features(features: dict) -> dict:
    """Decoding reads only the prompt tokens (and the prefix mask of a decoder-only model)."""
    keep = ("encoder_input_tokens", "decoder_input_tokens", "decoder_causal_attention")
    return {k: v for k, v in features.items() if k in keep}


def _describe_rules(rules) -> str:
    return ", ".join(f"{name}->{axes}" for name, axes in rules if axes)


def format_report(report: FitReport) -> str:
    gib = lambda n: f"{n / GIB:7.2f}"  # noqa: E731
    lines = [
        f"topology {report.topology} ({accelerator_type(report.topology)}) x "
        f"{report.num_slices} slice(s): {report.num_chips} chips "
        f"of {report.chip.device_kind}, {report.chip.hbm_bytes / GIB:.0f} GiB HBM each; "
        f"mesh {dict(report.mesh_shape)}",
        f"rules: {report.rules}",
        "per chip (GiB)    arguments   temp   outputs  aliased   total   compile",
    ]
    for name, step in (("train step", report.train), ("decode step", report.decode)):
        if step is not None and step.compiler_out_of_memory:
            lines.append(f"  {name}: TPU compiler out of HBM: {step.compiler_out_of_memory}")
        elif step is not None:
            lines.append(
                f"  {name:<14} {gib(step.argument)} {gib(step.temp)} {gib(step.output)} "
                f"{gib(step.alias)} {gib(step.total)}   {step.compile_seconds:5.1f} s"
            )
    lines += [
        f"optimizer state: {report.optimizer_state_bytes / GIB:.2f} GiB in all, "
        f"{report.optimizer_state_bytes_per_chip / GIB:.2f} GiB per chip (in the arguments)",
        f"FLOPs per step: model {report.model_flops_per_step:.3e}, with remat "
        f"'{report.remat_policy}' {report.hardware_flops_per_step:.3e}",
        f"est. step time {report.step_seconds:.3f} s, MFU {report.mfu:.1%} (assuming "
        f"{report.assumed_hfu:.0%} of peak {report.chip.peak_flops / 1e12:.0f} TFLOP/s per chip "
        "for the hardware FLOPs)",
    ]
    shortfall = report.peak_bytes - report.usable_hbm
    if report.fits:
        lines.append(
            f"FITS: {report.peak_bytes / GIB:.2f} GiB of {report.usable_hbm / GIB:.2f} GiB usable "
            f"({report.hbm_margin:.0%} of HBM kept free)"
        )
    else:
        lines.append(
            f"DOES NOT FIT: {report.peak_bytes / GIB:.2f} GiB per chip needs {shortfall / GIB:.2f} "
            f"GiB more than the {report.usable_hbm / GIB:.2f} GiB usable ({report.hbm_margin:.0%} "
            "of HBM kept free). Try a larger --gin.MODEL_PARALLEL_SIZE, "
            "--gin.PARAMETER_PARTITIONING_DIMS=2, --gin.REMAT_POLICY=\"'full'\" with "
            "--gin.SCAN_LAYERS=True, more --gin.NUM_MICROBATCHES, a larger topology, or --sweep."
        )
    return "\n".join(lines)


def sweep(
    gin_args: Sequence[str],
    topology: str,
    *,
    num_slices: int = 1,
    model_parallel_sizes: Sequence[int] | None = None,
    rule_sets: Sequence[tuple[int, int]] = ((1, 1), (2, 1), (1, 2), (2, 2)),
    remat_policies: Sequence[str] | None = None,
    **check_fit_kwargs,
) -> list[FitReport]:
    """Fit reports of every model-parallel size x (parameter, activation) partitioning dims
    x remat policy (default: the run's own) whose mesh can hold the run; fitting layouts
    first, then by estimated step time, then by memory."""
    _, _, chips = parse_topology(topology)
    sizes = model_parallel_sizes or [d for d in range(1, chips + 1) if chips % d == 0]
    remats = [f"REMAT_POLICY='{r}'" for r in remat_policies] if remat_policies else [None]
    reports = []
    for size, (param_dims, act_dims), remat in itertools.product(sizes, rule_sets, remats):
        layout = [
            f"MODEL_PARALLEL_SIZE={size}",
            f"PARAMETER_PARTITIONING_DIMS={param_dims}",
            f"ACTIVATION_PARTITIONING_DIMS={act_dims}",
            *([remat] if remat else []),
        ]
        try:
            reports.append(
                check_fit(
                    gin_args,
                    topology,
                    num_slices=num_slices,
                    bindings=layout,
                    decode=False,
                    **check_fit_kwargs,
                )
            )
        except ValueError as e:  # batch or a dimension not divisible by this mesh
            print(f"skipped {' '.join(layout)}: {str(e).splitlines()[0]}", file=sys.stderr)
    return sorted(reports, key=lambda r: (not r.fits, r.step_seconds, r.peak_bytes))


def format_sweep(reports: Sequence[FitReport]) -> str:
    lines = [
        "rank  fits  mesh r,d,m   params/acts dims  remat                   GiB/chip  step s   MFU"
    ]
    for rank, r in enumerate(reports, 1):
        mesh = ",".join(str(n) for n in r.mesh_shape.values())
        layout = dict(b.split("=", 1) for b in r.bindings)
        dims = f"{layout['PARAMETER_PARTITIONING_DIMS']}/{layout['ACTIVATION_PARTITIONING_DIMS']}"
        lines.append(
            f"{rank:>4}  {'yes' if r.fits else 'no':<4}  {mesh:<12} {dims:<17} "
            f"{r.remat_policy:<23} {r.peak_bytes / GIB:8.2f}  {r.step_seconds:6.3f}  {r.mfu:5.1%}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.new_parser(__doc__, gin_files=True)
    parser.add_argument("--topology", required=True, help="e.g. v4:8x8x8, v5e:4x4, v5p:4x4x4")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined by `replica`")
    parser.add_argument("--sweep", action="store_true", help="rank model-parallel sizes x rules")
    parser.add_argument("--model_parallel_sizes", help="with --sweep: comma-separated, e.g. 8,16")
    parser.add_argument("--remat_policies", help="with --sweep: comma-separated, e.g. full,dots")
    parser.add_argument("--no_decode", action="store_true", help="skip the decode-step compile")
    parser.add_argument("--decode_batch_size", type=int, help="default: the run's BATCH_SIZE")
    parser.add_argument("--hbm_margin", type=float, default=0.05, help="fraction of HBM kept free")
    parser.add_argument(
        "--assumed_hfu",
        type=float,
        default=0.5,
        help="fraction of peak FLOP/s the step's hardware FLOPs are assumed to run at",
    )
    args = cli.parse_args(parser, argv)
    gin_args = cli.gin_args(args)
    # Compile-only devices need no TPU: never open one (or libtpu's lock) on a TPU VM.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    common = dict(
        num_slices=args.num_slices, hbm_margin=args.hbm_margin, assumed_hfu=args.assumed_hfu
    )
    try:
        if args.sweep:
            sizes, remats = args.model_parallel_sizes, args.remat_policies
            reports = sweep(
                gin_args,
                args.topology,
                model_parallel_sizes=[int(s) for s in sizes.split(",")] if sizes else None,
                remat_policies=remats.split(",") if remats else None,
                **common,
            )
            print(format_sweep(reports))
            return 0 if any(r.fits for r in reports) else 1
        report = check_fit(
            gin_args,
            args.topology,
            decode=not args.no_decode,
            decode_batch_size=args.decode_batch_size,
            **common,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.fits else 1


if __name__ == "__main__":
    sys.exit(main())
