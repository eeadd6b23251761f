"""Predict and evaluate on hostile texts and big files: writers any text survives, atomic
output, streaming in chunks (bounded memory), length bucketing that changes no prediction."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config, run_command, write_splits
from omegaconf import OmegaConf

from app import predict as predict_tool
from app.data import synthetic
from app.data.readers import Table, read_table
from app.data.writers import atomic_table
from app.errors import ConfigError, DataError
from app.evaluate import evaluate
from app.models.classifier import task_loss
from app.predict import predict, prediction_rows
from app.runs.layout import RunLayout
from app.runs.read import open_run
from app.tasks import inference
from app.tasks.inference import load_model, softmax
from app.train import train
from app.training.metrics import evaluate_predictions

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]
PROBS = [f"prob_{label}" for label in LABELS]
# Texts every writer must carry through unchanged, of very different token lengths, in no
# order of length (so bucketing reorders them).
HOSTILE = [
    'he said "it was superb" and left .',
    '"the film was dull',
    '"quoted from start to end"',
    '"""x"',
    'x"\t"y',
    "a tab\tinside and a\ttrailing one\t",
    "two\nlines",
    "\n\nleading line breaks",
    "a carriage\rreturn and a crlf\r\n pair",
    "back\\slash\\ at the end \\",
    'a backslash before a quote \\" here',
    "commas, many, of, them ,",
    "emoji 😀🎬 and accents café naïve 日本語",
    "unicode line\u2028separator and\u2029paragraph and \x85 next line",
    "\ufeffa byte-order mark first",
    " leading and trailing spaces ",
    "the plot was brilliant and the cast was very warm from start to finish and the ending "
    "was clever and the soundtrack was moving in every scene .",
    "ok",
    '{"sentence": "json inside", "label": 1}',
    "the villain was not tedious .",
]


def finish(cfg, run_dir: Path) -> Path:
    """Train `cfg` into `run_dir` and save the composed config as Hydra does."""
    train(cfg, run_dir)
    hydra_config = RunLayout(run_dir).hydra_config
    hydra_config.parent.mkdir(exist_ok=True)
    OmegaConf.save(cfg, hydra_config)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny single-sentence run (sequence_length 24), shared by the tests below."""
    root = tmp_path_factory.mktemp("scale")
    data = write_splits(root / "data", ("sentence", "label"), synthetic.sentiment_rows, 192, 1)
    return finish(compose_config(*TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}"),
                  root / "run")


@pytest.fixture(scope="module")
def one_by_one(run_dir) -> np.ndarray:
    """Probabilities of HOSTILE, each text predicted alone by keras-hub's own predict."""
    model = load_model(open_run(run_dir))
    return np.concatenate([softmax(model.predict(np.array([t], dtype=object), verbose=0))
                           for t in HOSTILE])


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> Path:
    path.write_text("".join(json.dumps({column: t}) + "\n" for t in texts), encoding="utf-8")
    return path


class Recorder(inference.Predictor):
    """A Predictor that records the (rows, width) of every batch it runs."""

    shapes: list[tuple[int, int]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        forward = self._forward

        def record(batch):
            Recorder.shapes.append(tuple(batch["token_ids"].shape))
            return forward(batch)

        self._forward = record


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_hostile_texts_round_trip_with_bucketed_predictions(run_dir, one_by_one, tmp_path, fmt,
                                                             monkeypatch):
    monkeypatch.setattr(predict_tool, "Predictor", Recorder)
    Recorder.shapes = []
    source = write_jsonl(tmp_path / "in.jsonl", HOSTILE)
    output = predict(run_dir, source, tmp_path / f"out.{fmt}", progress=False,
                     overrides={"text_column": "text"}, chunk_rows=7, batch_size=3)
    names = ["text", "label"] + (PROBS if fmt != "jsonl" else [])
    table = read_table(output, fmt, names)
    assert table.columns["text"] == HOSTILE
    if fmt == "jsonl":
        text = output.read_text(encoding="utf-8")  # not splitlines(): it breaks at U+2028 too
        rows = [json.loads(line) for line in text.split("\n") if line]
        assert [r["text"] for r in rows] == HOSTILE
        got = np.array([[r["probabilities"][label] for label in LABELS] for r in rows])
    else:
        got = np.array([[float(v) for v in table.columns[p]] for p in PROBS]).T
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    assert table.columns["label"] == [LABELS[i] for i in one_by_one.argmax(axis=-1)]
    # Bucketing was on: batches of sorted lengths cut below the full 24 tokens.
    widths = [width for _, width in Recorder.shapes]
    assert sum(rows for rows, _ in Recorder.shapes) == len(HOSTILE)
    assert min(widths) < 24 and all(width % 8 == 0 for width in widths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", f"out.{fmt}"]


def test_cli_writes_texts_that_broke_the_tsv_writer(run_dir, one_by_one, tmp_path, monkeypatch):
    source = tmp_path / "in.tsv"
    with atomic_table(source, "tsv", ["sentence"]) as writer:  # quoted TSV in, too
        writer.write_rows({"sentence": t} for t in HOSTILE)
    output = tmp_path / "preds.tsv"
    code = run_command(monkeypatch, predict_tool.main, f"run={run_dir}", f"input={source}",
                       f"output={output}")
    assert code == 0
    table = read_table(output, "tsv", ["sentence", "label", *PROBS])
    assert table.columns["sentence"] == HOSTILE
    got = np.array([[float(v) for v in table.columns[p]] for p in PROBS]).T
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)


def test_glue_tsv_is_still_read_without_quoting(tmp_path):
    # A GLUE file (header unquoted): quotes anywhere are characters, a field may start with one.
    glue = tmp_path / "glue.tsv"
    glue.write_text('sentence\tlabel\n"a"\t1\n"it was "ok"\t0\nsaid "no" \t1\n"""x"\t0\n'
                    '"open\t1\nclose"\t0\n', encoding="utf-8")
    table = read_table(glue, "tsv", ["sentence", "label"])
    assert table.columns["sentence"] == ['"a"', '"it was "ok"', 'said "no" ', '"""x"', '"open',
                                         'close"']
    assert table.lines == [2, 3, 4, 5, 6, 7]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_predictions_leave_no_temp_file_and_the_old_output(run_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "preds.tsv"
    existing.write_text("the old predictions\n")
    # A bad row in the third chunk: two chunks were written to the temp file before it.
    rows = [(t,) for t, _ in synthetic.sentiment_rows(30, seed=4)]
    rows[25] = ("   ",)
    source = synthetic.write_tsv(tmp_path / "in.tsv", ("sentence",), rows)
    with pytest.raises(DataError, match=r"in.tsv:27: empty value in column 'sentence'"):
        predict(run_dir, source, existing, progress=False, chunk_rows=10)
    assert existing.read_text() == "the old predictions\n"
    assert leftovers(out_dir) == ["preds.tsv"]
    # A bad format: refused before anything is written.
    with pytest.raises(ConfigError, match="cannot tell the output format"):
        predict(run_dir, source, out_dir / "preds.txt", progress=False)
    assert leftovers(out_dir) == ["preds.tsv"]
    # A file where the output's folder should be.
    with pytest.raises(DataError, match=r"Cannot write '.*preds.tsv/x.tsv'"):
        predict(run_dir, source, existing / "x.tsv", progress=False)
    assert leftovers(out_dir) == ["preds.tsv"] and existing.read_text() == "the old predictions\n"


def test_a_disk_full_midway_leaves_no_temp_file_and_the_old_output(run_dir, tmp_path):
    # RLIMIT_FSIZE makes writes past 4 kB fail (EFBIG) as a full disk would: after the first
    # chunks reached the temp file, in a process of its own, once the model is loaded (loading
    # a .keras archive writes temporary files).
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "preds.csv"
    existing.write_text("the old predictions\n")
    rows = [(t,) for t, _ in synthetic.sentiment_rows(400, seed=5)]
    source = synthetic.write_tsv(tmp_path / "in.tsv", ("sentence",), rows)
    script = textwrap.dedent(f"""
        import resource, signal
        from app import predict as tool
        from app.errors import DataError
        from app.predict import predict

        def load_then_fill_the_disk(*args):
            model = load(*args)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            return model

        load, tool.load_model = tool.load_model, load_then_fill_the_disk
        try:
            predict({str(run_dir)!r}, {str(source)!r}, {str(existing)!r}, progress=False,
                    chunk_rows=10)
        except DataError as error:
            print("DataError:", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"DataError: Cannot write '{existing}': File too large" in result.stdout
    assert existing.read_text() == "the old predictions\n"
    assert leftovers(out_dir) == ["preds.csv"]


def test_evaluate_in_chunks_equals_the_whole_file_at_once(run_dir, tmp_path):
    rows = synthetic.sentiment_rows(40, seed=8)
    rows += [(text, LABELS[i % 2]) for i, text in enumerate(HOSTILE)]
    source = tmp_path / "hostile.tsv"
    with atomic_table(source, "tsv", ["sentence", "label"]) as writer:
        writer.write_rows({"sentence": t, "label": label} for t, label in rows)
    run = open_run(run_dir)
    model = load_model(run)
    outputs = model.predict(np.array([t for t, _ in rows], dtype=object), verbose=0)
    targets = np.array([LABELS.index(label) for _, label in rows])
    expected = {"loss": float(task_loss(run.task)(targets, outputs)),
                **evaluate_predictions(run.task, targets, outputs)}
    chunked = evaluate(run_dir, input=source, split="chunked", progress=False, chunk_rows=7,
                       batch_size=3)
    whole = evaluate(run_dir, input=source, split="whole", progress=False, chunk_rows=10_000,
                     bucketing=False)
    assert chunked["num_examples"] == whole["num_examples"] == len(rows)
    assert chunked["metrics"] == pytest.approx(expected, abs=1e-5)
    assert whole["metrics"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_sentence_pairs_are_bucketed_like_single_sentences(tmp_path):
    data = write_splits(tmp_path / "pairs", ("sentence1", "sentence2", "label"),
                        synthetic.pair_rows, 160, seed=3)
    run_dir = finish(compose_config(*TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}",
                                    "data.text_column=sentence1",
                                    "data.text_pair_column=sentence2"), tmp_path / "run")
    firsts, seconds = HOSTILE, HOSTILE[::-1]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n"
                              for a, b in zip(firsts, seconds, strict=True)), encoding="utf-8")
    output = predict(run_dir, source, tmp_path / "out.csv", progress=False, chunk_rows=6,
                     batch_size=4)
    run = open_run(run_dir)
    labels = list(run.task.label_names)
    table = read_table(output, "csv", ["sentence1", "sentence2", *(f"prob_{x}" for x in labels)])
    assert table.columns["sentence1"] == firsts and table.columns["sentence2"] == seconds
    model = load_model(run)
    alone = np.concatenate([softmax(model.predict((np.array([a], dtype=object),
                                                   np.array([b], dtype=object)), verbose=0))
                            for a, b in zip(firsts, seconds, strict=True)])
    got = np.array([[float(v) for v in table.columns[f"prob_{x}"]] for x in labels]).T
    np.testing.assert_allclose(got, alone, atol=1e-5)


def test_regression_rows_hold_a_score():
    table = Table(path=Path("x.tsv"), columns={"sentence": ["a", "b"]}, lines=[2, 3])
    rows = prediction_rows(table, ["sentence"], np.array([[1.5], [-0.25]], dtype="float32"),
                           [], "tsv")
    assert rows == [{"sentence": "a", "score": 1.5}, {"sentence": "b", "score": -0.25}]


PEAK_SCRIPT = """
import sys
from app.predict import predict
predict(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
status = open("/proc/self/status").read()
print(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
"""


def peak_rss_mb(run_dir: Path, source: Path, output: Path) -> float:
    """Peak resident memory (VmHWM) of a fresh process predicting `source`, in MB."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(run_dir), str(source),
                             str(output)], cwd=REPO, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_peak_memory_does_not_grow_with_the_input(run_dir, tmp_path):
    # 1,000,000 rows (~60 MB of text): held in memory at once, as before streaming, they cost
    # over 500 MB more than 10,000 rows (texts as Python strings, the Table, the string tensors
    # and the outputs); streamed, one chunk of 10,000 rows is in memory at a time, so the peaks
    # differ by a few MB of allocator noise. 100 MB leaves room for that, not for the file.
    sentences = [t for t, _ in synthetic.sentiment_rows(2000, seed=6)]
    small = tmp_path / "small.tsv"
    large = tmp_path / "large.tsv"
    small.write_text("sentence\n" + "".join(sentences[i % 2000] + "\n" for i in range(10_000)))
    with large.open("w") as out:
        out.write("sentence\n")
        for _ in range(500):
            out.write("".join(s + "\n" for s in sentences))
    small_peak = peak_rss_mb(run_dir, small, tmp_path / "small_preds.csv")
    large_peak = peak_rss_mb(run_dir, large, tmp_path / "large_preds.csv")
    print(f"predict peak RSS: {small_peak:.0f} MB for 10,000 rows, {large_peak:.0f} MB for "
          f"1,000,000 rows")
    assert sum(1 for _ in (tmp_path / "large_preds.csv").open()) == 1_000_001
    assert large_peak - small_peak < 100, (small_peak, large_peak)
