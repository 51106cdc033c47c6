"""HTTP serving: ``create_app(Settings(models=[...]))`` builds the FastAPI app that ``genforge serve``
runs with uvicorn. See app.py for the routes, auth.py for keys, batching.py for dynamic batching,
jobs.py for background jobs and connections.py for connection timeouts and limits."""
from .settings import Settings


def create_app(settings: Settings | None = None):
    from .app import create_app as _create_app

    return _create_app(settings)


__all__ = ["Settings", "create_app"]
