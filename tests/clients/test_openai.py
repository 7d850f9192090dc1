"""The `openai` Python client against /v1/chat/completions: the shape NVIDIA's
hosted nemotron-4-340b-reward answers with, the scores of the last assistant
turn equal to `score`'s, and the client's own error types for a wrong key and
an unknown model."""

import openai

from common import WORST, HELPSTEER, args, close, load, to_messages

a = args()
expected = load(a.expected)
client = openai.OpenAI(base_url=a.url + "/v1", api_key=a.api_key or "none", max_retries=0)

models = [m.id for m in client.models.list().data]
assert expected["model"] in models, models

checks = 0
for record, line in zip(expected["records"], expected["score_lines"]):
    reply = client.chat.completions.create(model=expected["model"], messages=to_messages(record))
    last = line["turns"][-1]
    choice = reply.choices[0]
    assert choice.finish_reason == "length", choice.finish_reason
    assert choice.message.role == "assistant"
    entries = choice.logprobs.content
    assert [e.token for e in entries] == HELPSTEER, [e.token for e in entries]
    assert all(e.bytes is None and e.top_logprobs == [] for e in entries)
    close([e.logprob for e in entries], last["raw"][4:9], f"{record} logprobs")
    pairs = [part.split(":") for part in choice.message.content.split(",")]
    assert [name for name, _ in pairs] == HELPSTEER, choice.message.content
    close([float(v) for _, v in pairs], last["raw"][4:9], "message.content")
    assert reply.usage.prompt_tokens == line["tokens"], (reply.usage, line["tokens"])
    assert reply.object == "chat.completion" and reply.model == expected["model"]
    checks += 1

try:
    client.chat.completions.create(model="no-such-model", messages=to_messages(expected["records"][0]))
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e

try:
    robot = [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    client.chat.completions.create(model=expected["model"], messages=robot)
    raise AssertionError("an unknown role was accepted")
except openai.BadRequestError as e:
    assert "unknown role `robot`" in str(e), e

try:
    ends_with_user = to_messages(expected["records"][0]) + [{"role": "user", "content": "and?"}]
    client.chat.completions.create(model=expected["model"], messages=ends_with_user)
    raise AssertionError("a conversation ending with the user was rated")
except openai.BadRequestError as e:
    assert "last message must be the assistant" in str(e), e

if a.api_key:
    wrong = openai.OpenAI(base_url=a.url + "/v1", api_key="wrong-" + a.api_key, max_retries=0)
    try:
        wrong.chat.completions.create(model=expected["model"], messages=to_messages(expected["records"][0]))
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError:
        pass

print(f"openai: {checks} conversations match score (largest difference {WORST[0]:.1e})")
