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


def openapi_document(model: IRankerModel | None = None) -> dict:
    """The OpenAPI document the server publishes at `GET /openapi.json`: KServe's v1 and v2 routes and ours (rerank,
    the router's chat completions, its model list), built without loading a model or opening a port. The docs'
    HTTP reference is rendered from it."""
    from fastapi import FastAPI
    from kserve import ModelServer
    from kserve.model_server import app as kserve_app
    from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    from serving.routes import install

    model = model or IRankerModel()
    server = ModelServer(http_port=0, enable_grpc=False)
    app = FastAPI(title=kserve_app.title, version=kserve_app.version, docs_url=None, redoc_url=None)
    register_v1_endpoints(app, server.dataplane, server.model_repository_extension)
    register_v2_endpoints(app, server.dataplane, server.model_repository_extension)
    install(app, model)
    return app.openapi()
