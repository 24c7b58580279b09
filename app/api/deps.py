"""Shared dependencies of the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.planner import Planner


# Async, because FastAPI runs a plain `def` dependency on a worker thread: a hand-off
# per request for what is an attribute lookup.
async def get_planner(request: Request) -> Planner:
    return request.app.state.planner


async def get_settings_from_app(request: Request) -> Settings:
    return request.app.state.settings


PlannerDep = Annotated[Planner, Depends(get_planner)]
SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
