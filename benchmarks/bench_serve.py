#!/usr/bin/env python
"""Benchmark: ``mmtune serve``'s throughput with 8 concurrent clients vs 1, and what the batching worker buys.

The server runs in this process (uvicorn in a thread, as in the tests) on a free local port; the clients are
``openai`` clients in threads, each sending its share of the same ``--requests`` prompts (greedy,
``max_tokens`` fixed), one after the other. Throughput is completion tokens (as the server's ``usage`` counts
them) per wall-clock second, from the first request sent to the last reply received. Three runs, same model,
same prompts, same warm-up:

* **1 client** on the batching server (``--max-batch-size 8``): nothing to batch, the latency floor;
* **8 clients, served one by one** (``--max-batch-size 1``): what a server without batching does;
* **8 clients, batched** (``--max-batch-size 8``): the worker decodes waiting requests together.

Printed: tokens/s of each, the ratios (8 batched vs 1 client, 8 batched vs 8 one by one), the batch sizes the
worker formed, the mean request latency, and the load average (other work on the machine slows every run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]

from common import SMOLLM2, llm_dir, loadavg  # noqa: E402

TOPICS = ["the sea", "a lighthouse keeper", "a robot learning to paint", "autumn in a small town", "a lost key",
          "the first snow", "a night train", "a garden on the moon", "an old map", "a violin maker",
          "a desert storm", "a quiet library", "a fox and a crow", "the last bus home", "a mountain village",
          "a clockmaker's apprentice"]


def run_clients(url: str, name: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    """Send ``prompts`` from ``clients`` threads (each its share, in turn); tokens/s over the whole run."""
    import openai

    shares = [prompts[k::clients] for k in range(clients)]
    tokens, latencies = [0] * clients, [[] for _ in range(clients)]

    def client(k: int) -> None:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        for prompt in shares[k]:
            start = time.perf_counter()
            reply = api.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0)
            latencies[k].append(time.perf_counter() - start)
            tokens[k] += reply.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "completion_tokens": sum(tokens), "seconds": wall,
            "tokens_per_s": sum(tokens) / wall, "mean_latency_s": statistics.mean(x for xs in latencies for x in xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (the offline SmolLM2-135M-Instruct), tiny (a random "
                                                       "2-layer Llama), or any run / model directory / alias")
    ap.add_argument("--requests", type=int, default=16, help="prompts sent in each run (default 16)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--batch-wait-ms", type=float, default=None,
                    help="the server's --batch-wait-ms (default: ServeOptions' default)")
    args = ap.parse_args()

    import tempfile

    import torch

    from mmtune.models.run_outputs import load_for_inference
    from mmtune.serving.app import create_app
    from mmtune.serving.options import ServeOptions
    from serve_helpers import running

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    name = str(llm_dir("tiny", work)) if args.model == "tiny" else SMOLLM2 if args.model == "smollm2" else args.model
    model, tokenizer = load_for_inference(name, device_type=args.device)
    prompts = [f"Write a long story about {TOPICS[i % len(TOPICS)]}." for i in range(args.requests)]
    print(f"model {args.model} on {args.device}, {args.requests} requests of max_tokens {args.max_tokens}, "
          f"torch threads {torch.get_num_threads()}, load average {loadavg()}")
    results = {}
    for label, clients, batch in (("1 client", 1, 8), ("8 clients, one by one", 8, 1), ("8 clients, batched", 8, 8)):
        wait = {} if args.batch_wait_ms is None else {"batch_wait_ms": args.batch_wait_ms}
        app = create_app(model, tokenizer, "bench", ServeOptions(max_batch_size=batch, **wait))
        with running(app) as url:
            run_clients(url, "bench", prompts[:2], 1, 4)  # warm-up
            app.state.service.worker.batch_sizes.clear()
            results[label] = run_clients(url, "bench", prompts, clients, args.max_tokens)
            sizes = app.state.service.worker.batch_sizes
        r = results[label]
        print(f"{label:>24}: {r['tokens_per_s']:8.1f} completion tokens/s  ({r['completion_tokens']} tokens in "
              f"{r['seconds']:.1f} s; mean latency {r['mean_latency_s']:.2f} s; batch sizes: mean "
              f"{statistics.mean(sizes):.1f}, max {max(sizes)})")
    batched = results["8 clients, batched"]["tokens_per_s"]
    print(f"8 clients batched vs 1 client: {batched / results['1 client']['tokens_per_s']:.2f}x; "
          f"vs 8 clients served one by one: {batched / results['8 clients, one by one']['tokens_per_s']:.2f}x "
          f"(load average now {loadavg()})")


if __name__ == "__main__":
    main()
