"""The hand-built Flan 2022 mixtures: capped example-proportional rates, proportions A and
B, the CoT ratio, and user tasks mixed in at a share.

Hand-built: these mix the tasks rendered here from raw sources with our own templates, an
approximation of the paper's collection for offline and CPU use; `coverage` says how much of
it they hold (`HANDBUILT_NAME` mixtures log it when built). The paper's own data is the
released collection (`tasks.flan.released`, gin/mixtures/flan2022_released.gin).

Within a family (Muffin, T0-SF, NIV2, CoT) a task's weight is its train example count
capped at the family's cap (the paper's 30k / 20k / 5k / 100k), split evenly over its
formats; the family's weights are then scaled to the family's proportion of the whole.
The CoT input-inversion tasks are their own submix, as FLAN's CoT-II: together they get
0.3 of the rate of the other CoT tasks, within CoT's share.
Counts are read when a mixture is first used, not at registration; a count that cannot
be read (an unprepared TFDS dataset, mock data) counts as the cap.

Registered names:
  flan_<family>_<format>   one family in one format (e.g. flan_muffin_fs_opt, flan_cot_zs_cot)
  flan_<family>            one family, all formats
  flan2022_handbuilt_a, _b the four families in proportions A and B
`flan_mixture(...)` (gin: `MIXTURE_OR_TASK_NAME = @mixtures.flan_mixture()`) registers the
full mixture with a CoT ratio, data directories and user tasks, and returns its name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import seqio

from tasks.flan import cot, niv2, registry
from tasks.flan.registry import FAMILIES

CAPS = {"muffin": 30_000, "t0sf": 20_000, "niv2": 5_000, "cot": 100_000}
PROPORTIONS = {
    "a": {"muffin": 0.52, "t0sf": 0.15, "cot": 0.03, "niv2": 0.30},
    "b": {"muffin": 0.460, "t0sf": 0.279, "cot": 0.018, "niv2": 0.242},
}
# Names of the hand-built mixtures: flan2022_handbuilt_a, flan2022_handbuilt_b_cot0.1, ...
HANDBUILT_NAME = "flan2022_handbuilt"
# What the paper's collection holds per family (Chung et al. 2022: 1,836 tasks in all).
PAPER_COLLECTION = {
    "muffin": "80 tasks",
    "t0sf": "193 tasks",
    "niv2": "1,554 tasks",
    "cot": "9 datasets",
}

# Tasks a user module added with `add_user_task`: name -> share of the whole mixture.
USER_TASKS: dict[str, float] = {}
# Mixture name -> the `plan` arguments it was registered with (for `flan_jax.inspect_mixture`).
SPECS: dict[str, tuple] = {}


def with_cot_ratio(proportions: Mapping[str, float], cot_ratio: float | None) -> dict[str, float]:
    """Proportions with CoT at `cot_ratio` of the whole and the other families rescaled to
    fill the rest in their original relative shares."""
    proportions = dict(proportions)
    if cot_ratio is None:
        return proportions
    if not 0.0 <= cot_ratio < 1.0:
        raise ValueError(f"COT_RATIO={cot_ratio} must be in [0, 1); e.g. 0.05 for a 5% CoT share.")
    others = sum(p for family, p in proportions.items() if family != "cot")
    if others <= 0:
        raise ValueError(
            f"COT_RATIO={cot_ratio} needs families besides CoT to rescale; got {proportions}."
        )
    scaled = {f: p * (1.0 - cot_ratio) / others for f, p in proportions.items() if f != "cot"}
    return {**scaled, "cot": cot_ratio}


def capped_count(count: int | None, cap: int) -> int:
    """A task's weight within its family: its example count, at most the cap (unknown: the cap)."""
    return cap if count is None else min(count, cap)


def family_rates(
    counts: Mapping[str, tuple[int | None, int]], cap: int | Mapping[str, int], total: float
) -> dict[str, float]:
    """task -> rate of each of its formats, for `counts` task -> (examples, formats); the
    rates of all formats of all tasks sum to `total`. `cap`: one for all tasks, or per task
    (a family mixing sources with different caps, e.g. Flan 2021 and Dialog)."""
    caps = cap if isinstance(cap, Mapping) else dict.fromkeys(counts, cap)
    weights = {task: capped_count(n, caps[task]) for task, (n, _) in counts.items()}
    whole = sum(weights.values())
    if whole == 0:
        return {task: 0.0 for task in counts}
    return {task: total * weights[task] / whole / formats for task, (_, formats) in counts.items()}


def family_of(task_name: str) -> str | None:
    """The family of a registered Flan seqio task name, or None for other tasks."""
    for family in FAMILIES:
        if any(name == task_name for _, name in registry.variants(family)):
            return family
    return None


def task_count(task: registry.FlanTask) -> int | None:
    try:
        return task.source.num_input_examples(task.train_split)
    except Exception:  # Unreadable data counts as the cap; using it fails with the reason.
        return None


def plan(
    proportions: Mapping[str, float],
    fmt_filter: str | None = None,
    user_tasks: Mapping[str, float] | None = None,
    strict: bool = True,
) -> dict[str, float]:
    """seqio task name -> rate (summing to 1) of a mixture of the registered Flan tasks.

    strict: a family with a positive proportion but no registered tasks is an error (else
    the others are rescaled, as `python -m flan_jax.inspect_mixture` shows).
    """
    user_tasks = dict(user_tasks or {})
    user_share = total_user_share(user_tasks)
    present = {f: p for f, p in proportions.items() if p > 0 and registry.variants(f, fmt_filter)}
    missing = sorted(set(f for f, p in proportions.items() if p > 0) - set(present))
    if missing and strict:
        raise ValueError(
            f"The mixture gives {', '.join(missing)} a share but no such tasks are registered: "
            + "; ".join(missing_hint(f) for f in missing)
        )
    scale = (1.0 - user_share) / (sum(present.values()) or 1.0)
    rates = {}
    for family, proportion in present.items():
        submixes = {}  # inversion tasks or not -> task -> (examples, formats)
        for task in registry.REGISTERED[family].values():
            formats = [f for f in task.formats if fmt_filter in (None, f)]
            if formats:
                submix = submixes.setdefault(cot.is_inversion(task), {})
                submix[task.name] = (task_count(task), len(formats))
        per_task = {}
        for inverts, counts in submixes.items():
            share = submix_share(inverts, len(submixes))
            per_task.update(family_rates(counts, CAPS[family], proportion * scale * share))
        for task, name in registry.variants(family, fmt_filter):
            rates[name] = per_task[task.name]
    rates.update(user_tasks)
    return rates


def submix_share(inverts: bool, submixes: int) -> float:
    """The share of its family's rate that a submix gets: FLAN's CoT-II submix (the CoT
    input inversions) gets `cot.INVERSION_RATE` of the CoT tasks' rate, within CoT's share;
    a family of one submix gets all of it."""
    if submixes == 1:
        return 1.0
    return (cot.INVERSION_RATE if inverts else 1.0) / (1.0 + cot.INVERSION_RATE)


def total_user_share(user_tasks: Mapping[str, float]) -> float:
    """The user tasks' share of the whole mixture (below 1: the Flan tasks fill the rest)."""
    share = sum(user_tasks.values())
    if share >= 1.0:
        raise ValueError(f"User task shares {dict(user_tasks)} sum to {share}; keep them below 1.")
    return share


def missing_hint(family: str) -> str:
    if family == "niv2":
        return "NIV2: set FLAN_JAX_NIV2_DIR to a natural-instructions checkout (or gin NIV2_DIR)"
    if family == "cot":
        return "CoT: set FLAN_JAX_COT_DIR to the cot_data TSV directory (or gin COT_DIR)"
    return f"{family}: import tasks.flan to register its tasks"


def register_mixture(
    name: str,
    proportions: Mapping[str, float],
    fmt_filter: str | None = None,
    user_tasks: Mapping[str, float] | None = None,
) -> str:
    """Registers (or replaces) a mixture whose rates are computed when it is first used."""
    tasks = [n for f in proportions for _, n in registry.variants(f, fmt_filter)]
    tasks += list(user_tasks or {})
    if not tasks:
        return name
    rates = functools.cache(lambda: plan(proportions, fmt_filter, user_tasks))
    SPECS[name] = (dict(proportions), fmt_filter, dict(user_tasks or {}))
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(task, lambda t: rates()[t.name]) for task in tasks])
    return name


def register_all() -> list[str]:
    """The per-family, per-format and full mixtures of the registered tasks."""
    names = []
    for family in FAMILIES:
        only = {family: 1.0}
        formats = sorted({f for task in registry.REGISTERED[family].values() for f in task.formats})
        names += [register_mixture(f"flan_{family}_{fmt}", only, fmt) for fmt in formats]
        if formats:
            names.append(register_mixture(f"flan_{family}", only))
    for key, proportions in PROPORTIONS.items():
        names.append(register_mixture(f"{HANDBUILT_NAME}_{key}", proportions))
    return names


def coverage(proportions: Mapping[str, float] | None = None) -> dict[str, dict]:
    """family -> what the registered (hand-built) tasks hold: `tasks` (FlanTasks: a dataset
    under its templates; in T0-SF under one prompt), `datasets` (distinct sources) and
    `share` of the examples of a mixture in `proportions` (default B)."""
    proportions = PROPORTIONS["b"] if proportions is None else proportions
    whole = sum(proportions.values()) or 1.0
    return {
        family: {
            "tasks": len(registry.REGISTERED[family]),
            "datasets": len({id(t.source) for t in registry.REGISTERED[family].values()}),
            "share": proportions.get(family, 0.0) / whole,
        }
        for family in FAMILIES
    }


def coverage_note(proportions: Mapping[str, float] | None = None) -> str:
    """One line: what a hand-built mixture holds of the paper's collection, per family."""
    parts = []
    for family, c in coverage(proportions).items():
        held = f"{c['tasks']} tasks over {c['datasets']} datasets" if c["tasks"] else "none"
        parts.append(
            f"{family} {held} (paper: {PAPER_COLLECTION[family]}), "
            f"{100 * c['share']:.1f}% of examples"
        )
    return (
        "hand-built approximation of the Flan 2022 collection (our templates over raw "
        "sources; NIV2: the task files of NIV2_DIR): "
        + "; ".join(parts)
        + ". The paper's data: mixtures/flan2022_released.gin."
    )


def add_user_task(task_name: str, share: float) -> None:
    """Mixes a registered seqio task into every `flan_mixture(...)` built afterwards, at
    `share` of the whole (the Flan families keep their relative shares in the rest)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share={share} for {task_name!r} must be in (0, 1), e.g. 0.05 for 5%.")
    seqio.get_mixture_or_task(task_name)  # Fails early, naming the task, if unregistered.
    USER_TASKS[task_name] = share


def flan_mixture(
    proportions: str | Mapping[str, float] = "b",
    cot_ratio: float | None = None,
    niv2_dir: str | None = None,
    cot_dir: str | None = None,
    user_tasks: Mapping[str, float] | None = None,
) -> str:
    """Registers the hand-built Flan 2022 mixture and returns its name, for gin:
    `MIXTURE_OR_TASK_NAME = @mixtures.flan_mixture()`; logs its `coverage_note`.

    proportions: "a" (the paper's ablations), "b" (its final models), or family -> share
      (e.g. {'niv2': 0.5, 'cot': 0.5}) for other mixes.
    cot_ratio: CoT's share of the whole (None: the proportions' own, 3% or 1.8%).
    niv2_dir / cot_dir: data directories (None: $FLAN_JAX_NIV2_DIR / $FLAN_JAX_COT_DIR).
    user_tasks: task name -> share, added to those of `add_user_task`.
    """
    if isinstance(proportions, str):
        key = proportions.lower()
        if key not in PROPORTIONS:
            raise ValueError(
                f"proportions={proportions!r}: use one of {sorted(PROPORTIONS)} or a dict."
            )
        shares, name = PROPORTIONS[key], f"{HANDBUILT_NAME}_{key}"
    else:
        unknown = set(proportions) - set(FAMILIES)
        if unknown or not proportions:
            raise ValueError(f"proportions={dict(proportions)}: keys must be among {FAMILIES}.")
        shares = dict(proportions)
        name = "flan_" + "_".join(f"{family}{share:g}" for family, share in sorted(shares.items()))
    if niv2_dir:
        niv2.register(niv2_dir)
    if cot_dir:
        cot.use_directory(cot_dir)
    if niv2_dir or cot_dir:
        register_all()
    extra = all_user_tasks(user_tasks)
    name = variant_name(name, cot_ratio, extra)
    shares = with_cot_ratio(shares, cot_ratio)
    logging.warning("Flan mixture %s: %s", name, coverage_note(shares))
    return register_mixture(name, shares, user_tasks=extra)


def all_user_tasks(user_tasks: Mapping[str, float] | None) -> dict[str, float]:
    """Those of `add_user_task` and `user_tasks`, each checked to be registered."""
    extra = {**USER_TASKS, **(user_tasks or {})}
    for task_name in extra:
        seqio.get_mixture_or_task(task_name)
    return extra


def variant_name(name: str, cot_ratio: float | None, user_tasks: Mapping[str, float]) -> str:
    """A mixture's name with its CoT ratio and user tasks, so that each variant has its own."""
    if cot_ratio is not None:
        name += f"_cot{cot_ratio:g}"
    if user_tasks:
        name += "_with_" + "_".join(
            f"{task}{share:g}" for task, share in sorted(user_tasks.items())
        )
    return name


MIXTURE_NAMES = register_all()
