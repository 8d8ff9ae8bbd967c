"""The server's entry point: the model, KServe's model server and our routes, started together (`iranker serve`).

It sits above both `serving.model` (the KServe model) and `serving.routes` (the HTTP routes that call it), so the
two never import each other's module graph in a loop.
"""

from __future__ import annotations

from serving.model import IRankerModel


def serve(model: IRankerModel, http_port: int = 8080) -> None:
    """Load the model, then start KServe's model server with it and our routes (blocks): readiness comes only
    after loading."""
    from kserve import ModelServer
    from kserve.model_server import app

    from serving import connections
    from serving.routes import install

    connections.install(model.config.header_timeout_s, model.config.max_connections_per_client)
    model.load()
    install(app, model)
    ModelServer(http_port=http_port, enable_grpc=False).start([model])
