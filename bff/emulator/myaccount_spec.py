"""What the My Account API's OpenAPI document says, applied at run time by the emulator.

The emulator reads the official spec shipped with the package (``bff/proxy/myaccount-api-oas.json``)
instead of restating it, so the required scope of each operation, the request-body schemas and
the error shape cannot drift from the document the proxy is built against.

- :class:`ApiSpec` looks up operations, their scopes and their request schemas.
- :class:`ApiError` is an HTTP error rendered in the spec's ``ErrorResponse`` shape.
- :func:`validate` checks a JSON value against a schema of the document (the subset of JSON Schema
  2020-12 the document uses) and returns the spec's ``ValidationError`` objects.
"""

from __future__ import annotations

import functools
import json
import re
import typing as t
from pathlib import Path

from flask import Response
from werkzeug.exceptions import HTTPException

__all__ = [
    "ERROR_TYPES",
    "INSUFFICIENT_SCOPE_CODE",
    "INVALID_TOKEN_CODE",
    "SPEC_PATH",
    "ApiError",
    "ApiSpec",
    "bad_request",
    "error_body",
    "error_type_uri",
    "issue",
    "validate",
]

SPEC_PATH = Path(__file__).resolve().parent.parent / "proxy" / "myaccount-api-oas.json"

#: The ``type`` URIs of errors, keyed by status. Codes seen from the live API where known
#: (A0E-401-0001 missing token, A0E-401-0003 invalid token, A0E-403-0002 insufficient scope).
ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("A0E-400-0001", "Bad Request"),
    401: ("A0E-401-0001", "Unauthorized"),
    403: ("A0E-403-0001", "Forbidden"),
    404: ("A0E-404-0001", "Not Found"),
    405: ("A0E-405-0001", "Method Not Allowed"),
    409: ("A0E-409-0001", "Conflict"),
    415: ("A0E-415-0001", "Unsupported Media Type"),
    429: ("A0E-429-0001", "Too Many Requests"),
    500: ("A0E-500-0001", "Internal Server Error"),
    503: ("A0E-503-0001", "Service Unavailable"),
}
INVALID_TOKEN_CODE = "A0E-401-0003"  # noqa: S105 - an error code, not a secret
INSUFFICIENT_SCOPE_CODE = "A0E-403-0002"


def error_type_uri(code: str) -> str:
    """The ``type`` URI Auth0 uses for an error code such as ``A0E-403-0002``."""
    return f"https://auth0.com/api-errors/{code}"


def error_body(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    validation_errors: list[dict[str, str]] | None = None,
) -> dict[str, t.Any]:
    """An ``ErrorResponse`` object; ``code`` and ``title`` default to the ones of ``status``."""
    default_code, default_title = ERROR_TYPES.get(status, (f"A0E-{status}-0001", "Error"))
    body: dict[str, t.Any] = {
        "type": error_type_uri(code or default_code),
        "status": status,
        "title": title or default_title,
        "detail": detail,
    }
    if validation_errors:
        body["validation_errors"] = validation_errors
    return body


class ApiError(HTTPException):
    """An expected failure of a My Account API call, answered as the spec's ``ErrorResponse`` JSON."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        validation_errors: list[dict[str, str]] | None = None,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = status
        self.body = error_body(status, detail, code=code, validation_errors=validation_errors)
        self.extra_headers = dict(headers or {})

    def get_response(
        self,
        environ: t.Any = None,
        scope: t.Any = None,
    ) -> Response:
        response = Response(json.dumps(self.body), status=self.code, mimetype="application/json")
        response.headers.update(self.extra_headers)
        return response


def bad_request(detail: str, field: str, *, source: str = "body") -> ApiError:
    """A 400 naming the one field at fault, as a single ``ValidationError``."""
    return ApiError(400, detail, validation_errors=[issue(detail, field.split("."), source)])


def issue(detail: str, path: t.Sequence[str | int], source: str = "body") -> dict[str, str]:
    """A ``ValidationError`` object for the value at ``path`` inside the request part ``source``."""
    parts = [str(p) for p in path]
    found: dict[str, str] = {"detail": detail, "source": source}
    found["pointer"] = "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)
    if parts:
        found["field"] = ".".join(parts)
    return found


class ApiSpec:
    """The parsed OpenAPI document: operations, scopes and component schemas."""

    def __init__(self, document: dict[str, t.Any]) -> None:
        self.document = document

    @staticmethod
    def load() -> ApiSpec:
        """The spec shipped with the package, parsed once per process."""
        return _load_shipped_spec()

    def operations(self) -> list[tuple[str, str]]:
        """Every ``(METHOD, path)`` the spec declares, paths relative to ``/me/v1``."""
        return [
            (method.upper(), path)
            for path, item in self.document["paths"].items()
            for method in item
            if method in {"get", "post", "put", "patch", "delete"}
        ]

    def operation(self, method: str, path: str) -> dict[str, t.Any]:
        op: dict[str, t.Any] = self.document["paths"][path][method.lower()]
        return op

    def required_scopes(self, method: str, path: str) -> list[str]:
        """The scopes the spec's ``security`` requirement names for an operation."""
        requirements = self.operation(method, path).get("security", [])
        return [scope for requirement in requirements for scopes in requirement.values() for scope in scopes]

    def request_schema(self, method: str, path: str) -> tuple[dict[str, t.Any], bool] | None:
        """The JSON request-body schema of an operation and whether a body is required."""
        body = self.operation(method, path).get("requestBody")
        if body is None:
            return None
        return body["content"]["application/json"]["schema"], bool(body.get("required", False))

    def schema(self, name: str) -> dict[str, t.Any]:
        found: dict[str, t.Any] = self.document["components"]["schemas"][name]
        return found

    def resolve(self, ref: str) -> t.Any:
        """The value a local ``$ref`` such as ``#/components/schemas/Factor`` points to."""
        node: t.Any = self.document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def variant_for(self, schema: dict[str, t.Any], kind: str) -> dict[str, t.Any]:
        """The ``anyOf`` branch of a schema marked ``x-type: kind`` (the verify bodies are keyed so)."""
        while "$ref" in schema:
            schema = self.resolve(schema["$ref"])
        for branch in schema.get("anyOf", []):
            if branch.get("x-type") == kind:
                return t.cast(dict[str, t.Any], branch)
        raise KeyError(kind)

    def property_names(self, schema: t.Any) -> set[str]:
        """Every property a schema (through ``$ref`` and ``allOf``) declares."""
        if not isinstance(schema, dict):
            return set()
        if "$ref" in schema:
            return self.property_names(self.resolve(schema["$ref"]))
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            names |= self.property_names(part)
        return names


@functools.cache
def _load_shipped_spec() -> ApiSpec:
    return ApiSpec(json.loads(SPEC_PATH.read_text(encoding="utf-8")))


def validate(
    spec: ApiSpec, schema: t.Any, value: t.Any, source: str = "body", path: t.Sequence[str | int] = ()
) -> list[dict[str, str]]:
    """The ``ValidationError`` objects for ``value`` (found at ``path`` of ``source``) against ``schema``.

    Empty when the value conforms.
    """
    return _Validator(spec, source).check(schema, value, list(path))


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$")
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


class _Validator:
    """JSON Schema keywords used by the document's request schemas; annotations are ignored."""

    def __init__(self, spec: ApiSpec, source: str) -> None:
        self.spec = spec
        self.source = source

    def error(self, detail: str, path: list[str | int]) -> dict[str, str]:
        return issue(detail, path, self.source)

    def check(self, schema: t.Any, value: t.Any, path: list[str | int]) -> list[dict[str, str]]:
        if schema is True:
            return []
        if schema is False:
            return [self.error("must not be present", path)]
        errors: list[dict[str, str]] = []
        if "$ref" in schema:
            errors += self.check(self.spec.resolve(schema["$ref"]), value, path)
        for part in schema.get("allOf", []):
            errors += self.check(part, value, path)
        if "oneOf" in schema or "anyOf" in schema:
            errors += self.check_alternatives(schema, value, path)
        if "type" in schema and not self.has_type(value, schema["type"]):
            return [*errors, self.error(f"must be {schema['type']}", path)]
        if "const" in schema and value != schema["const"]:
            errors.append(self.error(f"must be equal to constant {json.dumps(schema['const'])}", path))
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(json.dumps(v) for v in schema["enum"])
            errors.append(self.error(f"must be equal to one of the allowed values: {allowed}", path))
        if isinstance(value, str):
            errors += self.check_string(schema, value, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errors.append(self.error(f"must be >= {schema['minimum']}", path))
            if "maximum" in schema and value > schema["maximum"]:
                errors.append(self.error(f"must be <= {schema['maximum']}", path))
        if isinstance(value, list):
            errors += self.check_array(schema, value, path)
        if isinstance(value, dict):
            errors += self.check_object(schema, value, path)
        return errors

    @staticmethod
    def has_type(value: t.Any, expected: str | list[str]) -> bool:
        names = [expected] if isinstance(expected, str) else expected
        for name in names:
            if name == "null" and value is None:
                return True
            # bool is an int in Python but never a JSON number.
            if isinstance(value, _JSON_TYPES.get(name, ())) and not (
                isinstance(value, bool) and name != "boolean"
            ):
                return True
        return False

    def check_alternatives(
        self, schema: dict[str, t.Any], value: t.Any, path: list[str | int]
    ) -> list[dict[str, str]]:
        keyword = "oneOf" if "oneOf" in schema else "anyOf"
        discriminator = schema.get("discriminator")
        if discriminator is not None and isinstance(value, dict):
            # The discriminator picks the branch, so the errors name what is wrong with that branch
            # instead of every branch the value did not match.
            prop = discriminator["propertyName"]
            mapping: dict[str, str] = discriminator["mapping"]
            if prop not in value:
                return [self.error(f"must have required property '{prop}'", [*path, prop])]
            # Any JSON value may stand here; only a string can name a branch (an object or array is not
            # even hashable).
            if not isinstance(value[prop], str) or value[prop] not in mapping:
                allowed = ", ".join(json.dumps(v) for v in mapping)
                return [self.error(f"must be equal to one of the allowed values: {allowed}", [*path, prop])]
            return self.check({"$ref": mapping[value[prop]]}, value, path)
        outcomes = [self.check(branch, value, path) for branch in schema[keyword]]
        matches = sum(1 for found in outcomes if not found)
        if matches == 1 or (keyword == "anyOf" and matches > 1):
            return []
        if matches > 1:
            return [self.error("must match exactly one schema in oneOf", path)]
        closest = min(outcomes, key=len)
        return [self.error(f"must match a schema in {keyword}", path), *closest]

    def check_string(
        self, schema: dict[str, t.Any], value: str, path: list[str | int]
    ) -> list[dict[str, str]]:
        errors = []
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(self.error(f"must NOT have fewer than {schema['minLength']} characters", path))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(self.error(f"must NOT have more than {schema['maxLength']} characters", path))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(self.error(f'must match pattern "{schema["pattern"]}"', path))
        if schema.get("format") == "uri" and not _URI.match(value):
            errors.append(self.error('must match format "uri"', path))
        return errors

    def check_array(
        self, schema: dict[str, t.Any], value: list[t.Any], path: list[str | int]
    ) -> list[dict[str, str]]:
        errors = []
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(self.error(f"must NOT have fewer than {schema['minItems']} items", path))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(self.error(f"must NOT have more than {schema['maxItems']} items", path))
        if schema.get("uniqueItems"):
            seen = [json.dumps(item, sort_keys=True) for item in value]
            if len(set(seen)) != len(seen):
                errors.append(self.error("must NOT have duplicate items", path))
        if "items" in schema:
            for index, item in enumerate(value):
                errors += self.check(schema["items"], item, [*path, index])
        return errors

    def check_object(
        self, schema: dict[str, t.Any], value: dict[str, t.Any], path: list[str | int]
    ) -> list[dict[str, str]]:
        errors = []
        properties: dict[str, t.Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(self.error(f"must have required property '{name}'", [*path, name]))
        for name, needs in schema.get("dependentRequired", {}).items():
            if name in value:
                for other in needs:
                    if other not in value:
                        detail = f"must have property '{other}' when property '{name}' is present"
                        errors.append(self.error(detail, [*path, other]))
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += self.check(properties[name], item, [*path, name])
            elif extra is False:
                errors.append(self.error("must NOT have additional properties", [*path, name]))
            elif isinstance(extra, dict):
                errors += self.check(extra, item, [*path, name])
        return errors
