"""Benchmark fixture data in each benchmark's real layout, shared by the tests of the readers
(test_eval_loaders.py) and of the evaluate entry point (test_evaluate.py)."""

import csv
import json
import os

import tasks.eval

SUBTASKS = {"mmlu": ["anatomy"], "bbh": ["navigate"], "tydiqa": ["swahili"], "mgsm": ["de", "zh"]}
BBH_CANARY = "BIG-Bench Hard [canary GUID 0000]"
NAVIGATE_QUESTION = "If you follow these instructions, do you return to the starting point?"


def _mmlu(root):
    rows = {
        "dev": [
            [f"Dev question {i}?", "bone", "skin", "lung", "liver", "ABCD"[i % 4]] for i in range(6)
        ],
        "val": [["Which organ pumps blood?", "heart", "lung", "skin", "bone", "A"]],
        "test": [
            ["Which organ pumps blood?", "lung", "heart", "skin", "bone", "B"],
            ['How many chambers, e.g. "four", has the heart?', "two", "three", "four", "five", "C"],
        ],
    }
    for split, split_rows in rows.items():
        os.makedirs(root / "data" / split, exist_ok=True)
        with open(root / "data" / split / f"anatomy_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(split_rows)
    cot = (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Q: Which bone is in the arm?\n(A) femur (B) humerus (C) tibia (D) skull\n"
        "A: Let's think step by step. The humerus is the arm bone. The answer is (B)."
    )
    (root / "mmlu-cot.json").write_text(json.dumps({"anatomy": cot}))


# More BBH tasks in the real inputs' formats: options listed as "(A) ..." or "- Yes", or none
# (a closed set of answers, or free-form ones).
BBH_MORE = {
    "logical_deduction_three_objects": [
        {
            "input": "A shelf holds a red, a green and a blue book. The red book is leftmost. "
            f"Which book is leftmost?\nOptions:\n{options}",
            "target": target,
        }
        for options, target in [
            ("(A) The red book\n(B) The green book\n(C) The blue book", "(A)"),
            ("(A) The blue book\n(B) The green book\n(C) The red book", "(C)"),
        ]
    ],
    "causal_judgement": [
        {
            "input": "How would a typical person answer each of the following questions about "
            f"causation?\n{story} Did the spark cause the fire?\nOptions:\n- Yes\n- No",
            "target": target,
        }
        for story, target in [("A spark fell on dry grass.", "Yes"), ("It rained all day.", "No")]
    ],
    "object_counting": [
        {
            "input": "I have a chair, two tables, and a lamp. How many objects do I have?",
            "target": "4",
        }
    ],
    "web_of_lies": [
        {
            "input": f"Question: Ann tells the truth. Bob says Ann {says}. Does Bob tell it?",
            "target": target,
        }
        for says, target in [("lies", "No"), ("tells the truth", "Yes")] * 2
    ],
}


def _bbh(root):
    os.makedirs(root / "bbh")
    os.makedirs(root / "cot-prompts")
    examples = [
        {"input": f"{NAVIGATE_QUESTION} Take 1 step.", "target": "No"},
        {"input": f"{NAVIGATE_QUESTION} Turn around.", "target": "Yes"},
    ]
    (root / "bbh" / "navigate.json").write_text(json.dumps({"examples": examples}))
    shots = "\n\n".join(
        f"Q: Do you return? Take {n} steps. Take {n} steps backward.\n"
        f"A: Let's think step by step.\nWe go {n} forward and {n} back. So the answer is Yes."
        for n in (1, 2, 3)
    )
    (root / "cot-prompts" / "navigate.txt").write_text(
        f"{BBH_CANARY}\n-----\nGiven a series of navigation instructions, determine whether one "
        f"would end up back at the starting point.\n\n{shots}\n"
    )
    for task, task_examples in BBH_MORE.items():
        (root / "bbh" / f"{task}.json").write_text(json.dumps({"examples": task_examples}))
        (root / "cot-prompts" / f"{task}.txt").write_text(
            f"{BBH_CANARY}\n-----\nAnswer the question.\n\n"
            "Q: Which comes first, 1 or 2?\nA: Let's think step by step.\nOne is less than two. "
            "So the answer is 1.\n"
        )


def _squad(questions):
    """SQuAD-format JSON: one paragraph per (id, context, question, answers)."""

    def paragraph(qa_id, context, question, answers):
        answers = [{"text": answer, "answer_start": 0} for answer in answers]
        qa = {"id": qa_id, "question": question, "answers": answers}
        return {"paragraphs": [{"context": context, "qas": [qa]}]}

    return {"data": [paragraph(*question) for question in questions]}


def _tydiqa(root):
    train = _squad(
        [
            ("english-1", "Paris is in France.", "Where is Paris?", ["France"]),
            (
                "swahili-7",
                "Dodoma ni mji mkuu wa Tanzania.",
                "Mji mkuu wa Tanzania ni upi?",
                ["Dodoma"],
            ),
        ]
    )
    dev = _squad(
        [
            ("english-2", "Rome is in Italy.", "Where is Rome?", ["Italy"]),
            (
                "swahili-8",
                "Nairobi ni mji mkuu wa Kenya.",
                "Mji mkuu wa Kenya ni upi?",
                ["Nairobi", "mji wa Nairobi"],
            ),
            ("swahili-9", "Kampala iko Uganda.", "Kampala iko wapi?", ["Uganda"]),
        ]
    )
    (root / "tydiqa-goldp-v1.1-train.json").write_text(json.dumps(train))
    (root / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps(dev))


def _mgsm(root):
    shots = {
        "de": [
            {
                "q": f"Frage: Tom hat {n} Äpfel und bekommt 1 dazu. Wie viele hat er?",
                "a": f"Schritt-für-Schritt-Antwort: {n} + 1 = {n + 1}. Die Antwort lautet {n + 1}.",
            }
            for n in range(1, 9)
        ],
        "zh": [
            {
                "q": f"问题：汤姆有 {n} 个苹果，又得到 1 个。他有几个？",
                "a": f"逐步解答：{n} + 1 = {n + 1}。答案是 {n + 1}。",
            }
            for n in range(1, 9)
        ],
    }
    table = {lang: {str(i + 1): shot for i, shot in enumerate(s)} for lang, s in shots.items()}
    (root / "exemplars.py").write_text(
        '"""Prompts for mgsm."""\nEXEMPLAR_NUMBER_ANSWERS = [2, 3]\n\n'
        f"MGSM_EXEMPLARS = {json.dumps(table, ensure_ascii=False, indent=1)}\n"
    )
    (root / "mgsm_de.tsv").write_text(
        "Anna hat 3 Äpfel und isst 1. Wie viele bleiben?\t2\nWas ist 1000 + 234?\t1234\n"
    )
    (root / "mgsm_zh.tsv").write_text("汤姆有 5 个苹果，吃了 2 个。还剩几个？\t3\n")


def write_benchmarks(root) -> dict[str, str]:
    """Fixture data for every suite; returns {env var: directory}."""
    writers = {"mmlu": _mmlu, "bbh": _bbh, "tydiqa": _tydiqa, "mgsm": _mgsm}
    dirs = {}
    for name, write in writers.items():
        os.makedirs(root / name)
        write(root / name)
        dirs[tasks.eval.DATA_DIR_ENVS[name]] = str(root / name)
    return dirs
