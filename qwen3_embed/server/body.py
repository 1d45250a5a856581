"""Request bodies, parsed and checked before a route sees them, in bounded time and memory and with short errors.

FastAPI would parse and validate a body on the event loop, reporting every bad element of every alternative of a
union: an attacker's 2 MB body of a million token ids held the loop for 28 s and drew a 124 MB error. Here (`parse`,
which Service.parse runs in a thread for a large body): unknown fields are named with the closest known one, the
inputs' count and each token-id list's length are checked before any element, lists stop at their first bad
element, and at most a few errors are reported.
"""

from __future__ import annotations

import difflib
import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .limits import ApiError, Limits

FIRST_ERRORS = 3  # validation errors reported; the rest are counted
NAME_CHARS = 64  # of a field name quoted in an error

T = TypeVar("T")
# A list checked element by element up to its first bad one.
FailFastList = Annotated[list[T], Field(fail_fast=True)]
Ids = FailFastList[StrictInt]  # a list of token ids


class Strict(BaseModel):
    """An object of a body, typed strictly; an unknown field is refused (naming the closest known one)."""

    model_config = ConfigDict(extra="forbid")


class Body(Strict):
    """A POST route's body. `inputs_field` names the field that holds the texts, documents or token ids (a dotted
    path into an object: `inputs.sentences`), of at most the `batch_limit` field of the Limits, and of at most its
    `token_limit` field's tokens; `token_ids`: whether it may hold token-id lists, `ids_get_eos`: whether each gets
    the EOS (model inputs) or not (ids to decode)."""

    inputs_field: ClassVar[str]
    batch_limit: ClassVar[str] = "max_client_batch_size"
    token_limit: ClassVar[str] = "max_queue_tokens"
    token_ids: ClassVar[bool] = False
    ids_get_eos: ClassVar[bool] = True


B = TypeVar("B", bound=Body)


class BodyRoute(APIRoute):
    """A route whose endpoint takes `(body: <a Body>, request)`: the body is parsed by `Service.parse`, not by
    FastAPI (whose OpenAPI schema of it stays). Routes without a `body` parameter are FastAPI's."""

    def get_route_handler(self):
        model = typing.get_type_hints(self.endpoint).get("body")
        if model is None:
            return super().get_route_handler()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(await request.app.state.service.parse(request, model), request)

        return handler


async def body_of(request: Request) -> bytes | bytearray:
    """The request's body: the one buffer the Guard read it into, not a copy (as Starlette's `request.body()` makes,
    joining its chunks)."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse(
    model: type[B] | Callable[[dict], type[B]], raw: bytes | bytearray, limits: Limits, max_input_length: int
) -> B:
    """The body `raw` as `model` (or as the model that `model(data)` picks for its JSON object): JSON, then its
    fields' names, then its inputs' count and lengths (`check_inputs`), then each field's type and value; the first
    failure is refused (ApiError)."""
    data = load_json(raw)
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(data), "null")
        raise ApiError(422, f"the body is a JSON {kind}; send an object of the route's fields")
    if not isinstance(model, type):
        model = model(data)
    check_fields(model, data)
    check_inputs(model, inputs_of(model, data), limits, max_input_length)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise malformed(e, model, data) from None


def load_json(raw: bytes | bytearray) -> object:
    """The JSON value of a body, or the 4xx that says why it is not one. The 4xx is raised outside the handler of
    the parser's error: as its context, that error would keep the parser's text of the body (its `doc`) and frames
    alive until the answer is sent."""
    if not raw or raw.isspace():  # (strip would copy a bytearray)
        raise ApiError(422, "the body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        refusal = not_json(e)
    raise refusal


def not_json(error: ValueError | RecursionError) -> ApiError:
    """The 4xx for what json.loads raised."""
    if isinstance(error, json.JSONDecodeError):
        return ApiError(422, f"the body is not valid JSON: {error}")
    if isinstance(error, UnicodeDecodeError):
        return ApiError(400, f"the body is not valid UTF-8 (byte {error.start}); send UTF-8 JSON")
    if isinstance(error, RecursionError):
        return ApiError(400, "the body nests arrays or objects too deeply for the JSON parser")
    # what is left: an integer too long for Python to convert
    return ApiError(400, f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits; no field "
                    "takes one that large")  # fmt: skip


def check_fields(model: type[BaseModel], data: dict, within: str = "") -> None:
    """422 for a field the route does not know, naming the closest one it knows; in the objects it holds too
    (`within` is the path to the object checked)."""
    known = list(model.model_fields)
    unknown = [name for name in data if name not in model.model_fields]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, known, n=1) if len(name) <= NAME_CHARS else []
        hint = f" (did you mean '{within}{close[0]}'?)" if close else ""
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        owner = f"'{within[:-1]}'" if within else "this route"
        raise ApiError(422, f"unknown field '{within}{cut(name)}'{hint}{more}; {owner} takes {', '.join(known)}")
    for name, field in model.model_fields.items():
        inner = next((t for t in (field.annotation, *typing.get_args(field.annotation)) if is_strict(t)), None)
        if inner is not None and isinstance(data.get(name), dict):
            check_fields(inner, data[name], f"{within}{name}.")


def is_strict(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Strict)


def inputs_of(model: type[Body], data: dict) -> object:
    """The value at the model's `inputs_field` path, or None where the body has none."""
    for name in model.inputs_field.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def check_inputs(model: type[Body], value: object, limits: Limits, max_input_length: int) -> None:
    """The inputs' count, and for token ids each list's length and their tokens in all (with the EOS each gets,
    where they get one), checked before any element is: 400 when empty, 413 past the model's batch limit
    (max_client_batch_size, or openai_max_client_batch_size), max_input_length or its token limit. A value that is
    not a list is left to the model's validation."""
    if not isinstance(value, list):
        return
    field, most = model.inputs_field, getattr(limits, model.batch_limit)
    if model.token_ids and value and type(value[0]) is int:
        value = [value]  # one list of token ids
    elif not value:
        raise ApiError(400, f"{field} is empty", "Empty")
    elif len(value) > most:
        raise ApiError(413, f"{field} holds {len(value)} inputs, more than {model.batch_limit}={most}; send fewer "
                       "inputs per request")  # fmt: skip
    if not model.token_ids:
        return
    tokens = 0
    for i, ids in enumerate(value):
        if not isinstance(ids, list):
            continue
        if not ids:
            raise ApiError(400, f"{field}[{i}] is an empty list of token ids", "Empty")
        if model.ids_get_eos and len(ids) + 1 > max_input_length:
            raise ApiError(413, f"{field}[{i}] holds {len(ids)} token ids; with the EOS that is more than "
                           f"max_input_length={max_input_length}")  # fmt: skip
        tokens += len(ids) + model.ids_get_eos
    limits.check_request_tokens(tokens, model.token_limit)


def malformed(e: ValidationError, model: type[BaseModel], data: dict) -> ApiError:
    """422 naming the first few fields that are not of the route's types, in the request's terms: where (`texts[0]`),
    what it must be (the field's type in JSON's words) and what was sent there. A field of several types is named
    once, with what was sent at the deepest place any of its types reached (`inputs[0] is an object`)."""
    said: dict[str, tuple[int, str]] = {}  # by field: how deep its error is, and its words
    for error in e.errors(include_url=False, include_context=False):
        field, annotation = field_at(model, error["loc"])
        path, value = value_at(data, error["loc"])
        depth, words = len(path) + (error["type"] == "missing"), misfit(field, annotation, path, value, error)
        where = place(field)
        if where not in said or depth > said[where][0]:
            said[where] = depth, words
    errors = [words for _, words in said.values()]
    more = f" (and {len(errors) - FIRST_ERRORS} more)" if len(errors) > FIRST_ERRORS else ""
    return ApiError(422, "; ".join(errors[:FIRST_ERRORS]) + more)


def field_at(model: type[BaseModel], loc: tuple) -> tuple[list, object]:
    """Where an error is, as far as the route's types tell it without choosing among several (a union): the path
    (field names and list indexes), and the type there."""
    annotation, path = model, []
    for step in loc:
        annotation = bare(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and step in annotation.model_fields:
            annotation = annotation.model_fields[step].annotation
        elif typing.get_origin(annotation) is list and isinstance(step, int):
            annotation = typing.get_args(annotation)[0]
        else:
            break
        path.append(step)
    return path, annotation


def value_at(data: object, loc: tuple) -> tuple[list, object]:
    """The deepest place of pydantic's location `loc` that the body holds (its union choices name no field, and a
    missing field is not there), and the value there."""
    path, value = [], data
    for step in loc:
        if isinstance(value, dict) and step in value or isinstance(value, list) and isinstance(step, int):
            path.append(step)
            value = value[step]
    return path, value


def misfit(field: list, annotation: object, path: list, value: object, error: dict) -> str:
    """What is wrong with `field`, in the request's terms."""
    where, deepest = place(field), place(path)
    if bare(annotation) is type(None):
        return f"{where} is not supported by this server; leave it out"
    if error["type"] == "missing":
        return f"{place([*path, error['loc'][-1]])} is missing"
    if not (error["type"].endswith("_type") or error["type"] in ("literal_error", "union_tag_invalid")):
        return f"{deepest} must be {error['msg'].removeprefix('Input should be ')}"  # a value out of range
    must = f"{where} must be {described(annotation)}"
    return f"{must}, not {sent(value)}" if deepest == where else f"{must}; {deepest} is {sent(value)}"


def place(path: list) -> str:
    """A path as the request writes it: inputs.sentences[0]."""
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def bare(annotation: object) -> object:
    """A type without its Annotated metadata, and X for an optional X (X | None)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bare(kept[0]) if len(kept) == 1 else annotation
    return annotation


def described(annotation: object, many: bool = False) -> str:
    """What a value of this type is, in JSON's words: "a string", "a list of strings" (`many`: "strings")."""
    if annotation == Ids:
        return "lists of token ids" if many else "a list of token ids"
    annotation = bare(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return either([described(a, many) for a in args if a is not type(None)])
    if origin is list:
        return f"{'lists' if many else 'a list'} of {described(args[0], many=True)}"
    if origin is Literal:
        return either([json.dumps(a) for a in args])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = ", ".join(f'"{name}": ...' for name in annotation.model_fields)
        return f"{'objects' if many else 'an object'} {{{fields}}}"
    one, several = JSON_TYPES.get(annotation, (getattr(annotation, "__name__", str(annotation)),) * 2)
    return several if many else one


JSON_TYPES = {str: ("a string", "strings"), int: ("an integer", "integers"), bool: ("true or false", "booleans"),
              float: ("a number", "numbers")}  # fmt: skip


def either(choices: list[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def sent(value: object) -> str:
    """What was sent, briefly: a short string, a number, true, false or null as written, else its kind."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str) and len(value) > NAME_CHARS:
        return f"a string of {len(value)} characters"
    return cut(json.dumps(value))


def cut(text: str, chars: int = NAME_CHARS) -> str:
    """`text`, or its start and how long it is."""
    return text if len(text) <= chars else f"{text[:chars]}... ({len(text)} characters)"
