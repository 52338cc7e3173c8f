"""batchgen's Python package against the stand-in provider server (the same
one the Rust suite uses), with the real component in the real host."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchgen
import tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
DEBUG = Path(os.environ.get("BATCHGEN_TARGET_DIR", ROOT / "target")) / "debug"
# Claude 3.5 Haiku's own id is retired (the stand-in answers 404, as Anthropic does).
HAIKU_SUCCESSOR = "claude-haiku-4-5-20251001"


@pytest.fixture(scope="module")
def server():
    """The stand-in provider server, its URLs in the environment."""
    process = subprocess.Popen([DEBUG / "provider-server"], stdout=subprocess.PIPE, text=True)
    urls = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
    saved = {name: os.environ.get(name) for name in ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"]}
    os.environ.update(urls)
    os.environ.update(OPENAI_API_KEY="sk-test-openai", ANTHROPIC_API_KEY="sk-ant-test")
    yield urls
    process.kill()
    process.wait()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def table(n=5):
    return pa.table({"id": list(range(n)), "prompt": [f"row {i} ünï 🚀" for i in range(n)], "score": [i / 2 for i in range(n)]})


def echoes(n=5):
    return [f"echo: row {i} ünï 🚀" for i in range(n)]


PARAMS = dict(generation_model="gpt-4o-mini", input_column="prompt", output_column="answer", progress=False)


def test_every_input_kind_comes_back_as_itself_with_the_column_added(server, tmp_path):
    import datasets
    import pandas as pd
    import polars as pl

    base = table()
    inputs = {
        "table": base,
        "batch": base.to_batches()[0],
        "reader": pa.RecordBatchReader.from_batches(base.schema, base.to_batches()),
        "pandas": base.to_pandas().set_index(pd.Index([10, 20, 30, 40, 50])),
        "polars": pl.from_arrow(base),
        "dataset": datasets.Dataset(datasets.table.InMemoryTable(base)).select([4, 3, 2, 1, 0]),
    }
    for kind, data in inputs.items():
        result = batchgen.generate(data, work_dir=tmp_path / kind, **PARAMS)
        assert type(result).__name__ == type(data).__name__, kind
        if kind == "reader":
            result = result.read_all()
        if kind == "batch":
            result = pa.Table.from_batches([result])
        if kind == "pandas":
            assert list(result.index) == [10, 20, 30, 40, 50], "the index comes back"
            answers, ids = list(result["answer"]), list(result["id"])
        elif kind == "polars":
            answers, ids = result["answer"].to_list(), result["id"].to_list()
        elif kind == "dataset":
            answers, ids = result["answer"], result["id"]
        else:
            answers, ids = result.column("answer").to_pylist(), result.column("id").to_pylist()
        if kind == "table":
            address = lambda t: t.column("prompt").chunks[0].buffers()[2].address
            assert address(result) == address(base), "the input's columns come back as they were, not copied"
        expected_ids = [4, 3, 2, 1, 0] if kind == "dataset" else [0, 1, 2, 3, 4]
        assert ids == expected_ids, kind
        assert answers == [echoes()[i] for i in expected_ids], kind


def test_both_providers_and_the_summary(server, tmp_path):
    result, summary = batchgen.generate(table(3), work_dir=tmp_path, with_summary=True, **PARAMS)
    assert result.column("answer").to_pylist() == echoes(3)
    assert (summary.rows, summary.failed) == (3, 0)
    assert summary.input_tokens == 3 * 4 and summary.estimated_cost_usd is not None
    anthropic = dict(PARAMS, generation_model="Claude 3.5 Haiku", model_id=HAIKU_SUCCESSOR, system_prompt="be brief")
    result = batchgen.generate(table(3), work_dir=tmp_path, **anthropic)
    assert result.column("answer").to_pylist() == [f"[be brief] {e}" for e in echoes(3)]


def test_templates_schemas_and_expanded_columns(server, tmp_path):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["yes", "no"]}, "n": {"type": "integer"}},
        "required": ["label", "n"],
        "additionalProperties": False,
    }
    params = dict(PARAMS, input_column=None, prompt_template="Q{{ id }}: {{ prompt }}", json_schema=schema, expand_json=True)
    result = batchgen.generate(table(2), work_dir=tmp_path, **params)
    assert result.column_names == ["id", "prompt", "score", "label", "n", "answer", "answer_error"]
    assert result.column("label").to_pylist() == ["yes", "yes"]
    assert result.column("n").type == pa.int64()
    assert json.loads(result.column("answer")[1].as_py()) == {"label": "yes", "n": 5}


def test_config_errors_name_their_fields(server, tmp_path):
    with pytest.raises(batchgen.ConfigError) as raised:
        batchgen.generate(table(2), work_dir=tmp_path, **dict(PARAMS, temperature=3.0))
    assert raised.value.args[1][0][0] == "temperature"
    assert "temperature" in str(raised.value)
    problems = batchgen.check_config(generation_model="Claude 3.5 Haiku", output_column="a", input_column="q", temperature=1.5, top_p=7)
    assert {field for field, _ in problems} == {"temperature", "top_p"}
    assert batchgen.check_config(generation_model="gpt-4o-mini", output_column="a", input_column="q") == []
    assert batchgen.check_config(output_column="a", input_column="q")[0][0] == "generation_model"
    with pytest.raises(batchgen.BatchgenError, match="nowhere"):
        batchgen.generate(table(2), work_dir=tmp_path, **dict(PARAMS, input_column="nowhere"))


def test_run_is_the_cli_job_and_equals_the_cli(server, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(table(6), source)
    summary = batchgen.run(source, tmp_path / "out.jsonl", **PARAMS)
    assert (summary.rows, summary.reused) == (6, 0)
    again = batchgen.run(source, tmp_path / "out.jsonl", **PARAMS)
    assert again.reused == 6, "the saved work is reused"
    cli = subprocess.run(
        [DEBUG / "batchgen", "run", "--input", source, "--output", tmp_path / "cli.jsonl", "--generation-model", "gpt-4o-mini",
         "--input-column", "prompt", "--output-column", "answer", "--quiet"],
        capture_output=True, text=True, env=os.environ,
    )
    assert cli.returncode == 0, cli.stderr
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    assert read(tmp_path / "out.jsonl") == read(tmp_path / "cli.jsonl")
    generated = batchgen.generate(table(6), work_dir=tmp_path / "g", **PARAMS)
    assert generated.column("answer").to_pylist() == [row["answer"] for row in read(tmp_path / "cli.jsonl")]


def test_models_lists_the_labels():
    labels = [model["label"] for model in batchgen.models()]
    assert labels == ["Local", "Claude 3.5 Haiku", "Claude 3.5 Sonnet", "OpenAI GPT 4o", "OpenAI GPT 4o Mini"]


def test_the_embedded_local_model(tmp_path):
    cache = os.environ.get("BATCHGEN_CACHE_DIR")
    if not cache or not any(Path(cache, "models").glob("*SmolLM2*.gguf")):
        pytest.skip("the default model is not fetched (cargo xtask test fetches it)")
    data = pa.table({"question": ["What is the capital of France?", "Name a colour."]})
    result = batchgen.generate(data, generation_model="Local", input_column="question", output_column="answer",
                               max_tokens=8, work_dir=tmp_path, progress=False)
    assert all(answer.strip() for answer in result.column("answer").to_pylist())
    assert result.column("answer_error").null_count == 2


@pytest.mark.parametrize("arch", tiny_gguf.ARCHITECTURES)
def test_the_embedded_engine_runs_qwen_and_phi_architectures(arch, tmp_path):
    # Toy models of the real architectures (tests/tiny_gguf.py): loaded,
    # prompted through their family's chat template, and batched, each row's
    # text the same alone as in a batch, greedy and sampled with a seed.
    model = tiny_gguf.write(tmp_path / f"tiny-{arch}.gguf", arch)
    rows = ["Hello there, how are you?", "the cat", "Write a poem about the sea.", "x", "ünï 🚀"]
    data = pa.table({"question": rows})
    for sampling in [dict(temperature=0.0), dict(temperature=0.9, top_p=0.95, seed=3)]:
        answers = {}
        for batch_size in [len(rows), 1]:
            result = batchgen.generate(data, generation_model="Local", local_model=model, input_column="question",
                                       output_column="answer", max_tokens=12, batch_size=batch_size,
                                       work_dir=tmp_path / f"{sampling['temperature']}-{batch_size}", progress=False,
                                       **sampling)
            assert result.column("answer_error").null_count == len(rows), result.column("answer_error").to_pylist()
            answers[batch_size] = result.column("answer").to_pylist()
        assert answers[len(rows)] == answers[1], sampling
        assert any(answers[1]), sampling


def test_ctrl_c_stops_the_call_and_keeps_its_saved_work(server, tmp_path):
    # A slow server, so that the call is still running when Ctrl-C comes.
    slow = subprocess.Popen([DEBUG / "provider-server", "--latency-ms", "200"], stdout=subprocess.PIPE, text=True)
    try:
        urls = dict(slow.stdout.readline().strip().split("=", 1) for _ in range(2))
        script = textwrap.dedent(f"""
            import pyarrow as pa, batchgen, sys
            data = pa.table({{"prompt": [f"row {{i}}" for i in range(400)]}})
            try:
                batchgen.generate(data, generation_model="gpt-4o-mini", input_column="prompt", output_column="answer",
                                  batch_size=8, work_dir={str(tmp_path)!r}, progress=False)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(130)
        """)
        env = dict(os.environ, **urls)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        journal = list(tmp_path.glob("*.batchgen-journal"))
        deadline = time.monotonic() + 60
        # Interrupt once some rows are saved.
        while time.monotonic() < deadline and not any(p.stat().st_size > 100 for p in tmp_path.glob("*.batchgen-journal")):
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 130, (out, err)
        assert "interrupted" in out
        journal = next(tmp_path.glob("*.batchgen-journal"))
        assert journal.stat().st_size > 100, "the saved work is kept"
    finally:
        slow.kill()
        slow.wait()


def test_without_a_terminal_progress_is_plain_lines_and_progress_false_silences_it(server, tmp_path):
    script = textwrap.dedent(f"""
        import pyarrow as pa, batchgen
        data = pa.table({{"prompt": [f"row {{i}}" for i in range(40)]}})
        batchgen.generate(data, generation_model="gpt-4o-mini", input_column="prompt", output_column="answer",
                          batch_size=4, work_dir={str(tmp_path)!r}, progress=PROGRESS)
    """)
    env = dict(os.environ, BATCHGEN_PROGRESS_EVERY="0")
    for progress, expect_lines in [(True, True), (False, False)]:
        ran = subprocess.run([sys.executable, "-c", script.replace("PROGRESS", str(progress))],
                             capture_output=True, text=True, env=env)
        assert ran.returncode == 0, ran.stderr
        assert ("rows (" in ran.stderr) == expect_lines, ran.stderr
