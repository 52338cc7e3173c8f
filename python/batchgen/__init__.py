"""batchgen: an LLM output column for every row of a DataFrame, an Arrow table
or a Hugging Face dataset, in batches, through batchgen's sandboxed
WebAssembly component (the same one the ``batchgen`` CLI runs).

    import batchgen, pyarrow as pa
    table = pa.table({"question": ["What is 2 + 2?", "Name a colour."]})
    answered = batchgen.generate(table, generation_model="Local", input_column="question",
                                 output_column="answer", max_tokens=32)

Keys come from the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
``BATCHGEN_LOCAL_API_KEY``), never from arguments, so none ends up in a
notebook; so do ``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL`` and
``BATCHGEN_LOCAL_URL``. Parameters are the config file's keys, with its
defaults and checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from . import _core
from ._core import BatchgenError, ConfigError

__all__ = ["generate", "run", "models", "check_config", "Summary", "BatchgenError", "ConfigError"]

#: The job parameters every call takes, with the config file's defaults
#: (``None``: not set, the run's default applies).
_PARAMETERS = (
    "generation_model",
    "system_prompt",
    "input_column",
    "output_column",
    "prompt_template",
    "json_schema",
    "expand_json",
    "batch_size",
    "temperature",
    "top_p",
    "max_tokens",
    "model_id",
    "max_attempts",
    "request_timeout",
    "max_rpm",
    "max_tpm",
    "batch_api",
    "poll_interval",
    "batch_max_requests",
)


#: Seconds between two plain progress lines, as the CLI's default.
_PLAIN_EVERY = float(os.environ.get("BATCHGEN_PROGRESS_EVERY", "5"))


@dataclass(frozen=True)
class Summary:
    """What a run did: rows, failures, tokens and the estimated cost."""

    rows: int
    failed: int
    reused: int
    input_tokens: int
    output_tokens: int
    estimated_cost_usd: Optional[float]
    elapsed_seconds: float
    report: dict

    @staticmethod
    def _from_report(text: str) -> "Summary":
        report = json.loads(text)
        return Summary(
            rows=report["rows"],
            failed=report["failed"],
            reused=report["reused"],
            input_tokens=report["input_tokens"],
            output_tokens=report["output_tokens"],
            estimated_cost_usd=report.get("estimated_cost_usd"),
            elapsed_seconds=report["elapsed"],
            report=report,
        )


def _params(values: dict) -> str:
    """The parameters as the config file's JSON: unset ones are left out, so
    the run's defaults apply, exactly as with the CLI."""
    params = {}
    for name in _PARAMETERS:
        value = values.get(name)
        if value is None or (name == "input_column" and value == ""):
            continue
        if name == "json_schema" and isinstance(value, (str, os.PathLike)):
            value = json.loads(Path(value).read_text())
        params[name] = value
    return json.dumps(params)


def _wait(handle: Any, progress: bool, description: str) -> Summary:
    """Waits for a run with the GIL free, a progress bar when asked for, and
    Ctrl-C turned into a cancel: the run stops, its saved work stays."""
    bar = _progress_bar(description) if progress else None
    # Without a bar (no tqdm, or nobody watching): the CLI's plain lines.
    plain = progress and bar is None
    last_line = time.monotonic()
    try:
        while not handle.wait(0.1):
            rows, total, failed = handle.progress()
            if bar is not None:
                bar.total = total or None
                bar.n = rows
                bar.set_postfix(failed=failed, refresh=False)
                bar.refresh()
            elif plain and time.monotonic() - last_line >= _PLAIN_EVERY:
                last_line = time.monotonic()
                share = 100 * rows / total if total else 0
                print(f"batchgen: {rows}/{total} rows ({share:.0f}%), {failed} failed", file=sys.stderr, flush=True)
        rows, total, failed = handle.progress()
        if bar is not None:
            bar.total, bar.n = total, rows
            bar.refresh()
        # A run that failed raises here, before any line claims it finished.
        summary = Summary._from_report(handle.result())
        if plain:
            # The last line always, however short the run.
            print(f"batchgen: {rows}/{total} rows (100%), {failed} failed", file=sys.stderr, flush=True)
        return summary
    except KeyboardInterrupt:
        handle.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(description: str) -> Any:
    """A tqdm bar where tqdm is installed and someone watches (a terminal or
    a notebook); else None, and progress goes out as plain lines."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if not (sys.stderr.isatty() or "ipykernel" in sys.modules):
        return None
    return tqdm(total=None, desc=description, unit="row")


def run(
    input: Union[str, os.PathLike],
    output: Union[str, os.PathLike],
    *,
    generation_model: str,
    output_column: str,
    input_column: Optional[str] = None,
    prompt_template: Optional[str] = None,
    system_prompt: Optional[str] = None,
    json_schema: Union[dict, str, os.PathLike, None] = None,
    expand_json: bool = False,
    batch_size: int = 128,
    temperature: float = 0.01,
    top_p: float = 1.0,
    max_tokens: int = 1024,
    model_id: Optional[str] = None,
    max_attempts: int = 5,
    request_timeout: float = 600,
    max_rpm: Optional[int] = None,
    max_tpm: Optional[int] = None,
    batch_api: bool = False,
    poll_interval: float = 60,
    batch_max_requests: Optional[int] = None,
    local_model: Union[str, os.PathLike, None] = None,
    seed: int = 0,
    fresh: bool = False,
    progress: bool = True,
) -> Summary:
    """The CLI's file job (``batchgen run``): ``input`` (JSONL, CSV or
    Parquet) into ``output`` with the output column, its work saved beside the
    output so that a rerun after a crash or Ctrl-C resumes. Returns the
    run's summary; raises ``ConfigError`` (``args[1]``: the problems, each
    ``(field, message)``) or ``BatchgenError``."""
    params = _params(locals())
    handle = _core.start(
        os.fspath(input),
        os.fspath(output),
        params,
        local_model=None if local_model is None else os.fspath(local_model),
        seed=seed,
        fresh=fresh,
    )
    return _wait(handle, progress, Path(output).name)


def generate(
    data: Any,
    *,
    generation_model: str,
    output_column: str,
    input_column: Optional[str] = None,
    prompt_template: Optional[str] = None,
    system_prompt: Optional[str] = None,
    json_schema: Union[dict, str, os.PathLike, None] = None,
    expand_json: bool = False,
    batch_size: int = 128,
    temperature: float = 0.01,
    top_p: float = 1.0,
    max_tokens: int = 1024,
    model_id: Optional[str] = None,
    max_attempts: int = 5,
    request_timeout: float = 600,
    max_rpm: Optional[int] = None,
    max_tpm: Optional[int] = None,
    batch_api: bool = False,
    poll_interval: float = 60,
    batch_max_requests: Optional[int] = None,
    local_model: Union[str, os.PathLike, None] = None,
    seed: int = 0,
    work_dir: Union[str, os.PathLike, None] = None,
    progress: bool = True,
    with_summary: bool = False,
) -> Any:
    """Generates ``output_column`` (and ``<output_column>_error``) for every
    row of ``data``: a pyarrow Table, RecordBatch or RecordBatchReader, a
    polars or pandas DataFrame, a ``datasets.Dataset``, or anything with
    ``__arrow_c_stream__``. Returns the same kind, rows in order, the other
    columns as they were; with ``with_summary=True``, ``(result, Summary)``.

    Saved work lives in ``work_dir`` (default: batchgen's cache), one journal
    per set of parameters, so a call interrupted by Ctrl-C and made again
    generates only what is missing."""
    import pyarrow.parquet as pq

    params = _params(locals())
    table, rebuild = _as_table(data)
    work = Path(work_dir) if work_dir is not None else _cache_dir() / "generate"
    work.mkdir(parents=True, exist_ok=True)
    # One journal per parameter set: rows are keyed by what determines them.
    name = hashlib.sha256((params + f"|{local_model}|{seed}").encode()).hexdigest()[:24]
    output = work / f"{name}.parquet"
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        source = Path(scratch) / "input.parquet"
        pq.write_table(table, source)
        handle = _core.start(
            os.fspath(source),
            os.fspath(output),
            params,
            local_model=None if local_model is None else os.fspath(local_model),
            seed=seed,
            fresh=False,
        )
        summary = _wait(handle, progress, "batchgen")
    try:
        written = pq.read_table(output, memory_map=False)
    finally:
        output.unlink(missing_ok=True)
    # Only the columns the run added come from its output; the input's own
    # columns are handed back as they came in (the same buffers where the
    # kind allows).
    added = written.select([name for name in written.column_names if name not in table.column_names])
    result = rebuild(added)
    if hasattr(result, "attrs"):
        result.attrs["batchgen"] = summary.report
    return (result, summary) if with_summary else result


def _as_table(data: Any):
    """``data`` as a pyarrow Table, and how to return it with the run's
    added columns (a Table, rows in order) as the kind it came as."""
    import pyarrow as pa

    def appended(table: "pa.Table", added: "pa.Table") -> "pa.Table":
        for field, column in zip(added.schema, added.columns):
            table = table.append_column(field, column)
        return table

    module = type(data).__module__.split(".")[0]
    if module == "datasets":
        import datasets

        table = data.data.table
        if getattr(data, "_indices", None) is not None:
            table = table.take(data._indices.column(0))
        split = data.split
        return table, lambda added: datasets.Dataset(datasets.table.InMemoryTable(appended(table, added)), split=split)
    if module == "pandas":

        def rebuild_pandas(added):
            result = data.copy(deep=False)
            for name in added.column_names:
                result[name] = added.column(name).to_pandas().set_axis(result.index)
            return result

        return pa.Table.from_pandas(data, preserve_index=False), rebuild_pandas
    if module == "polars":
        import polars as pl

        frame = data.collect() if hasattr(data, "collect") else data
        return frame.to_arrow(), lambda added: frame.hstack(pl.from_arrow(added).get_columns())
    if isinstance(data, pa.Table):
        return data, lambda added: appended(data, added)
    if isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
        return table, lambda added: appended(table, added).combine_chunks().to_batches(max_chunksize=max(1, data.num_rows))[0]
    if isinstance(data, pa.RecordBatchReader):
        table = data.read_all()

        def rebuild_reader(added):
            whole = appended(table, added)
            return pa.RecordBatchReader.from_batches(whole.schema, whole.to_batches())

        return table, rebuild_reader
    if hasattr(data, "__arrow_c_stream__"):
        table = pa.table(data)
        return table, lambda added: appended(table, added)
    raise TypeError(
        f"batchgen.generate takes a pyarrow Table, RecordBatch or RecordBatchReader, a pandas or polars "
        f"DataFrame, a datasets.Dataset, or an object with __arrow_c_stream__; not {type(data).__name__}"
    )


def _cache_dir() -> Path:
    if os.environ.get("BATCHGEN_CACHE_DIR"):
        return Path(os.environ["BATCHGEN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "batchgen"
    return Path.home() / ".cache" / "batchgen"


def models() -> list:
    """The generation models: label, provider, provider model id, aliases, note."""
    return json.loads(_core.models())


def check_config(
    *,
    generation_model: Optional[str] = None,
    output_column: Optional[str] = None,
    input_column: Optional[str] = None,
    prompt_template: Optional[str] = None,
    system_prompt: Optional[str] = None,
    json_schema: Union[dict, str, os.PathLike, None] = None,
    expand_json: bool = False,
    batch_size: int = 128,
    temperature: float = 0.01,
    top_p: float = 1.0,
    max_tokens: int = 1024,
    model_id: Optional[str] = None,
    max_attempts: int = 5,
    request_timeout: float = 600,
    max_rpm: Optional[int] = None,
    max_tpm: Optional[int] = None,
    batch_api: bool = False,
    poll_interval: float = 60,
    batch_max_requests: Optional[int] = None,
) -> list:
    """Every problem with these parameters, each ``(field, message)``; empty
    when a run would accept them. Sends nothing."""
    return [tuple(problem) for problem in _core.check_config(_params(locals()))]
