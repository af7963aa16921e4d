"""The service's routers, one module per resource."""

from fastapi import APIRouter

from . import decompose, enhance, health, images, jobs, metrics

__all__ = ["api_router"]

api_router = APIRouter()
for module in (health, metrics, enhance, images, decompose, jobs):
    api_router.include_router(module.router)
