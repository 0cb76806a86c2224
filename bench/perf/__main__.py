"""``python -m bench.perf point|build``: the subprocess side of ``persrv-bench perf`` (one
scaling point, printed as a ``PERF_POINT {json}`` line; a workload's dataset build)."""

from __future__ import annotations

import argparse
import json
import logging

from bench.perf.config import PAPER_REQUESTS, WORKLOADS, PerfConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf")
    p.add_argument("mode", choices=["point", "build"])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workload", choices=WORKLOADS, default="zipf")
    p.add_argument("--requests", type=int, default=PAPER_REQUESTS)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--pool", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=2048)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.mode == "build":
        from bench.perf.workloads import build_workload
        build_workload(a.workload, a.size, a.seed)
        return
    from bench.perf.driver import _jsonable
    from bench.perf.scaling import scaling_point
    cfg = PerfConfig(size=a.size, seed=a.seed, workload=a.workload, requests=a.requests, k=a.k,
                     pool=a.pool, batch_size=a.batch_size, scaling=())
    print("PERF_POINT " + json.dumps(scaling_point(cfg), default=_jsonable), flush=True)


if __name__ == "__main__":
    main()
