"""The official SDK pointed at a fake by its environment, and the client's conduct judged."""

import openai
import pytest

from waterfall_fakes import assert_good_conduct


def answer(question: str) -> str:
    """Application code: it builds its client from the environment, unchanged for the test."""
    client = openai.OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    reply = client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": question}]
    )
    return reply.choices[0].message.content or ""


@pytest.mark.fake_config(script=["rate_limit:dialect=retry-after-ms,seconds=0.2", "ok"])
def test_the_sdk_waits_out_a_429(fake_openai_env):
    assert answer("Hello?")  # the SDK retried after the 429
    assert [r.status for r in fake_openai_env.provider.requests] == [429, 200]
    verdict = assert_good_conduct(fake_openai_env.provider)  # raises with a report if not
    assert verdict.check("retry_after").status == "pass"
