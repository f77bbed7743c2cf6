"""client.py: the official OpenAI SDK, pointed at the router, asks twice."""

from openai import OpenAI


def main(base_url: str = "http://127.0.0.1:8000/v1") -> None:
    # The router holds the providers' keys; with no client_keys configured it takes any key.
    client = OpenAI(base_url=base_url, api_key="unused")
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "Hello!"}]
        )
        reply = raw.parse()  # the usual ChatCompletion
        print(f"{raw.headers['x-waterfall-attempts']}: {reply.choices[0].message.content}")


if __name__ == "__main__":
    main()
