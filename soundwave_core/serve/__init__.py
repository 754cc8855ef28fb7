"""``swv serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with request batching
and a web page. Needs the ``serve`` extra (``pip install 'swv[serve]'``)."""
