"""The reference of `cargo xtask bench-local`: llama.cpp as users call it
from Python (llama-cpp-python), one prompt at a time, on the same model,
prompts, sampling and thread count as batchgen's embedded engine.

    python llama_cpp_python.py JOB.json

JOB.json, written by `bench-local`: {"model", "max_tokens", "threads",
"prompts": [...]}. Prints one JSON line: {"tokens": N, "seconds": S}.
"""

import json
import sys
import time

from llama_cpp import Llama


def main(job_path: str) -> None:
    with open(job_path) as file:
        job = json.load(file)
    threads = job["threads"]
    llm = Llama(model_path=job["model"], n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = 0
    started = time.monotonic()
    for i, prompt in enumerate(job["prompts"]):
        # No system message: the model's chat template adds its default one,
        # as batchgen's engine does.
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=job["max_tokens"],
            temperature=0.8,
            top_p=0.95,
            seed=i,
        )
        tokens += reply["usage"]["completion_tokens"]
    print(json.dumps({"tokens": tokens, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main(sys.argv[1])
