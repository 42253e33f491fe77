"""An OpenAI-compatible HTTP server with continuous batching.

``keras-gemma serve`` runs it from the command line; from Python:

```python
import keras_gemma
from keras_gemma import serving

gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
serving.serve(gemma, port=8000, max_batch=16)  # until SIGTERM or Ctrl-C
```

``Scheduler`` (the continuous batching, no HTTP) and ``create_app`` (the
ASGI app, to run under another server) are the parts. The HTTP parts need
the ``serve`` extra: ``pip install "keras-gemma[serve]"`` (FastAPI, uvicorn).
"""

from keras_gemma.serving.scheduler import GenerationRequest
from keras_gemma.serving.scheduler import NotAccepting
from keras_gemma.serving.scheduler import QueueFull
from keras_gemma.serving.scheduler import Scheduler

__all__ = ["GenerationRequest", "NotAccepting", "QueueFull", "Scheduler", "create_app",
           "serve"]


def _http():
    try:
        from keras_gemma.serving import app
    except ImportError as error:
        raise ImportError(
            f"Serving over HTTP needs FastAPI and uvicorn ({error}); install them with "
            '`pip install "keras-gemma[serve]"`.'
        ) from None
    return app


def create_app(scheduler, model_name, api_key=None):
    """The ASGI app (FastAPI) answering the OpenAI API from a started ``Scheduler``."""
    return _http().create_app(scheduler, model_name, api_key=api_key)


def serve(model, host="127.0.0.1", port=8000, api_key=None, max_batch=16,
          max_queue=None, context_length=None, model_name=None, drain_timeout=30.0):
    """Serves ``model`` (a ``GemmaCausalLM``) over HTTP until SIGTERM or Ctrl-C.

    Binds ``host`` (default: this machine only); ``port=0`` picks a free port
    (the log line says which). ``api_key``: required as
    ``Authorization: Bearer <key>`` on every path but ``/health``.
    ``max_batch`` slots are decoded together and ``max_queue`` requests may
    wait (default 4 x ``max_batch``; beyond, 429). ``context_length`` is the
    most tokens of one request, prompt included (default: the
    preprocessor's ``sequence_length``). On SIGTERM, requests in flight get
    up to ``drain_timeout`` seconds to finish. Returns the port it served on.
    """
    http = _http()
    scheduler = Scheduler(model, max_batch=max_batch, max_queue=max_queue,
                          context_length=context_length)
    return http.serve(scheduler, model_name or model.name, host=host, port=port,
                      api_key=api_key, drain_timeout=drain_timeout)
