"""`make bench`: runs every comparison and rewrites BENCHMARKS.md.

  python -m benchmarks.run [--quick] [--repetitions N] [--only train,decode,...]
                           [--mixtures tasks.demo:flan_demo,...] [--output BENCHMARKS.md]

--quick is a smoke run (2 repetitions, fewer and smaller scaling points, a tiny trainer for
the data comparison): the harness works, the figures are not the ones to quote.

Each section's figures are also kept in BENCHMARKS.json with when, at which commit and under
what load they were measured; `--only` reruns those sections and keeps the others' figures
from there (a full run takes about an hour: a section can be redone on a quiet machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

from benchmarks import _common, collection, data_pipeline, decode_t5, gpu, peak, scaling, train_t5

SECTIONS = ("train", "decode", "data", "scaling", "gpu", "collection", "integrity")
DEFAULT_MIXTURES = ("tasks.demo:flan_demo", "benchmarks.flan_fixtures:flan_fixtures")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import jax, torch, transformers, seqio; print("
         "f'jax {jax.__version__}, torch {torch.__version__}, transformers "
         "{transformers.__version__}, seqio {seqio.__version__}')"],
        capture_output=True, text=True, env={**os.environ, **_common.CPU_ENV}, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _git_commit() -> str:
    """HEAD, marked when tracked files differ from it (the figures are then not HEAD's)."""
    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True,
                                       cwd=_common.REPO_ROOT).stdout.strip()  # fmt: skip
    outputs = ("BENCHMARKS.md", "BENCHMARKS.json", "scaling.png")  # what the run writes
    changed = [line for line in git("status", "--porcelain").splitlines()
               if not line.endswith(outputs)]  # fmt: skip
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " + uncommitted changes" if changed else ""
    )


def _summary(results: dict) -> str:
    rows = []
    if "train" in results:
        t = results["train"]
        target = train_t5.TARGET_RATIO
        rows.append(("training tokens/s, flan_jax / transformers", f"{t['ratio']:.2f}x",
                     f">= {target}x", _common.verdict(t["ratio"], target)))  # fmt: skip
        for side, s in t["sides"].items():
            target = f">= {100 * train_t5.TARGET_MFU:.0f}%" if side == "flan_jax" else "-"
            met = _common.verdict(s["mfu"], train_t5.TARGET_MFU) if side == "flan_jax" else "-"
            rows.append((f"training MFU, {side} (CPU fp32)", f"{100 * s['mfu']:.1f}%", target, met))
    if "decode" in results:
        d = results["decode"]
        rows.append(("greedy decoding tokens/s, flan_jax / transformers", f"{d['ratio']:.2f}x",
                     f">= {decode_t5.TARGET_RATIO}x",
                     _common.verdict(d["ratio"], decode_t5.TARGET_RATIO)))  # fmt: skip
    for m in results.get("data", {}).get("mixtures", []):
        met = _common.verdict(m["efficiency"], data_pipeline.TARGET_EFFICIENCY)
        rows.append((f"packing efficiency, {m['mixture']} at {m['lengths']}, {m['packer']} packer",
                     f"{100 * m['efficiency']:.2f}%", ">= 95%", met))  # fmt: skip
    if "gpu" in results:
        mfu = results["gpu"]["mfu"]
        rows.append(("GPU training MFU (T5-XL, bf16)",
                     "not measured" if mfu is None else f"{100 * mfu:.1f}%", ">= 45%",
                     "-" if mfu is None else _common.verdict(mfu, gpu.TARGET_MFU)))  # fmt: skip
    if "collection" in results:
        rows += collection.summary_rows(results["collection"])
    if "integrity" in results:
        rows += _integrity_rows(results["integrity"])
    return _common.table(("figure", "measured", "target", ""), rows)


INTEGRITY_TARGET = 0.10


def _integrity(quick: bool) -> dict:
    """benchmarks.checkpoint_integrity in a process of its own: it needs 8 fake devices,
    which must be set before jax is imported."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.checkpoint_integrity", "--json",
         "--scale", "0.25" if quick else "1.0", "--repetitions", "1" if quick else "5"],
        capture_output=True, text=True, env={**os.environ, **_common.CPU_ENV},
        cwd=_common.REPO_ROOT,
    )  # fmt: skip
    found = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if out.returncode or not found:
        raise RuntimeError(f"checkpoint_integrity failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return json.loads(found.group(1))


def _integrity_rows(result: dict) -> list[tuple]:
    rows = [
        (f"checkpoint {op} overhead, flan_jax integrity / Orbax alone (T5-large state)",
         f"{100 * result['overhead'][f'orbax_{op}']:+.1f}%", f"<= {100 * INTEGRITY_TARGET:.0f}%",
         _common.verdict(-result["overhead"][f"orbax_{op}"], -INTEGRITY_TARGET))
        for op in ("save", "restore")
    ]  # fmt: skip
    worst = max(p["read"] / p["own"] for p in result["two_process"])
    rows.append(("restore bytes read / own chunk bytes, worst of 2 processes",
                 f"{worst:.2f}", "own shards + metadata", "-"))  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 repetitions, fewer points"
    )
    parser.add_argument(
        "--repetitions", type=int, help="timed repetitions per side (default 5; 2 with --quick)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument(
        "--mixtures",
        default=",".join(DEFAULT_MIXTURES),
        help="module:mixture pairs for the data section; the module registers the mixture",
    )
    parser.add_argument("--output", default=os.path.join(_common.REPO_ROOT, "BENCHMARKS.md"))
    args = parser.parse_args(argv)  # fmt: skip
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        parser.error(f"--only: unknown sections {unknown}; choose from {SECTIONS}")
    repetitions = args.repetitions or (2 if args.quick else 5)
    if repetitions < 1:
        parser.error(f"--repetitions={repetitions} must be >= 1")

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    log = lambda message: print(
        f"[bench {time.perf_counter() - started:6.0f}s] {message}", flush=True
    )
    kept = _kept_sections(args.output, args.quick, sections)
    log("measuring the fp32 matmul peak")
    machine_peak = peak.measure(repetitions)
    measured = {"peak": _measured(machine_peak, load_before)}
    steps = {
        "train": ("1. Training throughput against transformers (CPU)",
                  lambda: train_t5.measure(repetitions, machine_peak["peak_gflops"])),
        "decode": ("2. Greedy decoding against transformers generate() (CPU)",
                   lambda: decode_t5.measure(repetitions)),
        "data": ("3. Data pipeline and packing",
                 lambda: data_pipeline.measure(args.mixtures.split(","), repetitions, args.quick)),
        "scaling": ("4. Scaling: step time against sequence length and model size",
                    lambda: scaling.measure(repetitions, machine_peak["peak_gflops"], args.quick)),
        "gpu": ("5. GPU", lambda: gpu.measure(repetitions)),
        "collection": ("6. The Flan 2022 collection at scale: Beam cache and Grain against "
                       "seqio streaming", lambda: collection.measure(args.quick)),
        "integrity": ("7. Checkpoint integrity: overhead on Orbax, bytes read per process",
                      lambda: _integrity(args.quick)),
    }  # fmt: skip
    titles = {"peak": "Machine peak (fp32 matmul)", **{n: title for n, (title, _) in steps.items()}}
    for done, name in enumerate(sections, 1):
        title, run = steps[name]
        log(f"{name}: {title}")
        section_load = os.getloadavg()[0]
        measured[name] = _measured(run(), section_load)
        # Rewritten after every section, so an interrupted run still leaves its figures.
        minutes = (time.perf_counter() - started) / 60
        everything = {**kept, **measured}
        with open(_json_path(args.output), "w") as f:
            json.dump({"quick": args.quick, "sections": everything}, f, indent=1)
        _write(args, repetitions, everything, titles, minutes, load_before, sections[done:])
    log(f"wrote {args.output} ({minutes:.1f} min)")


def _json_path(output: str) -> str:
    return os.path.splitext(output)[0] + ".json"


def _measured(result: dict, load_before: float) -> dict:
    """A section's figures with where they come from."""
    return {
        "result": result,
        "when": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "commit": _git_commit(),
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def _kept_sections(output: str, quick: bool, rerun: list[str]) -> dict:
    """The sections of the last run that this one does not redo; none where one of the two
    runs is --quick and the other is not."""
    try:
        with open(_json_path(output)) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return {}
    if stored.get("quick") != quick:
        return {}
    return {k: v for k, v in stored["sections"].items() if k in SECTIONS and k not in rerun}


def _write(args, repetitions, measured, titles, minutes, load_before, pending) -> None:
    command = "make bench" + (" BENCH_QUICK=1" if args.quick else "")
    status = (
        f"**Incomplete: still to run: {', '.join(pending)}** (after {minutes:.1f} minutes)"
        if pending
        else f"it took {minutes:.1f} minutes"
    )
    quick_note = " **Quick run: smoke figures only.**" if args.quick else ""
    header = f"""# Benchmarks

Generated by `{command}` (`python -m benchmarks.run{" --quick" if args.quick else ""}`) on
{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC at commit {_git_commit()};
{status}. Do not edit by hand: rerun `make bench`.

- Machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()},
  Python {platform.python_version()}; {_versions()}.
- Load: 1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the
  end, on {os.cpu_count()} cores. Above the core count other processes share the cores: the
  ratios hold (both sides suffer alike), absolute figures and MFU drop.
- malloc: each side as its users get it. The flan_jax (and jax peak) workers call
  `flan_jax.allocator.configure()` first, as flan_jax's entry points do: on the CPU backend,
  glibc's huge-page tunable (`glibc.malloc.hugetlb=1`), so XLA's per-step temporaries, mapped
  afresh every step, are faulted in 2 MiB at a time instead of 4 KiB (benchmarks/PROFILE.md).
  transformers and torch run under glibc's defaults; the data pipeline workers too.
- Threads: every worker uses all {os.cpu_count()} cores (XLA's CPU client by default,
  `torch.set_num_threads({os.cpu_count()})` for torch).
- Method: each side runs in its own worker process under one driver; each side's setup
  builds its model and makes one untimed call (for flan_jax: the compile), the driver runs
  one untimed round, then {repetitions} timed repetitions alternating A, B, A, B, so drift of
  the machine hits both sides alike.
  Figures are medians; ranges are min-max of the repetitions.{quick_note}

## Summary

{_summary({name: m["result"] for name, m in measured.items()})}
"""
    bodies = [
        f"\n## {titles[name]}\n\n_Measured {m['when']} at commit {m['commit']}; 1-minute load "
        f"average {m['load'][0]} at its start, {m['load'][1]} at its end._\n\n"
        f"{m['result']['markdown']}"
        for name, m in sorted(measured.items(), key=lambda item: list(titles).index(item[0]))
    ]
    text = header + "".join(bodies)
    with open(args.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
