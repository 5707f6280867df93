"""The clients people already use, against a running pulse: the official
`openai` package on the OpenAI-compatible HTTP endpoint, and grpcio's
reflection client over gRPC reflection v1alpha.

    python clients.py HTTP_ADDR GRPC_ADDR MODEL

Prints one JSON object of what it saw; fails (non-zero exit) on the first
thing that does not work as those clients expect.
"""

import base64
import json
import math
import struct
import sys

import grpc
import openai
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main():
    http_addr, grpc_addr, model = sys.argv[1:4]
    seen = {}
    client = openai.OpenAI(base_url=f"http://{http_addr}/v1", api_key="unused", max_retries=0)

    seen["models"] = [m.id for m in client.models.list()]
    retrieved = client.models.retrieve(model)
    assert retrieved.id == model and retrieved.object == "model", retrieved
    try:
        client.models.retrieve("nobody/nothing")
        raise AssertionError("an unknown model was found")
    except openai.NotFoundError as err:
        seen["unknown_model"] = {"status": err.status_code, "message": err.message}

    texts = ["to", "a brand manager reads the trends of the week"]
    # The client's own default: it asks for base64 and decodes it.
    default = client.embeddings.create(model=model, input=texts, user="someone")
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    raw = client.embeddings.create(model=model, input=texts, encoding_format="base64")
    decoded = []
    for item in raw.data:
        packed = base64.b64decode(item.embedding)
        decoded.append(list(struct.unpack(f"<{len(packed) // 4}f", packed)))
    for a, b, c in zip(default.data, floats.data, decoded):
        assert cosine(a.embedding, b.embedding) > 0.99999
        assert cosine(b.embedding, c) > 0.99999
    seen["dimension"] = len(floats.data[0].embedding)
    seen["usage_tokens"] = floats.usage.prompt_tokens

    # "to" is [CLS] to [SEP] in the BERT vocabulary: the same vector as ids.
    ids = [101, 2000, 102]
    one = client.embeddings.create(model=model, input=ids, encoding_format="float")
    many = client.embeddings.create(
        model=model, input=[ids, ids[:2] + [2000, 102]], encoding_format="float"
    )
    seen["token_ids_vs_text"] = cosine(one.data[0].embedding, floats.data[0].embedding)
    seen["token_id_lists"] = len(many.data)
    seen["token_ids_usage"] = one.usage.prompt_tokens

    try:
        client.embeddings.create(model=model, input=[[101, 10**9]])
        raise AssertionError("a token id outside the vocabulary was embedded")
    except openai.BadRequestError as err:
        seen["bad_token"] = {"status": err.status_code, "message": err.message}
    try:
        client.embeddings.create(model=model, input=[{"not": "text"}])
        raise AssertionError("an object was embedded")
    except openai.BadRequestError as err:
        seen["bad_input"] = {"status": err.status_code, "param": err.param}

    with grpc.insecure_channel(grpc_addr) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        seen["reflection_v1alpha"] = sorted(database.get_services())
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("pulse.v1.EmbeddingService")
        seen["embed_methods"] = sorted(m.name for m in service.methods)

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
