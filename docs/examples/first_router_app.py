"""app.py: a FastAPI app with the router mounted in front of it."""

from fastapi import FastAPI

from waterfall_asgi import WaterfallMiddleware

app = FastAPI()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}  # the app's own routes work as before


# POST /v1/chat/completions, /v1/completions, /v1/embeddings and GET /v1/models are the
# router's; every other request goes to the app.
app.add_middleware(WaterfallMiddleware, config="router.toml")
