"""An MCP tool's arguments checked against the input schema its server published, before the
call is sent: the schema must be a valid JSON Schema (remembered per schema, since every call's
session lists the same ones again) and the check itself runs under safe_jsonschema's limits."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from taskloom import safe_jsonschema
from taskloom.tools.base import ToolError

MESSAGE_LIMIT = 300  # characters of a ToolError message quoting the server

# Schema digest -> whether it is a valid JSON Schema (bounded; see _schema_is_valid).
_VALID_SCHEMAS: OrderedDict[bytes, bool] = OrderedDict()
_VALID_SCHEMAS_MAX = 1024


def _schema_is_valid(schema: dict[str, Any]) -> bool:
    """Whether `schema` is a valid JSON Schema. Checking it against the metaschema costs
    milliseconds and each call's session lists the same schemas again; the answer depends on the
    schema alone, so it is remembered by the digest of its canonical JSON (not the schema
    itself: a server's schema may be large)."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).digest()
    valid = _VALID_SCHEMAS.get(digest)
    if valid is None:
        try:
            Draft202012Validator.check_schema(schema)
            valid = True
        except SchemaError:
            valid = False
        _VALID_SCHEMAS[digest] = valid
        if len(_VALID_SCHEMAS) > _VALID_SCHEMAS_MAX:
            _VALID_SCHEMAS.popitem(last=False)
    return valid


def check_args(tool: str, schema: dict[str, Any], args: dict[str, Any]) -> None:
    """Raise `invalid_args` naming the JSON path of the worst problem in `args`."""
    if not _schema_is_valid(schema):
        raise ToolError(
            f"the MCP server published an invalid input schema for {tool}",
            code="mcp_protocol_error",
        ) from None
    try:
        error = safe_jsonschema.best_error(schema, args)
    except safe_jsonschema.PatternTooSlow as slow:
        raise ToolError(
            f"the MCP server's input schema for {tool} cannot be checked: {slow}"[:MESSAGE_LIMIT],
            code="mcp_protocol_error",
        ) from None
    except safe_jsonschema.SchemaTooSlowToCheck:
        return  # the server checks its own arguments
    if error is not None:
        raise ToolError(
            f"invalid arguments for {tool} at {error.json_path}: {error.message}"[:MESSAGE_LIMIT],
            code="invalid_args",
        )
