"""flan_jax.infer on JSONL against transformers' generate and log-likelihoods (T5), and against
full forward passes without a cache (the decoder-only model)."""

import json

import numpy as np
import pytest
import sentencepiece as spm
from decoder_testing import Reference, save_checkpoint
from hf_testing import TEXT

from flan_jax import infer, model_loader, partitioning, predict

torch = pytest.importorskip("torch")

MAX_INPUT_LENGTH = 64
MAX_DECODE_LENGTH = 24
EXAMPLES = [
    {"inputs": TEXT[0], "targets": "the quick fox"},
    {"inputs": TEXT[1]},
    {"inputs": TEXT[2], "targets": "yes", "id": 7},
    {"inputs": "no"},
    {"inputs": TEXT[3], "targets": "what is the answer"},
]


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer") / "in.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return str(path)


def run(tmp_path, input_file, *source):
    output = tmp_path / "out.jsonl"
    infer.main(
        [
            *source,
            "--input",
            input_file,
            "--output",
            str(output),
            "--batch_size",
            "8",
            "--max_input_length",
            str(MAX_INPUT_LENGTH),
            "--max_decode_length",
            str(MAX_DECODE_LENGTH),
        ]
    )
    return [json.loads(line) for line in output.read_text().splitlines()]


@pytest.fixture(scope="module")
def expected(hf_model, hf_dir):  # noqa: F811
    """HF's greedy text and summed target log-likelihood per example."""
    sp = spm.SentencePieceProcessor(model_file=f"{hf_dir}/spiece.model")
    results = []
    for example in EXAMPLES:
        ids = torch.tensor([sp.encode(example["inputs"]) + [1]])
        with torch.no_grad():
            generated = hf_model.generate(
                input_ids=ids, do_sample=False, num_beams=1, max_new_tokens=MAX_DECODE_LENGTH
            )[0, 1:].tolist()
        if 1 in generated:
            generated = generated[: generated.index(1)]
        result = {"prediction": sp.decode(generated)}
        if "targets" in example:
            labels = torch.tensor([sp.encode(example["targets"]) + [1]])
            with torch.no_grad():
                logits = hf_model(input_ids=ids, labels=labels).logits
            log_probs = torch.log_softmax(logits, -1)[0].gather(-1, labels[0, :, None])
            result["score"] = float(log_probs.sum())
        results.append(result)
    return results


def check(results, expected):
    assert len(results) == len(EXAMPLES)
    assert any(e["prediction"] for e in expected), "a random model should produce some text"
    for example, result, reference in zip(EXAMPLES, results, expected):
        assert {k: result[k] for k in example} == example  # input fields are passed through
        assert result["prediction"] == reference["prediction"]
        assert ("score" in result) == ("score" in reference)
        if "score" in reference:
            np.testing.assert_allclose(result["score"], reference["score"], rtol=1e-3, atol=1e-3)


def test_infer_on_an_hf_dir_matches_hf(hf_dir, input_file, expected, tmp_path):  # noqa: F811
    check(run(tmp_path, input_file, "--checkpoint", hf_dir), expected)


def test_infer_on_an_imported_checkpoint_matches_hf(
    imported,
    input_file,
    expected,
    tmp_path,  # noqa: F811
):
    check(run(tmp_path, input_file, "--checkpoint", imported), expected)


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_infer_on_a_decoder_only_checkpoint_matches_full_forward_passes(
    prefix_lm, input_file, tmp_path_factory, tmp_path
):
    """Features from the model's own converter, cached decoding and scoring equal greedy
    decoding and scores by full forward passes (infer built T5 features by hand and failed
    inside jit with KeyError: 'decoder_causal_attention')."""
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("palm"), prefix_lm=prefix_lm)
    assert checkpoint.model.config.prefix_lm == prefix_lm
    results = run(tmp_path, input_file, "--checkpoint", checkpoint.path)
    vocabulary = checkpoint.vocabulary
    reference = Reference(checkpoint, 1 + MAX_INPUT_LENGTH + MAX_DECODE_LENGTH)
    expected, lengths = [], []
    for example in EXAMPLES:
        prompt = vocabulary.encode(example["inputs"])[: MAX_INPUT_LENGTH - 1] + [1]
        tokens = reference.greedy(prompt, MAX_DECODE_LENGTH)
        lengths.append(len(tokens))
        result = {"prediction": vocabulary.decode(tokens)}
        if "targets" in example:
            target = vocabulary.encode(example["targets"])[: MAX_DECODE_LENGTH - 1] + [1]
            result["score"] = reference.score(prompt, target)
        expected.append(result)
    assert len(set(lengths)) > 1, "outputs that end at different lengths"
    check(results, expected)


def test_lengths_past_a_decoders_context_are_refused():
    model, _ = model_loader.model_from_gin_file("models/palm/tiny.gin")
    settings = predict.DecodeSettings(max_decode_length=64)
    with pytest.raises(ValueError, match="--max_input_length / --max_decode_length: inputs=2000"):
        infer.infer(
            [], model, None, None, None, batch_size=8, max_input_length=2000, settings=settings
        )


@pytest.mark.parametrize(
    "line", ['{"inputs": "ok"', '["inputs"]', '{"targets": "x"}', '{"inputs": 3}']
)
def test_malformed_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"inputs": "fine"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=f"{path}:3: "):
        infer.read_jsonl(str(path))


def test_beam_search_is_reachable_from_the_command_line(hf_dir, input_file, tmp_path):  # noqa: F811
    results = run(
        tmp_path, input_file, "--checkpoint", hf_dir, "--num_beams", "3", "--num_decodes", "2"
    )
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(), partitioning.logical_axis_rules()
    )
    loaded = model_loader.load(hf_dir, partitioner)
    vocabulary = loaded.vocabulary()
    rows = np.zeros((len(EXAMPLES), 64), np.int32)
    for row, example in enumerate(EXAMPLES):
        ids = vocabulary.encode(example["inputs"]) + [1]
        rows[row, : len(ids)] = ids
    beams = loaded.model.predict_batch(
        loaded.params,
        {"encoder_input_tokens": rows},
        max_decode_length=MAX_DECODE_LENGTH,
        num_beams=3,
        num_decodes=2,
    )
    assert [r["prediction"] for r in results] == [
        [vocabulary.decode(list(beam)) for beam in np.asarray(row)] for row in beams
    ]
