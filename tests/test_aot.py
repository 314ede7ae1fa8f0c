"""Ahead-of-time fit checks: real compiles of the partitioned steps for TPU topologies (libtpu,
no TPU), per-chip memory against HBM, multi-slice meshes, the sweep, and the 540B preset."""

import math
import time

import jax
import pytest

from flan_jax import aot, flops, partitioning

pytest.importorskip("libtpu", reason="AOT compiles for TPU need libtpu (the `tpu` extra)")

TINY_T5 = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.BATCH_SIZE=8",
]
TINY_PALM = [
    "--gin_file=models/palm/tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 112, 'targets': 16}",
    "--gin.BATCH_SIZE=8",
    "--gin.SCAN_LAYERS=True",
    "--gin.REMAT_POLICY='full'",
]


@pytest.fixture(autouse=True)
def clear_gin():
    import gin

    yield
    gin.clear_config()


def per_chip_bytes(abstract_tree) -> int:
    """Bytes one chip holds of arrays laid out by their shardings."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
        for x in jax.tree.leaves(abstract_tree)
    )


def test_train_step_arguments_are_the_sharded_state_and_batch():
    report = aot.check_fit(TINY_T5, "v4:2x2x1", bindings=["MODEL_PARALLEL_SIZE=2"])
    assert report.mesh_shape == {"replica": 1, "data": 2, "model": 2}
    assert report.chip.device_kind == "TPU v4" and report.num_chips == 4
    # Rebuild what was compiled to know what one chip must hold.
    devices = aot.topology_devices("v4:2x2x1")
    run = aot.load_run(TINY_T5, devices, ["MODEL_PARALLEL_SIZE=2"])
    partitioner = partitioning.Partitioner(run.mesh, run.rules)
    trainer = aot.Trainer(run.model, run.optimizer, partitioner)
    batch = aot.abstract_batch(run.model, run.task_feature_lengths, 8, partitioner.batch_sharding())
    # TPU layouts pad small arrays to tiles (factored moments such as [heads 4, kv 32] to
    # [8, 128]): equal to within 2%.
    state_bytes = per_chip_bytes(trainer.abstract_state)
    assert report.train.argument == pytest.approx(state_bytes + per_chip_bytes(batch), rel=0.02)
    # Adafactor's second moments, whole and per chip: every matrix of the tiny model has
    # dims of 128 or more (attention kernels [128, 4 x 32] as T5X stores them), so all are
    # factored, to under a tenth of the parameters' bytes.
    opt_state = trainer.abstract_state.opt_state
    assert report.optimizer_state_bytes_per_chip == per_chip_bytes(opt_state)
    assert report.optimizer_state_bytes == sum(x.size * 4 for x in jax.tree.leaves(opt_state))
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(trainer.abstract_state.params))
    assert report.optimizer_state_bytes < param_bytes / 10
    assert "optimizer state:" in aot.format_report(report)
    # The state is donated: its buffers are reused for the new state.
    assert report.train.alias == pytest.approx(state_bytes, rel=0.02)
    assert report.decode is not None and report.decode.argument > 0 and report.decode.temp > 0
    assert report.fits and report.peak_bytes < aot.GIB
    # XLA's FLOPs for one chip against the model count split over 4 chips.
    lengths = {"inputs": 64, "targets": 16}
    model_per_chip = 8 * flops.train_flops_per_sequence(run.model.config, lengths) / 4
    assert report.model_flops_per_step == pytest.approx(4 * model_per_chip)
    # No remat: hardware FLOPs are the model's, so MFU is the assumed utilization.
    assert report.step_seconds == pytest.approx(model_per_chip / (275e12 * 0.5))
    assert report.mfu == pytest.approx(0.5)


def test_multi_slice_mesh_puts_each_slice_on_its_own_replica_row():
    devices = aot.topology_devices("v4:2x2x1", num_slices=2)
    mesh = partitioning.create_mesh(model_parallel_size=2, num_slices=2, devices=devices)
    assert dict(mesh.shape) == {"replica": 2, "data": 2, "model": 2}
    for replica in range(2):
        assert {d.slice_index for d in mesh.devices[replica].flat} == {replica}
    report = aot.check_fit(
        TINY_PALM, "v4:2x2x1", num_slices=2, bindings=["MODEL_PARALLEL_SIZE=2"], decode=False
    )
    assert report.mesh_shape == {"replica": 2, "data": 2, "model": 2} and report.num_chips == 8
    single = aot.check_fit(TINY_PALM, "v4:2x2x1", bindings=["MODEL_PARALLEL_SIZE=2"], decode=False)
    # Parameters are copied per slice, the batch is split over both: half the rows per chip
    # (5 int32 features of 128 tokens: 4 rows on one slice's chips, 2 rows on two slices';
    # the causal decoder does not read the sixth, decoder_causal_attention, and jit drops it).
    assert single.train.argument - report.train.argument == 5 * (4 - 2) * 128 * 4


def test_a_config_that_does_not_fit_exits_non_zero_naming_the_shortfall(capsys):
    # A 2**24-piece vocabulary: 8 GiB of float32 embedding, replicated on each 16 GiB chip.
    huge_vocab = [*TINY_PALM, "--gin.VOCAB_SIZE=16777216", "--gin.BATCH_SIZE=4"]
    assert aot.main([*huge_vocab, "--topology=v5e:2x2", "--no_decode"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "GiB more than the 15.20 GiB usable" in out
    assert "MODEL_PARALLEL_SIZE" in out and "--sweep" in out


def test_errors_name_the_value_and_the_fix(capsys):
    with pytest.raises(ValueError, match=r"--topology='v4-512' is not GENERATION:AxBxC"):
        aot.parse_topology("v4-512")
    assert aot.main([*TINY_T5, "--topology=v4:2x2x1", "--gin.MODEL_PARALLEL_SIZE=3"]) == 2
    assert "model_parallel_size=3 must divide the 4 devices" in capsys.readouterr().err
    assert aot.main([*TINY_T5, "--topology=v4:2x2x1", "--gin.BATCH_SIZE=6"]) == 2
    assert "batch size 6 is not divisible by the data-parallel size 4" in capsys.readouterr().err


def test_sweep_ranks_layouts_by_fit_then_step_time():
    reports = aot.sweep(
        TINY_PALM,
        "v4:2x2x1",
        model_parallel_sizes=[1, 4],
        rule_sets=[(2, 1)],
        remat_policies=("full", "dots"),
    )
    layouts = {(r.mesh_shape["model"], r.remat_policy) for r in reports}
    assert layouts == {(m, remat) for m in (1, 4) for remat in ("full", "dots")}
    assert all(r.fits and "PARAMETER_PARTITIONING_DIMS=2" in r.bindings for r in reports)
    # Recomputing every forward pass ("full") costs a third more FLOPs than keeping matmuls.
    assert [r.remat_policy for r in reports] == ["dots", "dots", "full", "full"]
    assert reports[2].step_seconds == pytest.approx(reports[0].step_seconds * 4 / 3)
    # Ties in time go to the layout with more headroom.
    assert reports[0].peak_bytes <= reports[1].peak_bytes
    table = aot.format_sweep(reports).splitlines()
    mesh = ",".join(str(n) for n in reports[0].mesh_shape.values())
    assert len(table) == 5 and table[1].split()[:5] == ["1", "yes", mesh, "2/1", "dots"]


@pytest.mark.slow
def test_flan_palm_540b_fits_on_512_v4_chips():
    start = time.perf_counter()
    report = aot.check_fit(["--gin_file=runs/flan_palm/540b.gin"], "v4:8x8x8", decode=False)
    print(aot.format_report(report), f"\nfit check took {time.perf_counter() - start:.0f} s")
    assert report.num_chips == 512
    assert report.fits, aot.format_report(report)
    # 540B float32 parameters alone are 4.2 GB per chip when fully sharded over 512 chips.
    assert report.train.argument > 540e9 * 4 / 512
