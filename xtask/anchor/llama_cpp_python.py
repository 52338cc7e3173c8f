"""The one-at-a-time reference of `cargo xtask bench-local`: llama.cpp as
users call it from Python (llama-cpp-python), one prompt after another, on
the same model, prompts, decoding (greedy) and thread count as batchgen's
embedded engine.

    python llama_cpp_python.py JOB.json

JOB.json, written by `bench-local`: {"model", "max_tokens", "threads", "no_repack"}.
Loads the model, prints `ready`, then answers every line on stdin (a JSON
list of prompts: a round) with one run over those prompts, as one JSON line:
{"tokens": N, "seconds": S, "texts": [...], "peak_rss_kib": K}. The rounds
are driven by `bench-local`, interleaved with batchgen's own, so that both
see the machine in the same state.
"""

import json
import resource
import sys
import time

import llama_cpp
import llama_cpp.llama_cpp
from llama_cpp import Llama


def main(job_path: str) -> None:
    with open(job_path) as file:
        job = json.load(file)
    threads = job["threads"]
    if job.get("no_repack"):
        # As `llama-server --no-repack`: weights stay out of ggml's extra
        # buffer types (AMX tiles, repacked layouts). Llama() takes no such
        # argument, so the defaults it starts from are changed.
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = without_repack
    llm = Llama(model_path=job["model"], n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    print("ready", flush=True)
    for line in sys.stdin:
        prompts = json.loads(line)
        tokens = 0
        texts = []
        started = time.monotonic()
        for prompt in prompts:
            # No system message: the model's chat template adds its default
            # one, as batchgen's engine does.
            reply = llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}],
                max_tokens=job["max_tokens"],
                temperature=0.0,
                # llama-cpp-python's own default is 1.1; batchgen applies no
                # repetition penalty, nor do the providers by default.
                repeat_penalty=1.0,
            )
            tokens += reply["usage"]["completion_tokens"]
            texts.append(reply["choices"][0]["message"]["content"])
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"tokens": tokens, "seconds": seconds, "texts": texts, "peak_rss_kib": peak}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
