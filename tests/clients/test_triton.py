"""`tritonclient[http]` against the KServe v2 routes, as NeMo-Aligner's PPO
actor uses them: `sentences` (BYTES) and `tokens` + `sequence_lengths` (INT64,
right-padded), each as JSON and as binary tensors, give `rewards` [B, 9] equal
to `score`'s raw outputs; shape and datatype mistakes are refused with a
message naming them."""

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from common import WORST, args, close, load

a = args()
expected = load(a.expected)
turns = expected["turns"]
client = http.InferenceServerClient(url=a.url.removeprefix("http://"))
MODEL = "reward_model"

assert client.is_server_live()
assert client.is_server_ready()
assert client.is_model_ready(MODEL)
meta = client.get_model_metadata(MODEL)
assert {i["name"] for i in meta["inputs"]} == {"sentences", "tokens", "sequence_lengths"}, meta
assert meta["outputs"][0]["name"] == "rewards"
config = client.get_model_config(MODEL)
assert config["name"] == MODEL

want = [t["raw"] for t in turns]


def rewards(inputs, binary_out):
    out = http.InferRequestedOutput("rewards", binary_data=binary_out)
    result = client.infer(MODEL, inputs, outputs=[out])
    return result.as_numpy("rewards")


def check(got, what):
    assert got.shape == (len(want), 9), (what, got.shape)
    assert got.dtype == np.float32, got.dtype
    for row, (g, w) in enumerate(zip(got, want)):
        close(g.tolist(), w, f"{what} row {row}")


checks = 0
for binary in (False, True):
    sentences = np.array([[t["text"].encode()] for t in turns], dtype=np.object_)
    s = http.InferInput("sentences", list(sentences.shape), "BYTES")
    s.set_data_from_numpy(sentences, binary_data=binary)
    check(rewards([s], binary), f"sentences binary={binary}")
    checks += 1

    width = max(len(t["input_ids"]) for t in turns)
    tokens = np.zeros((len(turns), width), dtype=np.int64)  # right-padded with 0
    for row, t in enumerate(turns):
        tokens[row, : len(t["input_ids"])] = t["input_ids"]
    lengths = np.array([[len(t["input_ids"])] for t in turns], dtype=np.int64)
    tok = http.InferInput("tokens", list(tokens.shape), "INT64")
    tok.set_data_from_numpy(tokens, binary_data=binary)
    lens = http.InferInput("sequence_lengths", list(lengths.shape), "INT64")
    lens.set_data_from_numpy(lengths, binary_data=binary)
    check(rewards([tok, lens], not binary), f"tokens binary={binary}")
    checks += 1

    flat = http.InferInput("sequence_lengths", [len(turns)], "INT64")
    flat.set_data_from_numpy(lengths.reshape(-1), binary_data=binary)
    check(rewards([tok, flat], binary), f"tokens, sequence_lengths [B], binary={binary}")
    checks += 1


def refused(inputs, needle):
    try:
        client.infer(MODEL, inputs)
    except InferenceServerException as e:
        assert needle in str(e), (needle, str(e))
        return
    raise AssertionError(f"accepted a request that should fail with {needle!r}")


wrong_type = http.InferInput("tokens", [1, 3], "INT32")
wrong_type.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
lens1 = http.InferInput("sequence_lengths", [1, 1], "INT64")
lens1.set_data_from_numpy(np.array([[3]], dtype=np.int64))
refused([wrong_type, lens1], "datatype INT32")

rows3 = http.InferInput("tokens", [1, 3], "INT64")
rows3.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int64))
two_lengths = http.InferInput("sequence_lengths", [2, 1], "INT64")
two_lengths.set_data_from_numpy(np.array([[3], [1]], dtype=np.int64))
refused([rows3, two_lengths], "`sequence_lengths` has 2 rows but `tokens` has 1")

too_long = http.InferInput("sequence_lengths", [1, 1], "INT64")
too_long.set_data_from_numpy(np.array([[4]], dtype=np.int64))
refused([rows3, too_long], "sequence_lengths[0] is 4")
refused([rows3], "`tokens` needs `sequence_lengths`")

# The server keeps serving after the refusals.
check(rewards([s], False), "sentences after errors")
print(f"tritonclient: {checks} requests x {len(turns)} turns match score (largest difference {WORST[0]:.1e})")
