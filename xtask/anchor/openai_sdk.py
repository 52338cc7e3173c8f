"""The anchor of `cargo xtask bench`: what users write instead of batchgen.

The official `openai` SDK's `AsyncOpenAI`, one task per row under a
semaphore of BATCH, and the SDK's own retries set to the same number of
attempts as batchgen's. Reads JSONL rows with a "prompt", prints one JSON
line: {"rows": N, "failed": N, "wall": seconds}.

    python openai_sdk.py ROWS.jsonl BATCH ATTEMPTS   (OPENAI_BASE_URL set)
"""

import asyncio
import json
import os
import sys
import time

from openai import AsyncOpenAI


async def main(path: str, batch: int, attempts: int) -> None:
    with open(path) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    client = AsyncOpenAI(
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ.get("OPENAI_API_KEY", "bench-key"),
        max_retries=attempts - 1,
        timeout=600,
    )
    gate = asyncio.Semaphore(batch)
    failed = 0

    async def one(row: dict) -> None:
        nonlocal failed
        async with gate:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": row["prompt"]}],
                    max_tokens=1024,
                    temperature=0.01,
                )
            except Exception:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(one(row) for row in rows))
    wall = time.monotonic() - started
    print(json.dumps({"rows": len(rows), "failed": failed, "wall": wall}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
