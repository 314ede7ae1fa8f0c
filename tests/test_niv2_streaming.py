"""The NIV2 task reader streams: instances come one at a time from a bounded buffer, match
what `json.load` reads from the same file, and a dataset reads only what it yields."""

import json
import os
import tracemalloc

import pytest

from tasks.flan import sources

TRICKY_INSTANCES = [
    {"id": "1", "input": 'quote " backslash \\ slash / tab \t newline \n end', "output": ["a"]},
    {"id": "2", "input": "brackets ] } [ { and a comma, inside", "output": ["]"]},
    {"input": "naïve café — 東京 😀 \u2028", "output": ["ünïcödé"], "id": "3"},
    {"id": "4", "input": "nested", "output": ["o"], "meta": {"a": [1, {"b": "]}"}], "c": None}},
    {"id": "5", "input": "a string output", "output": "only one"},
    {"id": "6", "input": "numbers", "output": [12345.5, "second"], "n": -1.25e10},
]


def _write(path, task: dict, **dump_args) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(task, f, **dump_args)
    return str(path)


def _expected(path) -> tuple[str, list[dict]]:
    """Definition and instances as the reader before streaming built them, from json.load."""
    with open(path, encoding="utf-8") as f:
        task = json.load(f)
    instances = []
    for instance in task["Instances"]:
        outputs = instance["output"]
        first = outputs if isinstance(outputs, str) else outputs[0]
        instances.append({"input": instance["input"], "output": str(first)})
    return " ".join(task["Definition"]).strip(), instances


@pytest.mark.parametrize("read_bytes", [1, 7, 1 << 16])
@pytest.mark.parametrize(
    "layout",
    [
        ("Definition", "Instances", "Source"),  # "Instance License" follows "Instances"
        ("Instances", "Source", "Definition"),
        ("Source", "Instances", "Count", "Definition"),
    ],
)
@pytest.mark.parametrize("dump_args", [{"indent": 4}, {"ensure_ascii": False}, {}])
def test_reader_matches_json_load_on_tricky_files(
    tmp_path, monkeypatch, read_bytes, layout, dump_args
):
    # Reads of 1 and 7 bytes split escapes, multi-byte characters and numbers between reads.
    monkeypatch.setattr(sources, "_NIV2_READ_BYTES", read_bytes)
    values = {
        "Definition": ['Answer "exactly"; note:', "é\\n part two."],
        "Instances": TRICKY_INSTANCES,
        "Source": ["fixture"],
        "Count": 1234567890123,
    }
    path = _write(tmp_path / "task900_tricky.json", {k: values[k] for k in layout}, **dump_args)
    definition, instances = _expected(path)
    assert sources.niv2_definition(path) == definition
    assert list(sources.niv2_instances(path)) == instances
    assert sources.niv2_count(path) == len(TRICKY_INSTANCES)


@pytest.mark.parametrize(
    "content, error",
    [
        (
            b'\r\n { "Definition" :\t"d" ,\r\n"Instances":[ {"input":"i","output":["o"]} ,\r\n'
            b'  {"input": 3, "output": ["o"]}]}\r\n',
            r":4: Instances\[1\] needs a string",  # CRLF and odd whitespace, line of the instance
        ),
        (
            b'{"Definition": "d", "Instances": [{"input": "i", "output": ["o"]}]}\n}',
            r":2: invalid JSON \(extra data",
        ),
        (
            b'{"Definition": "d",\n"Instances": [{"input": "i", "output": ["o]}]}',
            r":2: invalid JSON \(Unterminated",
        ),
        (b'{"Definition": "d", "Instances": {"input": "i"}}', r':1: "Instances" must be a list'),
        (b'["Definition", "Instances"]', r':1: expected a JSON object with "Definition"'),
    ],
)
def test_malformed_files_name_the_line(tmp_path, content, error):
    path = tmp_path / "task901_malformed.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}{error}"):
        sources.niv2_count(str(path))


def _many_instances(path, count: int) -> str:
    filler = "word " * 60
    instances = [
        {"id": f"t-{i}", "input": f"{i} {filler}", "output": [f"answer {i}"]} for i in range(count)
    ]
    return _write(path, {"Definition": ["d"], "Instances": instances}, indent=4)


def test_reading_a_task_holds_a_bounded_buffer_not_its_instances(tmp_path):
    path = _many_instances(tmp_path / "task904_large.json", 20_000)
    size = os.path.getsize(path)
    assert size > 7_000_000
    tracemalloc.start()
    try:
        assert sources.niv2_count(path) == 20_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few reads of 64 KiB (decoded text, one read ahead); the file is 7 MB.
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("read_bytes", [7, 1 << 16])
def test_a_dataset_reads_a_block_of_instances_at_a_time(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(sources, "_NIV2_READ_BYTES", read_bytes)
    path = _write(
        tmp_path / "task905_blocks.json",
        {"Definition": "d", "Instances": TRICKY_INSTANCES * 200, "Instance License": ["x"]},
    )
    definition, instances = _expected(path)
    source = sources.niv2_source(path)
    assert source.num_input_examples("train") == 1_200  # Counted (and cached) up front.
    blocks = []
    read_block = sources._niv2_block

    def counting(*args):
        blocks.append(read_block(*args))
        return blocks[-1]

    monkeypatch.setattr(sources, "_niv2_block", counting)
    dataset = source.get_dataset("train", shuffle=False)
    first = list(dataset.take(3).as_numpy_iterator())
    # A few blocks of 128 (tf.data may read one or two ahead), not the 1,200 instances.
    assert sum(len(b) for b in blocks) <= 4 * sources._NIV2_BLOCK, [len(b) for b in blocks]
    rows = [{k: v.decode() for k, v in row.items()} for row in dataset.as_numpy_iterator()]
    assert rows == [{"definition": definition, **i} for i in instances]  # json.load's, in order
    assert [{k: v.decode() for k, v in row.items()} for row in first] == rows[:3]


def test_partly_read_streams_hold_no_open_files(tmp_path):
    path = _many_instances(tmp_path / "task906_large.json", 2_000)
    fds = len(os.listdir("/proc/self/fd"))
    iterators = [iter(sources.niv2_instances(path)) for _ in range(50)]
    for iterator in iterators:
        next(iterator)
    assert len(os.listdir("/proc/self/fd")) == fds
