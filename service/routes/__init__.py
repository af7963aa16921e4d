"""The service's routers, one module per resource."""

from fastapi import APIRouter

from . import decompose, enhance, images, jobs, probes

__all__ = ["api_router"]

api_router = APIRouter()
for module in (probes, enhance, images, decompose, jobs):
    api_router.include_router(module.router)
