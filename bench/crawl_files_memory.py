"""Peak RSS of the crawl flow alone: the same documents in few files or in many.

    .venv/bin/python bench/crawl_files_memory.py DOCS FILES     # e.g. 8000 16, then 8000 1600

A crawl task per input file would cost the flow one Prefect task run per file; the crawl groups small
files into shards of about `shard_bytes` (tasks/crawl group_files), and this measures what the file
count still costs, with the dedup bucket fixed (2,000 documents). A third argument sets shard_bytes
(1 = one shard per file, as before the grouping).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def write_corpus(root: Path, docs: int, files: int) -> None:
    """`docs` distinct documents spread evenly over `files` JSONL files."""
    root.mkdir(parents=True)
    per = -(-docs // files)
    for f in range(files):
        lines = [json.dumps({"text": f"Field note {i}: the harbour crane operator {i} logged container moves "
                                     f"{(i * 37) % 1000} before storm number {i}."})
                 for i in range(f * per, min(docs, (f + 1) * per))]
        if lines:
            (root / f"part{f:05d}.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    docs, files = int(sys.argv[1]), int(sys.argv[2])
    shard_bytes = {"shard_bytes": int(sys.argv[3])} if len(sys.argv) > 3 else {}
    from personahub.flows.crawl import CrawlFlowParams, crawl

    work = Path(tempfile.mkdtemp(prefix="crawl-files-"))
    write_corpus(work / "corpus", docs, files)
    summary = crawl(CrawlFlowParams(sources=[str(work / "corpus")], store=str(work / "store"), rows_per_bucket=2000,
                                     **shard_bytes))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shards = summary["stages"][0]["shards"]
    print(f"{docs} documents in {files} files, {shards} crawl shards: {summary['documents']} kept, "
          f"peak RSS of the flow's process {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
