"""`Location` headers on 201 and 202 answers: where the created (or accepted) resource is read
from. Routes set it with `set_location` and document it with `located(status)`."""

from __future__ import annotations

from typing import Any

from fastapi import Response


def located(status_code: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry saying that `status_code` answers carry a Location."""
    return {
        status_code: {
            "headers": {
                "Location": {
                    "description": "Path of the created or accepted resource.",
                    "schema": {"type": "string"},
                }
            }
        }
    }


def set_location(response: Response, path: str) -> None:
    response.headers["Location"] = path
