#!/usr/bin/env python3
"""CPU reference encoders for `pulse-bench embed`.

Runs the same sentence-embedding workloads as pulse's own encoders on two
well-known CPU runtimes, so pulse's figures have something to stand against:

- `onnxruntime`: the model as an ONNX graph, built here from
  `model.safetensors` in the shape an opset-12 PyTorch export of BERT has
  (MatMul + Add, Reshape/Transpose per head, Erf GELU, spelt-out LayerNorm),
  so ORT_ENABLE_ALL fuses it into its Attention, SkipLayerNormalization and
  BiasGelu kernels. No ONNX file ships with the model, and building it here
  needs no torch. The built file (~90 MB) is cached in
  `<dir of --out>/cpu_reference_cache/`.
- `pytorch`: `sentence_transformers.SentenceTransformer` on the CPU.
- `pytorch-bf16`: the same under `torch.autocast("cpu", torch.bfloat16)`,
  the fastest thing the reference stack does on a CPU with AMX or AVX-512
  BF16 (oneDNN's bf16 kernels); its parity floor is 0.999, bf16's.

What is timed, for both engines alike: per batch, tokenizing with the
`tokenizers` package on the model's tokenizer.json (cut at max_seq_length,
padded to the batch's longest text), the forward pass, mean pooling and L2
normalisation, ending with the embeddings as a numpy array. That is what
`pulse-bench embed` times for pulse. Tokenizing runs on one thread in this
script whatever the thread count (TOKENIZERS_PARALLELISM=false); it is about
1% of a batch's time.

Per engine, before any timing, the texts of the shared fixture file
(`cases.jsonl` of `minilm` or `mpnet`, by the model's `model_type`) are
embedded and compared with their recorded embeddings
(minimum cosine >= 0.9999, 0.999 for bf16) and token counts; a miss fails
the run. Then for
each thread count and workload: one warm-up batch, then `repeats` passes over
all texts, batch after batch. Tokens are attention-mask sums (special tokens
included), as pulse counts them. The median pass is sorted[n // 2], as in
pulse-bench; batch_p50_ms is the nearest-rank median of every batch's latency.

Install: `scripts/reference-env` makes a virtual environment with every
engine's packages (ONNX Runtime needs `onnx` too, to build its graph) under
~/.cache/pulse/reference and prints its interpreter; an engine whose
packages are missing is skipped, not an error. The torch wheel on the
default index pulls several GB of CUDA libraries; a CPU-only torch build
avoids them. `pulse-bench embed --python "$(scripts/reference-env)"` runs
this script itself; by hand:

    "$(scripts/reference-env)" bench/python/cpu_reference.py --workloads w.json --out r.json

Input (--workloads):
    {"model_dir": "...", "max_seq_length": 256, "repeats": 3, "threads": [1, 2],
     "workloads": [{"name": "...", "batch_size": 32, "texts": ["...", ...]}]}
Output (--out):
    {"engines": {"onnxruntime": {"version": "...",
                                 "parity": {"min_cosine": .., "mean_cosine": .., "cases": n}}},
     "skipped": {"pytorch": "reason"},
     "results": [{"engine", "threads", "workload", "texts", "batch_size", "tokens",
                  "seconds_all", "seconds_median", "tokens_per_second",
                  "texts_per_second", "batch_p50_ms"}]}
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
from importlib import metadata
from pathlib import Path

# Set before `tokenizers` loads: its thread pool is process-wide and cannot be
# sized per thread count, so tokenizing stays on one thread for every run.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The model is local; never let sentence-transformers reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENGINES = ("onnxruntime", "pytorch", "pytorch-bf16")
REQUIRED = {
    "onnxruntime": ("numpy", "tokenizers", "safetensors", "onnx", "onnxruntime"),
    "pytorch": ("numpy", "tokenizers", "torch", "sentence_transformers"),
    "pytorch-bf16": ("numpy", "tokenizers", "torch", "sentence_transformers"),
}
MIN_COSINE = {"onnxruntime": 0.9999, "pytorch": 0.9999, "pytorch-bf16": 0.999}
PARITY_BATCH = 16
# Bump when build_onnx changes: it is part of the cached model's file name.
GRAPH_VERSION = 1
# The repo root is the parent of bench/; shared/ sits beside the repo.
FIXTURES_DIR = Path(__file__).resolve().parents[2].parent / "shared/fixtures"
# sentence-transformers' embeddings of the fixture texts, per model_type of
# the two real models pulse is tested with.
FIXTURES_BY_MODEL_TYPE = {"bert": "minilm", "mpnet": "mpnet"}


class Failure(Exception):
    """A check that must stop the run (parity, bad input)."""


# ---------------------------------------------------------------- arguments


def comma_list(convert):
    def parse(value):
        return [convert(item) for item in value.split(",") if item.strip()]

    return parse


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="CPU reference encoders (onnxruntime, pytorch) for pulse-bench embed."
    )
    parser.add_argument("--workloads", required=True, type=Path, help="input JSON")
    parser.add_argument("--out", required=True, type=Path, help="output JSON")
    parser.add_argument(
        "--engines", type=comma_list(str), default=list(ENGINES),
        help="comma-separated, of: " + ",".join(ENGINES),
    )
    parser.add_argument(
        "--threads", type=comma_list(int), default=None,
        help="comma-separated thread counts; overrides the input's",
    )
    parser.add_argument(
        "--fixtures", type=Path, default=None,
        help="cases.jsonl to check parity on (default: the shared fixtures of the model's type)",
    )
    args = parser.parse_args(argv)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; known: {list(ENGINES)}")
    return args


def load_spec(args):
    spec = json.loads(args.workloads.read_text())
    if args.threads:
        spec["threads"] = args.threads
    for key in ("model_dir", "max_seq_length", "repeats", "threads", "workloads"):
        if key not in spec:
            raise Failure(f"{args.workloads}: missing {key!r}")
    if spec["repeats"] < 1 or not spec["threads"] or min(spec["threads"]) < 1:
        raise Failure("repeats and every thread count must be at least 1")
    for workload in spec["workloads"]:
        if workload["batch_size"] < 1 or not workload["texts"]:
            raise Failure(f"workload {workload['name']!r}: needs texts and batch_size >= 1")
    return spec


def missing_package(engine):
    """Why `engine` cannot run here, or None when all its packages import."""
    for module in REQUIRED[engine]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"{module} not importable: {error}"
    return None


# ---------------------------------------------------------------- tokenizing


class TextTokenizer:
    """tokenizer.json with pulse's cut and padding: the shipped file pads and
    cuts at 128, the model (and pulse) at max_seq_length, padded per batch."""

    def __init__(self, model_dir, max_seq_length):
        from tokenizers import Tokenizer

        self.inner = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        padding = self.inner.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        self.inner.enable_padding(
            pad_id=padding.get("pad_id", self.inner.token_to_id(pad_token) or 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=pad_token,
        )
        self.inner.enable_truncation(max_length=max_seq_length)
        # sentence-transformers (and pulse) honour do_lower_case on top of
        # whatever normaliser tokenizer.json has.
        st_config = model_dir / "sentence_bert_config.json"
        self.lowercase = st_config.is_file() and json.loads(st_config.read_text()).get(
            "do_lower_case", False
        )

    def __call__(self, texts):
        """One padded batch as int64 arrays, keyed as BERT's inputs are."""
        import numpy as np

        # Stripped, as sentence-transformers and pulse do before tokenizing.
        texts = [t.strip().lower() if self.lowercase else t.strip() for t in texts]
        encodings = self.inner.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def batches(texts, batch_size):
    return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]


# ---------------------------------------------------------------- ONNX graph


class GraphBuilder:
    """Appends ONNX nodes with generated output names."""

    def __init__(self):
        self.nodes, self.initializers, self.count = [], [], 0

    def const(self, name, array):
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, **attrs):
        from onnx import helper

        self.count += 1
        output = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def load_weights(model_dir):
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    # Some checkpoints keep BertModel's weights under a "bert." prefix.
    return {k.removeprefix("bert."): v for k, v in weights.items()}


def build_onnx(model_dir, path):
    """Writes the whole encoder (embeddings to normalised mean pool) as ONNX.

    Opset 12 and the node patterns of a classic PyTorch export of BERT, on
    purpose: ORT's built-in fusions (Attention, SkipLayerNormalization,
    LayerNormalization, BiasGelu) match those exact op versions, and miss the
    same graph written with opset 13+ Unsqueeze/Add or opset 17's own
    LayerNormalization.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("hidden_act", "gelu") != "gelu":
        raise Failure(f"only exact GELU is built, not {config['hidden_act']!r}")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps = hidden // heads, config.get("layer_norm_eps", 1e-12)
    w = load_weights(model_dir)
    g = GraphBuilder()
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731

    def weight(name):
        return g.const(name, np.ascontiguousarray(w[name], dtype=np.float32))

    def linear(x, prefix):
        # torch Linear keeps (out, in); an export multiplies by its transpose.
        kernel = g.const(prefix + ".weight_t", np.ascontiguousarray(w[prefix + ".weight"].T))
        return g.op("Add", [g.op("MatMul", [x, kernel]), weight(prefix + ".bias")])

    def layer_norm(x, prefix):
        # Spelt out as an opset-12 export has it; ORT fuses it back into one op.
        centred = g.op("Sub", [x, g.op("ReduceMean", [x], axes=[-1])])
        variance = g.op("ReduceMean", [g.op("Pow", [centred, two])], axes=[-1])
        normed = g.op("Div", [centred, g.op("Sqrt", [g.op("Add", [variance, epsilon])])])
        scaled = g.op("Mul", [normed, weight(prefix + ".weight")])
        return g.op("Add", [scaled, weight(prefix + ".bias")])

    one, two, epsilon = g.const("one", f32(1.0)), g.const("two", f32(2.0)), g.const("eps", f32(eps))
    heads_shape = g.const("heads_shape", i64(0, 0, heads, head_dim))
    merged_shape = g.const("merged_shape", i64(0, 0, hidden))
    sqrt_head_dim = g.const("sqrt_head_dim", f32(math.sqrt(head_dim)))

    # Embeddings: word + token type + position, then LayerNorm. Position ids
    # are 0..seq expanded to the batch, as an export has them.
    shape = g.op("Shape", ["input_ids"])
    seq_len = g.op("Gather", [shape, g.const("index_1", np.array(1, dtype=np.int64))], axis=0)
    positions = g.op("Range", [
        g.const("zero_i64", np.array(0, dtype=np.int64)), seq_len,
        g.const("one_i64", np.array(1, dtype=np.int64)),
    ])
    positions = g.op("Expand", [g.op("Unsqueeze", [positions], axes=[0]), shape])
    # Shape inference cannot see that these ids are (batch, sequence); told,
    # it keeps the symbolic dims that SkipLayerNormalization's fusion checks.
    known_shapes = [
        helper.make_tensor_value_info(positions, TensorProto.INT64, ["batch", "sequence"])
    ]
    x = g.op("Add", [
        g.op("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"]),
        g.op("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"]),
    ])
    position_table = weight("embeddings.position_embeddings.weight")
    x = g.op("Add", [x, g.op("Gather", [position_table, positions])])
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive mask (1 - mask) * -10000 broadcast over heads and queries: the
    # form ORT's attention fusion recognises; exp(-10000) is 0 in f32.
    mask_bias = g.op("Unsqueeze", [g.op("Unsqueeze", ["attention_mask"], axes=[1])], axes=[2])
    mask_bias = g.op("Cast", [mask_bias], to=TensorProto.FLOAT)
    mask_bias = g.op("Mul", [g.op("Sub", [one, mask_bias]), g.const("mask_fill", f32(-10000.0))])

    def split_heads(t, perm):
        return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)

    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q = split_heads(linear(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = split_heads(linear(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = split_heads(linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k]), sqrt_head_dim])
        probs = g.op("Softmax", [g.op("Add", [scores, mask_bias])], axis=3)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merged_shape])
        attended = linear(context, p + "attention.output.dense")
        x = layer_norm(g.op("Add", [attended, x]), p + "attention.output.LayerNorm")

        h = linear(x, p + "intermediate.dense")
        # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), in the order an export has.
        erf = g.op("Erf", [g.op("Div", [h, g.const(f"sqrt2_{layer}", f32(math.sqrt(2.0)))])])
        gelu = g.op("Mul", [h, g.op("Add", [erf, one])])
        gelu = g.op("Mul", [gelu, g.const(f"half_{layer}", f32(0.5))])
        out = linear(gelu, p + "output.dense")
        x = layer_norm(g.op("Add", [out, x]), p + "output.LayerNorm")

    # Mean over unmasked tokens, then L2 normalise (eps as torch's normalize).
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)], axes=[2])
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask])], axes=[1], keepdims=0)
    count = g.op("ReduceSum", [mask], axes=[1], keepdims=0)
    count = g.op("Clip", [count, g.const("min_count", f32(1e-9))])
    mean = g.op("Div", [summed, count])
    norm = g.op("ReduceL2", [mean], axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.const("min_norm", f32(1e-12))])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="normalize"))

    def int_input(name):
        return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])

    graph = helper.make_graph(
        g.nodes, "sentence_encoder",
        [int_input("input_ids"), int_input("attention_mask"), int_input("token_type_ids")],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
        value_info=known_shapes,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    onnx.checker.check_model(model)
    # Write then rename, so a killed run never leaves half a model in the cache.
    partial = path.with_suffix(".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def cached_onnx(model_dir, cache_dir):
    """The built model, rebuilt only when the weights or the builder change."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    key = f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GRAPH_VERSION}"
    path = cache_dir / f"encoder-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"building {path}", file=sys.stderr)
        build_onnx(model_dir, path)
    return path


# ---------------------------------------------------------------- engines


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, model_dir, tokenizer, cache_dir):
        import onnxruntime

        self.ort = onnxruntime
        self.version = onnxruntime.__version__
        self.tokenizer = tokenizer
        self.model_path = str(cached_onnx(model_dir, cache_dir))
        self.session, self.threads = None, None

    def set_threads(self, threads):
        if threads == self.threads:
            return
        self.threads = threads
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = self.ort.InferenceSession(
            self.model_path, options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts):
        return self.session.run(["sentence_embedding"], self.tokenizer(texts))[0]


class TorchEngine:
    def __init__(self, model_dir, tokenizer, max_seq_length, bf16):
        import contextlib

        import torch
        from sentence_transformers import SentenceTransformer

        self.name = "pytorch-bf16" if bf16 else "pytorch"
        self.torch = torch
        # Autocast runs the linear layers and attention's products in bf16
        # (oneDNN: AMX or AVX-512 BF16 where the CPU has them), the rest in
        # f32, as PyTorch recommends for CPU inference.
        self.precision = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )
        self.version = (
            f"torch {torch.__version__}, "
            f"sentence-transformers {metadata.version('sentence-transformers')}"
        )
        self.tokenizer = tokenizer
        # Only the first call can set it; one inter-op thread, as ORT gets.
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.model.max_seq_length = max_seq_length
        self.model.eval()

    def set_threads(self, threads):
        self.torch.set_num_threads(threads)

    def embed(self, texts):
        # Our tokenizer rather than model.encode's, so both engines time the
        # same tokenizing; the model's modules do forward, pooling, normalise.
        features = {k: self.torch.from_numpy(v) for k, v in self.tokenizer(texts).items()}
        with self.torch.inference_mode(), self.precision():
            return self.model(features)["sentence_embedding"].float().numpy()


def load_engine(name, model_dir, tokenizer, max_seq_length, cache_dir):
    if name == "onnxruntime":
        return OrtEngine(model_dir, tokenizer, cache_dir)
    return TorchEngine(model_dir, tokenizer, max_seq_length, bf16=name == "pytorch-bf16")


# ---------------------------------------------------------------- parity


def read_fixtures(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def check_parity(engine, cases):
    """Embeds the fixture texts; fails unless every case matches."""
    import numpy as np

    texts = [case["text"] for case in cases]
    # Token counts first: a tokenizer set up unlike pulse's explains a
    # cosine miss better than the cosine does.
    counts = [int(engine.tokenizer([text])["attention_mask"].sum()) for text in texts]
    wrong = [
        case.get("id", i) for i, (case, n) in enumerate(zip(cases, counts)) if case["tokens"] != n
    ]
    if wrong:
        raise Failure(f"{engine.name}: token counts differ from the fixtures' for cases {wrong}")
    # Batched, so padding and the mask are exercised as in the timed runs.
    got = np.concatenate([engine.embed(batch) for batch in batches(texts, PARITY_BATCH)])
    got = got.astype(np.float64)
    want = np.array([case["embedding"] for case in cases], dtype=np.float64)
    cosines = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    worst = int(cosines.argmin())
    if cosines[worst] < MIN_COSINE[engine.name]:
        raise Failure(
            f"{engine.name}: parity failed, min cosine {cosines[worst]:.6f} < "
            f"{MIN_COSINE[engine.name]} "
            f"(case {cases[worst].get('id', worst)})"
        )
    return {
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
        "cases": len(cases),
    }


# ---------------------------------------------------------------- timing


def count_tokens(tokenizer, texts, batch_size):
    return sum(int(tokenizer(b)["attention_mask"].sum()) for b in batches(texts, batch_size))


def nearest_rank(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(engine, threads, workload, repeats):
    texts, batch_size = workload["texts"], workload["batch_size"]
    work = batches(texts, batch_size)
    tokens = count_tokens(engine.tokenizer, texts, batch_size)
    engine.embed(work[0])  # warm-up: page in weights, grow the allocators
    seconds, latencies = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in work:
            batch_started = time.perf_counter()
            engine.embed(batch)
            latencies.append(time.perf_counter() - batch_started)
        seconds.append(time.perf_counter() - started)
    median = sorted(seconds)[len(seconds) // 2]
    return {
        "engine": engine.name,
        "threads": threads,
        "workload": workload["name"],
        "texts": len(texts),
        "batch_size": batch_size,
        "tokens": tokens,
        "seconds_all": seconds,
        "seconds_median": median,
        "tokens_per_second": tokens / median,
        "texts_per_second": len(texts) / median,
        "batch_p50_ms": nearest_rank(latencies, 0.5) * 1000.0,
    }


# ---------------------------------------------------------------- main


def run(args):
    spec = load_spec(args)
    model_dir = Path(spec["model_dir"])
    cache_dir = args.out.resolve().parent / "cpu_reference_cache"
    report = {"engines": {}, "skipped": {}, "results": []}
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    fixture_set = FIXTURES_BY_MODEL_TYPE.get(model_type, "minilm")
    fixtures = args.fixtures or FIXTURES_DIR / fixture_set / "cases.jsonl"
    cases = None
    for name in args.engines:
        reason = missing_package(name)
        if name == "onnxruntime" and model_type != "bert" and not reason:
            # build_onnx writes BERT's graph; other layouts would be wrong.
            reason = f"the ONNX graph is built for bert only, not {model_type}"
        if reason:
            print(f"skipping {name}: {reason}", file=sys.stderr)
            report["skipped"][name] = reason
            continue
        cases = cases or read_fixtures(fixtures)
        tokenizer = TextTokenizer(model_dir, spec["max_seq_length"])
        engine = load_engine(name, model_dir, tokenizer, spec["max_seq_length"], cache_dir)
        engine.set_threads(spec["threads"][0])
        parity = check_parity(engine, cases)
        report["engines"][name] = {"version": engine.version, "parity": parity}
        print(
            f"{name} {engine.version}: parity min cosine {parity['min_cosine']:.6f} "
            f"over {parity['cases']} cases",
            file=sys.stderr,
        )
        for threads in spec["threads"]:
            engine.set_threads(threads)
            for workload in spec["workloads"]:
                result = measure(engine, threads, workload, spec["repeats"])
                print(
                    f"{name:>11} {threads} thread(s) {workload['name']:<36} "
                    f"{result['tokens_per_second']:>8.0f} tokens/s",
                    file=sys.stderr,
                )
                report["results"].append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except Failure as failure:
        sys.exit(f"cpu_reference: {failure}")


if __name__ == "__main__":
    main()
