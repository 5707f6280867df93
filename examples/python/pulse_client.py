#!/usr/bin/env python3
"""Ingest a JSON-lines file of signals into pulse and re-cluster the brand.

The gRPC stubs are generated from pulse's own .proto files at start-up
(grpcio-tools), so the example always speaks the server's current API:

    pip install grpcio grpcio-tools
    python examples/python/pulse_client.py signals.jsonl --brand acme \
        --addr 127.0.0.1:50051 --last-hours 24 --wait

Each line is a JSON object with `id`, `brand` (or --brand), `text`, and
optionally `source`, `ts` (RFC 3339 or Unix seconds), `url`, `lang` and
`attributes` (string to string), the format `pulse ingest` reads. The result
is one JSON object on standard output: what was stored, the job, and with
--wait its final state and the trends it found.
"""

import argparse
import datetime
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto" / "proto"
PROTOS = ["signals", "trends"]


def load_stubs():
    """Compiles pulse's protos into a temporary package and imports them."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="pulse-stubs-"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    files = [str(PROTO_ROOT / "pulse" / "v1" / f"{name}.proto") for name in PROTOS]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    if status != 0:
        sys.exit(f"cannot compile the protos under {PROTO_ROOT}")
    sys.path.insert(0, str(out))
    return {
        name: (
            importlib.import_module(f"pulse.v1.{name}_pb2"),
            importlib.import_module(f"pulse.v1.{name}_pb2_grpc"),
        )
        for name in PROTOS
    }


def read_signals(path, brand, pb):
    signals = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                sys.exit(f"{path}:{number}: not JSON: {err}")
            signal = pb.Signal(
                id=str(record.get("id", "")),
                brand=record.get("brand", brand or ""),
                source=record.get("source", ""),
                text=record.get("text", ""),
                url=record.get("url", ""),
                lang=record.get("lang", ""),
                attributes=record.get("attributes", {}),
            )
            ts = record.get("ts")
            if isinstance(ts, (int, float)):
                signal.ts.FromSeconds(int(ts))
            elif isinstance(ts, str):
                signal.ts.FromJsonString(ts)
            signals.append(signal)
    return signals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("signals", help="JSON-lines file of signals")
    parser.add_argument("--addr", default="127.0.0.1:50051", help="pulse gRPC address")
    parser.add_argument("--brand", help="brand for lines without one; the brand re-clustered")
    parser.add_argument("--batch", type=int, default=256, help="signals per Ingest call")
    parser.add_argument("--last-hours", type=float, default=24.0, help="window to re-cluster")
    parser.add_argument("--min-cluster-size", type=int, default=0, help="0: the server's default")
    parser.add_argument("--idempotency-key", default="", help="a retried call gets the first job")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    args = parser.parse_args()

    stubs = load_stubs()
    signals_pb, signals_grpc = stubs["signals"]
    trends_pb, trends_grpc = stubs["trends"]
    channel = grpc.insecure_channel(args.addr)
    signal_service = signals_grpc.SignalServiceStub(channel)
    trend_service = trends_grpc.TrendServiceStub(channel)

    signals = read_signals(args.signals, args.brand, signals_pb)
    brand = args.brand or (signals[0].brand if signals else "")
    if not brand:
        sys.exit("no brand: give --brand or a brand on the lines")
    stored, rejections = 0, []
    for start in range(0, len(signals), args.batch):
        reply = signal_service.Ingest(
            signals_pb.IngestRequest(signals=signals[start : start + args.batch])
        )
        stored += reply.stored
        rejections += [
            {"id": r.id, "reason": r.rejection} for r in reply.results if not r.stored
        ]

    request = trends_pb.ReclusterRequest(brand=brand, idempotency_key=args.idempotency_key)
    request.last.FromTimedelta(datetime.timedelta(hours=args.last_hours))
    if args.min_cluster_size:
        request.params.min_cluster_size = args.min_cluster_size
    job = trend_service.Recluster(request)
    result = {
        "stored": stored,
        "rejected": rejections,
        "job": {"id": job.id, "state": trends_pb.JobState.Name(job.state)},
    }
    if args.wait:
        for update in trend_service.WatchJob(trends_pb.JobRequest(job_id=job.id)):
            job = update
        result["job"].update(
            state=trends_pb.JobState.Name(job.state),
            signals=job.signals,
            trends=job.trends,
            error=job.error,
        )
        if job.state == trends_pb.JOB_STATE_SUCCEEDED:
            listed = trend_service.ListTrends(trends_pb.ListTrendsRequest(brand=brand))
            result["trends"] = [
                {
                    "id": trend.id,
                    "size": trend.size,
                    "keywords": [k.term for k in trend.keywords[:5]],
                }
                for trend in listed.trends
            ]
    print(json.dumps(result))
    return 0 if not args.wait or job.state == trends_pb.JOB_STATE_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
