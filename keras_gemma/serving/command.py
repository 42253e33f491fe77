"""``keras-gemma serve``: the command line's side of the server."""

import os

from keras_gemma.serving import app
from keras_gemma.serving.scheduler import Scheduler


def run(args, model):
    """Serves ``model`` with the parsed ``keras-gemma serve`` arguments."""
    app._log_to(None)
    scheduler = Scheduler(model, max_batch=args.max_batch, max_queue=args.max_queue,
                          context_length=args.context_length)
    app.logger.info("compiling the prefill and decode programs (%d slots)",
                    args.max_batch)
    scheduler.start()
    app.serve(scheduler, args.model_name or _model_name(args.preset), host=args.host,
              port=args.port, api_key=args.api_key, drain_timeout=args.drain_timeout)
    return 0


def _model_name(preset):
    """The id clients send: the preset's name, or its file or folder's name."""
    name = os.path.basename(os.path.normpath(os.path.expanduser(preset)))
    return name[: -len(".gguf")] if name.endswith(".gguf") else name
