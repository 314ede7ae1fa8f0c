"""What a mixture feeds the model: `python -m flan_jax.inspect_mixture MIXTURE`.

Prints each task's rate, cap, example count, share of examples and of tokens, and the
epochs it gets over a run of --steps x --batch_size, the mean number of exemplars in the
few-shot prompts of each family, then renders --num_prompts prompts.
Token counts come from the first --sample_examples examples of each task. A task whose
data is missing is listed with the reason and the variable to set; its rate still shows
(a Flan task of unknown size counts as its cap).

  python -m flan_jax.inspect_mixture flan_demo --steps 1500 --batch_size 32
  python -m flan_jax.inspect_mixture flan2022_handbuilt_b --steps 14000 --num_prompts 3
  python -m flan_jax.inspect_mixture --gin_file=mixtures/flan2022_handbuilt.gin --gin.COT_RATIO=0.1
  python -m flan_jax.inspect_mixture --gin_file=my_run.gin  # the run's mixture and modules
"""

from __future__ import annotations

import importlib

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import numpy as np
import seqio

from flan_jax import cli
from flan_jax.data import get_mixture_or_task

DEFAULT_MODULES = ("tasks.demo", "tasks.flan")


def parse_lengths(text: str) -> dict[str, int]:
    try:
        pairs = (item.split("=") for item in text.split(",") if item)
        return {key.strip(): int(value) for key, value in pairs}
    except ValueError:
        raise ValueError(
            f"--feature_lengths={text!r}: write name=length pairs, e.g. inputs=2048,targets=512."
        ) from None


def rates(mixture_or_task) -> tuple[dict[str, float], list[str]]:
    """Normalized rate per task name, and notes on what could not be known."""
    from tasks.flan import mixtures

    if isinstance(mixture_or_task, seqio.Task):
        return {mixture_or_task.name: 1.0}, []
    notes = []
    spec = mixtures.SPECS.get(mixture_or_task.name)
    if spec is not None:
        try:
            raw = mixtures.plan(*spec)
        except ValueError as e:
            notes.append(str(e))
            raw = mixtures.plan(*spec, strict=False)
    else:
        raw = {task.name: mixture_or_task.get_rate(task) for task in mixture_or_task.tasks}
    total = sum(raw.values()) or 1.0
    return {name: rate / total for name, rate in raw.items()}, notes


def sample(task: seqio.Task, lengths, count: int) -> list[dict]:
    dataset = task.get_dataset(lengths, split="train", shuffle=False, num_epochs=1)
    return list(dataset.take(count).as_numpy_iterator())


def cap_of(task_name: str):
    from tasks.flan import mixtures, released

    family = mixtures.family_of(task_name)
    return mixtures.CAPS[family] if family else released.cap_of(task_name)


def inspect(name, steps, batch_size, lengths, num_prompts, sample_examples, out=None):
    out = out or sys.stdout
    mixture = get_mixture_or_task(name)
    shares, notes = rates(mixture)
    rows, samples, missing = [], {}, {}
    for task_name, share in sorted(shares.items(), key=lambda item: -item[1]):
        task = seqio.get_mixture_or_task(task_name)
        try:
            count = task.num_input_examples("train")
        except Exception:
            count = None
        try:
            samples[task_name] = sample(task, lengths, sample_examples)
        except Exception as e:  # Missing data: report it, keep the rest of the table.
            missing[task_name] = (
                str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            )
        rows.append((task_name, share, cap_of(task_name), count))

    def mean_tokens(task_name, feature):
        examples = samples.get(task_name)
        return float(np.mean([len(ex[feature]) for ex in examples])) if examples else None

    token_weight = {
        t: share * (mean_tokens(t, "inputs") + mean_tokens(t, "targets"))
        for t, share, _, _ in rows
        if samples.get(t)
    }
    token_total = sum(token_weight.values()) or 1.0
    # Packing puts several examples in a row: estimate how many from the mean lengths.
    known = [
        (s, mean_tokens(t, "inputs"), mean_tokens(t, "targets"))
        for t, s, _, _ in rows
        if samples.get(t)
    ]
    per_row = 1.0
    if known:
        weight = sum(s for s, _, _ in known) or 1.0
        mean_in = sum(s * i for s, i, _ in known) / weight
        mean_out = sum(s * o for s, _, o in known) / weight
        per_row = max(
            1.0,
            min(
                lengths["inputs"] / max(mean_in, 1.0),
                lengths.get("targets", lengths["inputs"]) / max(mean_out, 1.0),
            ),
        )
    seen = steps * batch_size * per_row

    print(
        f"{name}: {len(rows)} tasks; {steps} steps x batch {batch_size}, about {per_row:.1f} "
        f"packed examples per row ({seen:,.0f} examples); lengths {lengths}",
        file=out,
    )
    print(
        f"{'task':<58} {'rate':>7} {'cap':>7} {'examples':>9} {'ex.share':>8} {'tok.share':>9} "
        f"{'tok in/out':>11} {'epochs':>7}",
        file=out,
    )
    for task_name, share, cap, count in rows:
        tokens_in, tokens_out = mean_tokens(task_name, "inputs"), mean_tokens(task_name, "targets")
        tok_share = (
            f"{100 * token_weight[task_name] / token_total:8.2f}%"
            if task_name in token_weight
            else f"{'?':>9}"
        )
        tok = f"{tokens_in:.0f}/{tokens_out:.0f}" if tokens_in is not None else "?"
        epochs = f"{seen * share / count:7.2f}" if count else f"{'?':>7}"
        examples = count if count is not None else "?"
        print(
            f"{task_name:<58} {share:7.4f} {cap if cap else '-':>7} {examples:>9} "
            f"{100 * share:7.2f}% {tok_share} {tok:>11} {epochs}",
            file=out,
        )
    exemplars = exemplars_per_family(samples)
    if exemplars:
        print(
            "mean exemplars per few-shot prompt (sampled): "
            + ", ".join(f"{f} {mean:.2f} ({n} prompts)" for f, (mean, n) in exemplars.items()),
            file=out,
        )
    for note in notes:
        print(f"note: {note}", file=out)
    if missing:
        print(f"missing data for {len(missing)} tasks (their rows show rates only):", file=out)
        for reason in sorted(set(missing.values())):
            tasks = [t for t, r in missing.items() if r == reason]
            print(f"  {len(tasks)} tasks, e.g. {tasks[0]}: {reason}", file=out)
    render(rows, samples, num_prompts, out)


def exemplars_per_family(samples: dict[str, list[dict]]) -> dict[str, tuple[float, int]]:
    """family -> (mean exemplars, prompts) over the sampled few-shot prompts that say how
    many they hold (those rendered here; the released collection's come rendered)."""
    from tasks import templates
    from tasks.flan import mixtures

    counts: dict[str, list[int]] = {}
    for task_name, examples in samples.items():
        held = [
            int(ex[templates.NUM_EXEMPLARS]) for ex in examples if templates.NUM_EXEMPLARS in ex
        ]
        if held:
            counts.setdefault(mixtures.family_of(task_name) or "other", []).extend(held)
    return {f: (float(np.mean(c)), len(c)) for f, c in sorted(counts.items())}


def render(rows, samples, num_prompts, out) -> None:
    """Prompts drawn like the mixture draws them: tasks by rate (fixed seed)."""
    available = [(t, s) for t, s, _, _ in rows if samples.get(t)]
    if not available or num_prompts <= 0:
        return
    rng = np.random.default_rng(0)
    weights = np.array([s for _, s in available]) + 1e-12
    used: dict[str, int] = {}
    for number in range(num_prompts):
        task_name = available[rng.choice(len(available), p=weights / weights.sum())][0]
        examples = samples[task_name]
        example = examples[used.get(task_name, 0) % len(examples)]
        used[task_name] = used.get(task_name, 0) + 1
        meta = ", ".join(
            f"{key} {example[key].decode() if isinstance(example[key], bytes) else example[key]}"
            for key in ("format", "template_index")
            if key in example
        )
        print(
            f"\n--- prompt {number + 1}: {task_name}{' (' + meta + ')' if meta else ''}", file=out
        )
        print(example["inputs_pretokenized"].decode(), file=out)
        print("--- target", file=out)
        print(example["targets_pretokenized"].decode(), file=out)


def mixture_from_gin() -> str | None:
    """MIXTURE_OR_TASK_NAME of the parsed gin files; `@mixtures.flan_mixture()` is called."""
    try:
        value = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    except ValueError:
        return None
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn()
    return value


def main(argv=None) -> None:
    parser = cli.new_parser(__doc__, gin_files=True)
    parser.add_argument(
        "mixture",
        nargs="?",
        help="a registered mixture or task; default: gin's MIXTURE_OR_TASK_NAME",
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--feature_lengths", default="inputs=2048,targets=512")
    parser.add_argument("--num_prompts", type=int, default=2)
    parser.add_argument(
        "--sample_examples", type=int, default=16, help="examples per task for token counts"
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help=f"module to import (repeatable); always: {', '.join(DEFAULT_MODULES)}",
    )
    args = cli.parse_args(parser, argv)
    for module in (*DEFAULT_MODULES, *args.module):
        importlib.import_module(module)
    if args.gin_file or args.gin_bindings:
        cli.parse_gin(
            args.gin_file, args.gin_bindings, search_paths=args.gin_search_paths.split(",")
        )
    name = args.mixture or mixture_from_gin()
    if not name:
        parser.error("name a MIXTURE, or pass a --gin_file that sets MIXTURE_OR_TASK_NAME")
    inspect(
        name,
        args.steps,
        args.batch_size,
        parse_lengths(args.feature_lengths),
        args.num_prompts,
        args.sample_examples,
    )


if __name__ == "__main__":
    main()
